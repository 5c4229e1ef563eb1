"""`village sim ...`: run a scenario (`run`) or load a broker with many lightweight boxes (`fleet`).

Exit codes: 0 ok; 1 an expectation failed (`run --check`) or the fleet missed its latency target
(`fleet --p99-ms`); 2 a bad scenario file or bad arguments; 3 the simulation could not run (no broker,
the agent did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import i18n, words
from agent.i18n import _

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SETUP = 3
DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "menglou.toml"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("{text!r} is not a number").format(text=text)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(_("must be > 0, got {text}").format(text=text))
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="village sim", description=_("the simulator: a whole village in a box"),
                                     epilog=_("every command takes --lang zh|en (else $VILLAGE_LANG, else the locale)"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help=_("run a scenario: broker, the real agent, twins, county view, live dashboard"),
                         epilog=_("every command takes --lang zh|en (else $VILLAGE_LANG, else the locale)"))
    run.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, metavar="FILE",
                     help=_("scenario TOML (default: the bundled menglou village)"))
    run.add_argument("--duration", type=_positive, metavar="S", help=_("scenario seconds to run (default: the file's)"))
    run.add_argument("--broker", metavar="URL", help=_("use this broker (mqtt://host:port) instead of starting one"))
    run.add_argument("--broker-kind", choices=("auto", "mosquitto", "amqtt"), default="auto",
                     help=_("which broker to start when there is no --broker (auto: mosquitto if installed)"))
    run.add_argument("--mqtt-protocol", choices=("auto", "5", "3.1.1"),
                     help=_("the agent's [mqtt] protocol (default: 3.1.1 against a started amqtt, else auto)"))
    run.add_argument("--speed", type=_positive, metavar="X", help=_("run X times faster (default: the file's)"))
    run.add_argument("--check", action="store_true", help=_("exit 1 when any [[expect]] fails"))
    run.add_argument("--seed", type=int, metavar="N", help=_("override the scenario's seed"))
    run.add_argument("--timeline", type=Path, metavar="FILE", help=_("write the JSON-lines timeline here"))
    run.add_argument("--no-live", action="store_true", help=_("plain lines instead of the live dashboard"))
    run.add_argument("--external-box", action="store_true",
                     help=_("rehearsal: start no agent; drive the twins for the real box named in the scenario, "
                          "watched at --broker (docs/simulator.md)"))
    run.add_argument("--key", type=Path, metavar="FILE", help=_("--external-box: county signing key for broadcasts"))
    run.add_argument("--kid", default="county-sim", metavar="ID", help=_("--external-box: the key's id"))
    run.add_argument("--workdir", type=Path, metavar="DIR", help=_("keep the run's files here (agent config, logs)"))
    run.add_argument("--county", action=argparse.BooleanOptionalAction, default=None,
                     help=_("start the county server too (default: when the [county] extra is installed)"))

    fleet = sub.add_parser("fleet", help=_("N lightweight simulated boxes against one broker"))
    fleet.add_argument("--boxes", type=int, required=True, metavar="N")
    fleet.add_argument("--broker", required=True, metavar="URL")
    fleet.add_argument("--duration", type=_positive, required=True, metavar="S", help=_("wall seconds to run"))
    fleet.add_argument("--speed", type=_positive, default=1.0, metavar="X",
                       help=_("divide the periods (heartbeat 60 s, positions 10 s) by X"))
    fleet.add_argument("--ramp", type=_positive, default=None, metavar="S",
                       help=_("spread the boxes' first connects over S seconds (default: boxes/200, >= 1)"))
    fleet.add_argument("--p99-ms", type=_positive, default=None, metavar="MS",
                       help=_("exit 1 when the county-side latency p99 exceeds this"))
    fleet.add_argument("--json", action="store_true", help=_("print the result as JSON"))
    return parser


def _hangup_is_interrupt() -> None:
    """A closed terminal (SIGHUP) or a SIGTERM stops the run as Ctrl-C does: asyncio cancels it, and the
    cleanup kills the agent's process group and removes the run's files. Without this the agent (its own
    session, so no SIGHUP of its own) lived on after the terminal closed, reopening its gateway path: a
    pty number the system may give to the next terminal, whose settings pyserial then changes."""
    import signal

    def interrupt(_signum: int, _frame: object) -> None:
        signal.raise_signal(signal.SIGINT)

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, interrupt)


def cmd_run(args: argparse.Namespace) -> int:
    from sim.broker import BrokerError
    from sim.county_server import county_installed
    from sim.scenario import ScenarioError, load_scenario
    from sim.village import RunOptions, SimError, run_village

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"village sim: {words.config_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if args.broker is not None and not args.broker.startswith("mqtt://"):
        print("village sim: " + _("--broker takes mqtt://host:port (the agent reaches it through the link proxy, "
                                  "which forwards plain TCP)"), file=sys.stderr)
        return EXIT_USAGE
    opts = RunOptions(speed=args.speed, duration_s=args.duration, broker_url=args.broker,
                      broker_kind=args.broker_kind, seed=args.seed, live=not args.no_live and sys.stdout.isatty(),
                      timeline=args.timeline, workdir=args.workdir, mqtt_protocol=args.mqtt_protocol,
                      external=args.external_box, key_file=args.key, kid=args.kid,
                      county=county_installed() if args.county is None else args.county)
    _hangup_is_interrupt()
    try:
        result = asyncio.run(run_village(scenario, opts))
    except (SimError, BrokerError, OSError) as exc:
        print(f"village sim: {words.problem(str(exc))}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130
    print()
    for line in result.summary:
        print(line)
    print(_("timeline: {file}").format(file=result.timeline))
    if args.check and not result.ok:
        failed = [o for o in result.outcomes if not o.ok]
        print("village sim: " + _("{n} expectation(s) failed").format(n=len(failed)), file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    import json

    from sim.fleet import FleetError, FleetOptions, run_fleet

    if args.boxes < 1:
        print("village sim fleet: " + _("--boxes must be >= 1"), file=sys.stderr)
        return EXIT_USAGE
    opts = FleetOptions(boxes=args.boxes, broker_url=args.broker, duration_s=args.duration, speed=args.speed,
                        ramp_s=args.ramp)
    try:
        result = asyncio.run(run_fleet(opts))
    except FleetError as exc:
        print(f"village sim fleet: {words.problem(str(exc))}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.describe())
    if args.p99_ms is not None and (result.p99_ms is None or result.p99_ms > args.p99_ms):
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rest = i18n.setup(sys.argv[1:] if argv is None else argv)
    except i18n.LangError as exc:
        print(f"village sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(rest)
    if args.cmd == "run":
        return cmd_run(args)
    return cmd_fleet(args)


if __name__ == "__main__":
    sys.exit(main())
