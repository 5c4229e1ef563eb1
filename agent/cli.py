"""`village`: the one console script (contract section 1).

`village agent ...` is handled here; `county`, `sim` and `keys` are dispatched lazily to their own
modules so the agent on a box never imports the simulator or the console.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

from agent import i18n, words
from agent.i18n import N_, _

EXIT_CONFIG = 2

_DELEGATES = {
    "county": ("county.cli", N_("the county console: push, cancel, fences, watch, status")),
    "sim": ("sim.cli", N_("the simulator: a whole village in a box, fleet mode")),
    "keys": ("agent.keys", N_("county signing keys")),
    "release": ("agent.release", N_("signed release bundles for box updates (docs/updates.md)")),
}
# what each delegate needs beyond the box's own packages: pyproject.toml's extra of that name, by module
# the import name of each package an extra brings (its distribution name where they differ is in pyproject)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "sim": ("rich", "amqtt"),
    "county": ("sqlalchemy", "alembic", "psycopg", "starlette", "uvicorn", "websockets", "argon2", "openpyxl",
               "jinja2", "babel", "xstatic.pkg.leaflet"),
}


def _agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="village agent", description=_("the village box agent"),
                                     epilog=_("every command takes --lang zh|en (else $VILLAGE_LANG, else the locale)"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("identity", help=_("make the box key pair (once) and a CSR for the county CA"), add_help=False)
    for name, text in (("run", _("run the agent in the foreground until SIGTERM/SIGINT")),
                       ("check", _("validate the config and hardware profile, print them (secrets masked)")),
                       ("status", _("read the state directory: outbox depth, link state, seq")),
                       ("relay-off", _("drive the amplifier relay pin off and exit (systemd ExecStopPost)"))):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("-c", "--config", required=True, metavar="FILE", help=_("the agent's TOML config"))
        if name not in ("run", "relay-off"):
            p.add_argument("--json", action="store_true", help=_("print JSON"))
    return parser


def _load(path: str):
    from agent.commands import load_trust_keys
    from agent.config import load_config
    from agent.hardware import hardware_builder
    from agent.profile import load_profile
    from agent.wearables.settings import with_gateway_urls

    config = load_config(path)
    load_trust_keys(config)  # a key file that exists but is not an Ed25519 PEM is a config error too
    profile = load_profile(config.box.profile)
    hardware_builder(profile.kind, profile.name)  # kind "sim" needs the simulator installed: say so now
    return with_gateway_urls(config, profile, path), profile


def agent_main(argv: Sequence[str]) -> int:
    from agent.config import ConfigError
    from agent.profile import ProfileError

    if argv[:1] == ["identity"]:  # its own flags: the box key pair and CSR (agent/identity.py)
        return int(importlib.import_module("agent.identity").main(list(argv[1:])))
    args = _agent_parser().parse_args(argv)
    if args.cmd == "status":  # reads the state directory only: no profile, no keys needed
        from agent.config import load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"village: {words.config_error(exc)}", file=sys.stderr)
            return EXIT_CONFIG
        status = importlib.import_module("agent.status")
        return int(status.main(config, as_json=args.json))
    if args.cmd == "relay-off":  # the profile only: no keys, no event loop (agent/relayoff.py)
        from agent.config import load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"village: {words.config_error(exc)}", file=sys.stderr)
            return EXIT_CONFIG
        return int(importlib.import_module("agent.relayoff").main(config))
    try:
        config, profile = _load(args.config)
    except (ConfigError, ProfileError) as exc:
        print(f"village: {words.config_error(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    if args.cmd == "check":
        from agent.config import masked
        from agent.schema import dump

        doc = {"config": masked(config), "profile": dump(profile)}
        if args.json:
            print(json.dumps(doc, indent=2, ensure_ascii=False))
        else:  # the keys stay as the TOML files spell them; the headings are words
            print(_("{file}: valid (passwords and keys masked)").format(file=args.config))
            _print_tree({_("configuration"): doc["config"],
                         _("hardware profile {name}").format(name=profile.name): doc["profile"]})
        return 0
    from agent.app import run_agent
    from agent.logsetup import setup_logging

    os.environ["VILLAGE_AGENT_CONFIG"] = os.path.abspath(args.config)  # agent.update checks new slots with it

    setup_logging(config.log.level)
    try:
        return asyncio.run(run_agent(config, profile=profile))
    except (ConfigError, ProfileError) as exc:  # raised while building services (e.g. a bad trust key)
        print(f"village: {words.config_error(exc)}", file=sys.stderr)
        return EXIT_CONFIG


def _print_tree(doc: object, indent: str = "") -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
                print(f"{indent}{key}:")
                _print_tree(value, indent + "  ")
            else:
                print(f"{indent}{key} = {json.dumps(value, ensure_ascii=False)}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            print(f"{indent}[{i}]")
            _print_tree(item, indent + "  ")


def main(argv: Sequence[str] | None = None) -> int:
    try:  # --lang zh|en anywhere, else $VILLAGE_LANG, else the locale (agent/i18n.py)
        argv = i18n.setup(sys.argv[1:] if argv is None else argv, fresh=True)
    except i18n.LangError as exc:
        print(f"village: {words.config_error(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    top = argparse.ArgumentParser(prog="village", description=_("village-edge: the village box and its tools"),
                                  epilog=_("every command takes --lang zh|en (else $VILLAGE_LANG, else the locale)"))
    top.add_argument("area", choices=["agent", *_DELEGATES], help="agent | " + " | ".join(_DELEGATES))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        for name, (_mod, text) in {"agent": ("", N_("the box agent: run, check, status")), **_DELEGATES}.items():
            print(f"  village {name:<7} {_(text)}")
        return 0 if argv else EXIT_CONFIG
    area, rest = argv[0], argv[1:]
    if area == "agent":
        return agent_main(rest)
    if area in _DELEGATES:
        missing = next((m for m in EXTRA_MODULES.get(area, ()) if importlib.util.find_spec(m) is None), None)
        module = None
        try:
            module = None if missing else importlib.import_module(_DELEGATES[area][0])
        except ModuleNotFoundError as exc:  # a box install: the extra's packages (or the package) are not there
            if area not in EXTRA_MODULES:
                raise
            missing = exc.name
        if module is None:
            print(f"village {area}: " + _("needs the [{area}] extra ({missing} is not installed): "
                                          "pip install 'village-edge[{area}]'").format(area=area, missing=missing),
                  file=sys.stderr)
            return EXIT_CONFIG
        return int(module.main(rest))
    top.parse_args(argv[:1])  # prints the usage error and exits 2
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
