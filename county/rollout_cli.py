"""`village county release upload` and `village county rollout start|status|halt` (docs/updates.md).

Clients of the county server's API (county/server/routes_releases.py) through county.server_client: log in
as an admin, do the call, log out. Standard library only, like the rest of the console.

    village county release upload DIST/1.4.0 --server https://county:8443 --user admin --password-file F
    village county rollout start 1.4.0 --to group:town-menglou --pilot 3 --max-failure-pct 10 ...
    village county rollout status ro-0123456789abcdef [--watch S] [--json] ...
    village county rollout halt ro-0123456789abcdef ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from agent import words
from agent.i18n import N_, _, pad

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
FINAL_STATES = ("halted", "done")


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(_("county server"))
    g.add_argument("--server", required=True, metavar="URL", help=_("the county server, https://HOST:PORT"))
    g.add_argument("--user", required=True, help=_("an admin user of the server"))
    g.add_argument("--password-file", type=Path, metavar="F",
                   help=_("a file holding the password (else $VILLAGE_COUNTY_PASSWORD)"))
    g.add_argument("--ca", type=Path, help=_("CA certificate (PEM) of an https:// server"))
    g.add_argument("--json", action="store_true", help=_("print the server's answer as JSON"))


def add_commands(sub: Any) -> None:
    p = sub.add_parser("release", help=_("upload a signed release bundle to the county server"))
    rsub = p.add_subparsers(dest="release_cmd", required=True)
    u = rsub.add_parser("upload", help=_("upload manifest.jws and the wheels the server does not hold yet"))
    u.add_argument("bundle", type=Path, help=_("the directory `village release build` made"))
    _server_args(u)

    p = sub.add_parser("rollout", help=_("roll a release out to boxes: pilot first, halting on failures"))
    osub = p.add_subparsers(dest="rollout_cmd", required=True)
    s = osub.add_parser("start", help=_("start a rollout of an uploaded release"))
    s.add_argument("version")
    s.add_argument("--to", action="append", required=True, metavar="TARGET", help=_("box:ID or group:NAME"))
    s.add_argument("--pilot", default="1", metavar="N|BOX,BOX",
                   help=_("the pilot: how many boxes, or which (comma-separated); default 1"))
    s.add_argument("--wave-size", type=int, default=50, help=_("boxes per wave after the pilot (default 50)"))
    s.add_argument("--max-failure-pct", type=int, default=10,
                   help=_("halt when more than this share of the boxes sent so far failed (default 10)"))
    s.add_argument("--wave-timeout", type=int, default=3600, metavar="S",
                   help=_("a box silent this long after its wave counts as failed (default 3600)"))
    s.add_argument("--base-url", help=_("https:// address the boxes reach the server at (default --server)"))
    _server_args(s)
    st = osub.add_parser("status", help=_("one row per box: downloading, installed, healthy, rolled_back, ..."))
    st.add_argument("id")
    st.add_argument("--watch", type=float, default=0.0, metavar="S",
                    help=_("poll every 2 s for up to S seconds, until the rollout is halted or done"))
    _server_args(st)
    h = osub.add_parser("halt", help=_("halt a rollout: no further waves"))
    h.add_argument("id")
    _server_args(h)


def _client(args: Any) -> Any:
    from county import server_client

    client = server_client.ServerClient(args.server, ca=args.ca)
    client.login(args.user, server_client.read_password(args.password_file))
    return client


def _put(client: Any, path: str, data: bytes) -> Any:
    from county import server_client

    req = urllib.request.Request(client.base + path, data=data, method="PUT")
    req.add_header("Content-Type", "application/octet-stream")
    req.add_header("Accept", "application/json")
    req.add_header("Authorization", f"Bearer {client.token}")
    try:
        with urllib.request.urlopen(req, timeout=300, context=client.context) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read(65536)
        exc.close()
        raise server_client._error(exc.code, server_client._json(raw)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise server_client.ServerError(0, N_("cannot reach the county server: {error}", error=exc)) from None


def cmd_release(args: Any) -> int:
    manifest = (args.bundle / "manifest.jws").read_text().strip()
    with _client(args) as client:
        _status, answer = client.request("POST", "/api/v1/releases", {"manifest": manifest})
        version = answer["version"]
        for file in answer["missing"]:
            data = (args.bundle / "wheels" / file).read_bytes()
            answer = _put(client, f"/api/v1/releases/{version}/wheels/{urllib.parse.quote(file)}", data)
            print(_("uploaded {file} ({size} bytes)").format(file=file, size=len(data)), file=sys.stderr)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2))
    else:
        print(_("release {version}: {n} wheels, {state}").format(
            version=version, n=len(answer["wheels"]), state=_("complete") if answer["complete"] else _("incomplete")))
    return EXIT_OK if answer["complete"] else EXIT_ERROR


def print_status(doc: dict[str, Any]) -> None:
    counts = ", ".join(f"{words.state(k)} {v}" for k, v in doc["counts"].items() if v)
    print(f"{doc['id']}  {doc['version']}  {words.state(doc['state'])}  ({counts})")
    if doc.get("reason"):
        print(f"  {words.problem(doc['reason'])}")
    for row in doc["boxes"]:
        n = row.get("wave")
        wave = "-" if n is None else _("pilot") if n == 0 else _("wave {n}").format(n=n)
        tail = " ".join(x for x in (words.reason(row.get("reason")), row.get("detail")) if x)
        cells = [pad(row["box"], 24), pad(wave, 10), pad(words.state(row["state"]), 12),
                 pad(row.get("version") or "", 10), tail]
        print(("  " + "".join(cells)).rstrip())


def cmd_rollout(args: Any) -> int:
    with _client(args) as client:
        if args.rollout_cmd == "start":
            pilot: Any = int(args.pilot) if args.pilot.isdigit() else [b for b in args.pilot.split(",") if b]
            body = {"version": args.version, "to": args.to, "pilot": pilot, "wave_size": args.wave_size,
                    "max_failure_pct": args.max_failure_pct, "wave_timeout_s": args.wave_timeout}
            if args.base_url:  # else the server's own default: its box listener when it has one
                body["base_url"] = args.base_url
            _status, doc = client.request("POST", "/api/v1/rollouts", body)
        elif args.rollout_cmd == "halt":
            _status, doc = client.request("POST", f"/api/v1/rollouts/{urllib.parse.quote(args.id)}/halt", {})
        else:
            deadline = time.monotonic() + args.watch
            while True:
                _status, doc = client.request("GET", f"/api/v1/rollouts/{urllib.parse.quote(args.id)}")
                if doc["state"] in FINAL_STATES or time.monotonic() >= deadline:
                    break
                time.sleep(2.0)  # polling a server, not waiting on our own work
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print_status(doc)
    return EXIT_ERROR if doc["state"] == "halted" else EXIT_OK


def run(fn: Any, args: Any) -> int:
    from county import server_client

    try:
        return int(fn(args))
    except server_client.ServerError as exc:
        print(f"village county {args.cmd}: {words.problem(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if exc.status == 400 else EXIT_ERROR
    except (OSError, KeyError, ValueError) as exc:
        print(f"village county {args.cmd}: {words.problem(str(exc))}", file=sys.stderr)
        return EXIT_ERROR


COMMANDS = {"release": lambda args: run(cmd_release, args), "rollout": lambda args: run(cmd_rollout, args)}
