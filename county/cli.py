"""`village county push|cancel|fences|watch|status` (contract section 1).

Exit codes (docs/county-console.md):
  0  done (with --wait: every expected box answered and none rejected or failed)
  1  the command could not be built or published (broker, key, file, CAP document)
  2  usage: an option or its value is wrong as given (argparse, a time, a range, a start already past)
  3  --wait ended with a box that did not answer, or rejected, or failed
  4  nothing sent: a target no known box answers to (a mistyped group, a box never seen); --force sends anyway
push and cancel with --server URL (county/server_client.py) keep these codes: a refusal of the server (403,
a failed login) is 1, a value it refuses as given (400) is 2, nobody hears (422) is 4.
Every error is one line on stderr: `village county CMD: what is wrong`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from agent import i18n, words
from agent.i18n import N_, _, pad
from agent.protocol.jws import KeysError, load_private_key
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from county import cap as cap_mod
from county import (
    push,
    rollout_cli,  # release upload, rollout start|status|halt (docs/updates.md)
)
from county.console import (
    BoxRow,
    BrokerSpec,
    ConsoleError,
    CountyClient,
    ReceiptBoard,
    collect,
    dropped_line,
    format_envelope,
    format_state,
    learn_boxes,
    print_board,
    state_json_line,
)
from county.server import cli as server_cli  # serve, user, audit: the county server (imports lazily)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNANSWERED, EXIT_UNHEARD = 0, 1, 2, 3, 4


class NobodyHears(ConsoleError):
    """A target no known box answers to: nothing was sent (exit 4)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other console error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: " + _("{message} (see {prog} --help)").format(message=message,
                                                                                        prog=self.prog) + "\n")


# ---------------------------------------------------------------------------------------- parser
def _broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(_("broker"))
    g.add_argument("--broker", default=os.environ.get("VILLAGE_BROKER"), metavar="URL",
                   help=_("mqtt://[user:pass@]host:port or mqtts://... (default: $VILLAGE_BROKER)"))
    g.add_argument("--ca", type=Path, help=_("CA certificate (PEM) for mqtts:// (with --server: for https://)"))
    g.add_argument("--cert", type=Path, help=_("client certificate (PEM) for mutual TLS"))
    g.add_argument("--client-key", type=Path, help=_("client certificate key (PEM) for mutual TLS"))
    g.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=_("topic prefix (default {prefix})").format(prefix=DEFAULT_PREFIX))


def _signing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(_("signing and delivery"))
    g.add_argument("--key", type=Path, metavar="FILE", help=_("county private key (PKCS#8 PEM); not with --server"))
    g.add_argument("--kid", help=_("key id the boxes know the public key under ([trust.keys]); not with --server"))
    g.add_argument("--to", action="append", metavar="TARGET", type=_target,
                   help=_("box:ID or group:NAME (repeatable; required, except for cancel --server)"))
    g.add_argument("--ttl", type=_ttl, default=push.DEFAULT_TTL_S, metavar="DURATION",
                   help=_("how long a box may still accept the command: 90s, 30m, 12h, 1d or seconds "
                        "(default 1d, at most 31d)"))
    g.add_argument("--wait", type=_seconds, default=0.0, metavar="S",
                   help=_("collect receipts for up to S seconds (ends early when every expected box reached a "
                        "final state; progress on stderr) and print one row per box"))
    g.add_argument("--force", action="store_true",
                   help=_("send even to a target no known box answers to, or with a start already past"))
    g.add_argument("--json", action="store_true", help=_("print JSON lines instead of text"))
    _tz_arg(p)


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(_("through the county server (instead of --key/--kid: the server signs and publishes)"))
    g.add_argument("--server", metavar="URL", help=_("the county server, http(s)://HOST:PORT (--ca for https)"))
    g.add_argument("--user", metavar="NAME", help=_("the county server user to log in as"))
    g.add_argument("--password-file", type=Path, metavar="F",
                   help=_("the user's password (first line); default $VILLAGE_COUNTY_PASSWORD. Never on argv"))


def _signing_mode(args: argparse.Namespace) -> bool:
    """True for --server mode, False for --key/--kid; UsageError (exit 2) for neither or both."""
    server = getattr(args, "server", None)
    if server is not None:
        if args.key is not None or args.kid is not None:
            raise push.UsageError(_("give either --server URL (the county server signs) or --key FILE and --kid ID "
                                    "(sign here), not both"))
        if not getattr(args, "user", None):
            raise push.UsageError(_("--server needs --user NAME (and --password-file F or $VILLAGE_COUNTY_PASSWORD)"))
        if args.cmd == "cancel" and args.to:
            raise push.UsageError(_("--to is not for cancel --server: the server sends the cancel to the "
                                    "broadcast's own targets"))
    elif args.key is None or args.kid is None:
        if hasattr(args, "server"):
            raise push.UsageError(_("give --key FILE and --kid ID (sign here) or --server URL --user NAME (the county "
                                    "server signs)"))
        raise push.UsageError(_("give --key FILE and --kid ID (sign here)"))
    if not args.to and not (server is not None and args.cmd == "cancel"):
        raise push.UsageError(_("the following arguments are required: %s") % "--to")
    return server is not None


def _tz_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tz", type=_tz, default=None, metavar="ZONE",
                   help=_("the county's timezone, for times without an offset and for times shown "
                          "(default ${env}, else {zone})").format(env=push.TZ_ENV, zone=push.DEFAULT_TZ))


def _tz(text: str) -> str:
    try:
        push.zone(text)
    except push.UsageError as exc:
        raise argparse.ArgumentTypeError(words.problem(str(exc))) from None
    return text


def _ttl(text: str) -> int:
    try:
        ttl = push.parse_duration(text)
    except push.UsageError as exc:
        raise argparse.ArgumentTypeError(words.problem(str(exc))) from None
    if not 1 <= ttl <= push.MAX_TTL_S:
        raise argparse.ArgumentTypeError(_("{text!r} is not 1s..31d (the boxes refuse a longer lifetime)").format(
            text=text))
    return int(ttl)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("{text!r} is not a number of seconds").format(text=text)) from None
    if not 0 <= value < 1e9:  # also refuses nan
        raise argparse.ArgumentTypeError(_("{text!r} is not a number of seconds >= 0").format(text=text))
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_("{text!r} is not a whole number").format(text=text)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(_("{text!r} is not 1 or more").format(text=text))
    return value


def _target(text: str) -> str:
    try:
        return push.parse_target(text)
    except push.UsageError as exc:
        raise argparse.ArgumentTypeError(words.problem(str(exc))) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="village county", description=_("the county console"),
                     epilog=_("exit codes: 0 done, 1 error, 2 usage, 3 --wait: a box did not answer or refused, "
                              "4 nothing sent: no known box answers to a target") + "; "
                     + _("every command takes --lang zh|en (else $VILLAGE_LANG, else the locale)"))
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("push", help=_("sign and publish a broadcast.play"))
    _broker_args(p)
    _signing_args(p)
    _server_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help=_("text spoken by the box's TTS"))
    what.add_argument("--audio", type=Path, metavar="FILE", help=_("mp3, ogg, opus or wav, sent inline"))
    what.add_argument("--cap", type=Path, metavar="FILE", help=_("a CAP 1.2 alert (XML)"))
    p.add_argument("--title", help=_("short title (default: the start of the text)"))
    p.add_argument("--spoken", metavar="TEXT", help=_("with --audio: a transcript, spoken if the audio cannot play"))
    p.add_argument("--class", dest="cls", choices=["emergency", "daily", "drill"],
                   help=_("default daily; with --cap: from the alert"))
    p.add_argument("--level", type=int, choices=[1, 2, 3, 4], help=_("1 most severe (default 1 emergency, 3 else)"))
    p.add_argument("--at", metavar="TIME",
                   help=_("start: ISO 8601 (without an offset: in --tz), now, or +10m (default now)"))
    p.add_argument("--until", metavar="TIME", help=_("end: ISO 8601 (without an offset: in --tz) or +2h"))
    p.add_argument("--volume", type=int, metavar="0-100", help=_("volume (capped by each box)"))
    p.add_argument("--id", dest="cmd_id", help=_("command (= broadcast) id; default a new UUID"))

    p = sub.add_parser("cancel", help=_("sign and publish a broadcast.cancel"))
    _broker_args(p)
    _signing_args(p)
    _server_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("broadcast", nargs="?", metavar="ID", help=_("the broadcast id to cancel"))
    which.add_argument("--all", action="store_true", help=_("stop and drop every broadcast"))

    p = sub.add_parser("fences", help=_("sign and publish a geofence.set from a GeoJSON file"))
    _broker_args(p)
    _signing_args(p)
    p.add_argument("--file", type=Path, required=True, metavar="F.geojson")
    p.add_argument("--crs", default="WGS84", choices=["WGS84", "GCJ02", "BD09"])
    p.add_argument("--assign", action="append", default=[], metavar="W1=f1,f2",
                   help=_("wearer to fence ids (repeatable)"))

    p = sub.add_parser("watch", help=_("print every uplink message as it arrives"))
    _broker_args(p)
    p.add_argument("--json", action="store_true", help=_("each envelope exactly as received, one per line"))
    p.add_argument("--state", action="store_true",
                   help=_("also print box state (online/offline) messages; with --json as objects of state_topic "
                          "and state"))
    p.add_argument("--count", type=_positive_int, metavar="N", help=_("stop after N messages"))
    p.add_argument("--duration", type=_seconds, metavar="S", help=_("stop after S seconds"))
    _tz_arg(p)

    # resolve: county.status may define some of the shared options itself; its definition wins
    p = sub.add_parser("status", help=_("one row per box: state, last seen, backlog, cameras"),
                       conflict_handler="resolve")
    _broker_args(p)
    status = _status_module()
    if status is not None and hasattr(status, "add_arguments"):
        status.add_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER)
    server_cli.add_commands(sub)
    rollout_cli.add_commands(sub)
    return parser


def _status_module() -> Any:
    try:
        return importlib.import_module("county.status")  # written by the cameras engineer
    except ModuleNotFoundError as exc:
        if exc.name != "county.status":
            raise
        return None


# ---------------------------------------------------------------------------------------- commands
def _spec(args: argparse.Namespace) -> BrokerSpec:
    return BrokerSpec.parse(args.broker, ca=args.ca, cert=args.cert, client_key=args.client_key)


def _say(args: argparse.Namespace, text: str) -> None:
    # county/server_client.py says its lines in English: they reach the chosen language through the table
    print(f"village county {args.cmd}: {words.problem(text)}", file=sys.stderr, flush=True)


# --wait's lines, the same through the broker and through the county server (county/server_client.py)
def say_waiting(args: argparse.Namespace, board: ReceiptBoard) -> None:
    _say(args, _("waiting up to {s:g} s for {n} box(es): {names}").format(s=args.wait, n=len(board.rows),
                                                                         names=_names(board.rows)))


def say_progress(args: argparse.Namespace, board: ReceiptBoard, row: BoxRow, left: float) -> None:
    _say(args, _("{box} {state}: {progress}, {left:.0f} s left").format(
        box=row.box, state=words.state_reason(row.state, row.reason), progress=board.progress(), left=left))


def say_all_final(args: argparse.Namespace, board: ReceiptBoard) -> None:
    _say(args, _("every box reached a final state: {progress}").format(progress=board.progress()))


def _names(names: Iterable[str], most: int = 8) -> str:
    items = sorted(names)
    more = _(" and {n} more").format(n=len(items) - most) if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _unheard_line(unheard: list[str], board: ReceiptBoard, prefix: str) -> str:
    if not board.known:
        why = _("no box is known on this broker (no retained state under {prefix}/box/+/state: "
                "wrong --broker or --prefix?)").format(prefix=prefix)
    else:
        groups = sorted({g for gs in board.known.values() for g in gs})
        why = _("no known box answers to {targets} ({n} box(es) known from their retained state; their groups: "
                "{groups})").format(targets=", ".join(unheard), n=len(board.known),
                                    groups=_names(groups) or _("none"))
    return _("{why}; nothing sent (check the name, or --force to send anyway)").format(why=why)


def _publish(args: argparse.Namespace, payloads: list[dict[str, Any]], main: dict[str, Any]) -> int:
    """Sign every payload, check someone will hear it, publish each to every target's cmd topic (in order),
    then --wait for receipts."""
    try:
        key = load_private_key(args.key)
    except KeysError as exc:
        raise ConsoleError(words.config_error(exc)) from None
    topics = Topics(args.prefix)
    tokens = [(p, push.sign(p, key, args.kid)) for p in payloads]
    tz = push.zone(args.tz)
    board = ReceiptBoard(main["id"], main["to"], topics)
    with CountyClient(_spec(args), name=args.cmd, tz=tz) as client:
        # Which boxes exist: their retained states (QoS 0), then the receipts (QoS 1) -- subscribed before
        # publishing, so a fast box cannot answer into the void; the second SUBACK follows every state.
        client.subscribe([(topics.all_state(), 0)])
        client.subscribe([f"{args.prefix}/box/+/up/receipt/cmd"])
        learn_boxes(client, board)
        unheard = board.unheard()
        if unheard and not args.force:
            raise NobodyHears(_unheard_line(unheard, board, args.prefix))
        if unheard:
            _say(args, _("--force: sending although no known box answers to {targets}").format(
                targets=", ".join(unheard)))
        for payload, token in tokens:
            dests = [push.target_topic(t, topics) for t in payload["to"]]
            for topic in dests:
                client.publish(topic, token)
            _say_published(args, payload, dests)
        if args.wait <= 0:
            return EXIT_OK
        say_waiting(args, board)
        if collect(client, board, args.wait, lambda row, left: say_progress(args, board, row, left)):
            say_all_final(args, board)
    print_board(board, sys.stdout, as_json=args.json, tz=tz)
    return EXIT_OK if board.all_good else EXIT_UNANSWERED


def _say_published(args: argparse.Namespace, payload: dict[str, Any], dests: list[str]) -> None:
    line = {"cmd": payload["id"], "kind": payload["kind"], "to": payload["to"], "topics": dests,
            "exp": payload["exp"]}
    if payload["kind"] == "broadcast.play":
        line.update(start=payload["data"]["start"], end=payload["data"]["end"])
    said = _("published {kind} {id} to {topics}").format(kind=payload["kind"], id=payload["id"],
                                                         topics=", ".join(dests))
    if args.wait > 0:  # stdout carries the receipt rows then
        _say(args, said)
    elif args.json:
        print(json.dumps(line, ensure_ascii=False))
    else:
        print(said)


def _check_times(args: argparse.Namespace, data: dict[str, Any], now: float, tz: Any) -> None:
    """Refuse a start or end already past (unless --force); say what the times mean, in the county and UTC."""
    lines = []
    for key, opt, given in (("start", "--at", args.at), ("end", "--until", args.until)):
        ts = data.get(key)
        if ts is None:
            continue
        past = ts < int(now) if key == "start" else ts <= now
        if past and not args.force:
            what = f"{opt} {given}" if given else (_("the alert's start") if key == "start" else _("the alert's end"))
            raise push.UsageError(_("{what} is {when}, {span} ago; nothing sent (--force sends it anyway)").format(
                what=what, when=push.describe_time(ts, tz), span=push.describe_span(now - ts)))
        label = _("start") if key == "start" else _("end")
        lines.append(f"{pad(label, 6)}{push.describe_time(ts, tz)}" + (_(" (past: --force)") if past else ""))
    for line in lines:
        _say(args, line)


def cmd_push(args: argparse.Namespace) -> int:
    if _signing_mode(args):
        from county import server_client

        return server_client.cmd_push(args)
    now = time.time()
    tz = push.zone(args.tz)
    start = push.parse_time(args.at, now, tz) if args.at else None
    end = push.parse_time(args.until, now, tz) if args.until else None
    payloads: list[dict[str, Any]] = []
    if args.cap:
        try:
            plan = cap_mod.plan(cap_mod.parse_cap(_read_cap(args.cap)), now)
        except cap_mod.CapError as exc:
            raise ConsoleError(N_("{cap}: {exc}", cap=args.cap, exc=exc)) from None
        for ref in plan.cancels:
            payloads.append(push.command("broadcast.cancel", {"broadcast": ref}, args.to, now=now, ttl_s=args.ttl))
        if plan.play is None:  # msgType Cancel: the cancels are the whole message
            if not payloads:
                raise ConsoleError(_("{file}: nothing to cancel").format(file=args.cap))
            return _publish(args, payloads, payloads[-1])
        data = dict(plan.play)
        if data["end"] is not None and data["end"] <= now and end is None:
            raise ConsoleError(_("{file}: the alert expired already (pass --until to broadcast it anyway)").format(
                file=args.cap))
        overrides = {"class": args.cls, "level": args.level, "title": args.title, "volume": args.volume,
                     "start": start, "end": end}
        data.update({k: v for k, v in overrides.items() if v is not None})
        data = push.play_data(cls=data["class"], level=data["level"], title=data["title"], text=data["text"],
                              audio=None, start=data["start"], end=data["end"], volume=data["volume"])
        cmd_id = args.cmd_id or plan.broadcast_id
    else:
        audio = push.audio_data(args.audio) if args.audio else None
        text = args.text if args.text is not None else args.spoken
        title = args.title or (args.audio.stem if args.audio and not text else None)
        data = push.play_data(cls=args.cls or "daily", level=args.level, title=title, text=text, audio=audio,
                              start=start, end=end, volume=args.volume)
        cmd_id = args.cmd_id
    _check_times(args, data, now, tz)
    main = push.command("broadcast.play", data, args.to, now=now, ttl_s=args.ttl, cmd_id=cmd_id)
    payloads.append(main)
    return _publish(args, payloads, main)


def _read_cap(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(cap_mod.MAX_CAP_BYTES + 1)
    except OSError as exc:
        error = words.problem(str(exc.strerror))
        raise ConsoleError(_("{file}: cannot read: {error}").format(file=path, error=error)) from None


def cmd_cancel(args: argparse.Namespace) -> int:
    if _signing_mode(args):
        from county import server_client

        return server_client.cmd_cancel(args)
    data: dict[str, Any] = {"all": True} if args.all else {"broadcast": args.broadcast}
    main = push.command("broadcast.cancel", data, args.to, now=time.time(), ttl_s=args.ttl)
    return _publish(args, [main], main)


def cmd_fences(args: argparse.Namespace) -> int:
    _signing_mode(args)
    try:
        fences = importlib.import_module("county.fences")  # written by the wearables engineer
    except ModuleNotFoundError as exc:
        if exc.name != "county.fences":
            raise
        raise ConsoleError(_("geofence support (county/fences.py) is not installed in this build")) from None
    assign: dict[str, list[str]] = {}
    for item in args.assign:
        wearer, sep, ids = item.partition("=")
        if not sep or not wearer or not ids:
            raise push.UsageError(_("--assign {item!r} is not WEARER=fence1,fence2").format(item=item))
        assign.setdefault(wearer, []).extend(i for i in ids.split(",") if i)
    try:
        data = fences.build_geofence_command_data(args.file, args.crs, assign)
    except (ValueError, OSError) as exc:
        raise ConsoleError(N_("{file}: {error}", file=args.file, error=exc)) from None
    main = push.command("geofence.set", data, args.to, now=time.time(), ttl_s=args.ttl)
    return _publish(args, [main], main)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print uplink messages; with --json each envelope byte for byte and --state lines wrapped (never mixed up).

    Messages lost to the client's full queue are counted: the human form says so in the stream when it
    notices, and the total goes to stderr on exit in both forms (stdout stays parseable with --json).
    A broker restart or a lost link is survived: the client subscribes again at each reconnect and says so
    on stderr (what was sent during the gap is not shown).
    """
    topics = Topics(args.prefix)
    tz = push.zone(args.tz)
    out = sys.stdout.buffer
    subs = [topics.all_up()] + ([topics.all_state()] if args.state else [])
    deadline = time.monotonic() + args.duration if args.duration else None
    seen = reported = 0
    with CountyClient(_spec(args), name="watch", tz=tz) as client:
        held = client.messages.maxsize
        try:
            client.subscribe(subs)
            print(_("watching {broker} ({prefix})").format(broker=client.spec.display, prefix=args.prefix),
                  file=sys.stderr, flush=True)
            while args.count is None or seen < args.count:
                left = deadline - time.monotonic() if deadline is not None else 0.5
                if left <= 0:
                    break
                msg = client.get(min(left, 0.5))
                if not args.json and client.dropped > reported:
                    reported = client.dropped
                    out.write((dropped_line(reported, held) + "\n").encode())
                    out.flush()
                if msg is None:
                    continue
                box = topics.parse_state(msg.topic)
                if box is None and topics.parse_up(msg.topic) is None:
                    continue
                if args.json and box is not None:
                    out.write(state_json_line(msg.topic, msg.payload) + b"\n")
                elif args.json:
                    out.write(msg.payload + b"\n")  # verbatim: the county's own tools parse it
                elif box is not None:
                    out.write((format_state(box, msg.payload, tz) + "\n").encode())
                else:
                    out.write((format_envelope(msg.topic, msg.payload, topics, tz) + "\n").encode())
                out.flush()
                seen += 1
        finally:  # also on Ctrl-C/SIGTERM (KeyboardInterrupt passes through here)
            if client.dropped:
                print("village county watch: " + _("{n} message(s) dropped in all (the queue holds {held})").format(
                    n=client.dropped, held=held), file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = _status_module()
    if status is None or not hasattr(status, "run_status"):
        raise ConsoleError(_("`county status` (county/status.py) is not installed in this build"))
    return int(asyncio.run(status.run_status(args)))


COMMANDS = {"push": cmd_push, "cancel": cmd_cancel, "fences": cmd_fences, "watch": cmd_watch, "status": cmd_status,
            **server_cli.COMMANDS, **rollout_cli.COMMANDS}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rest = i18n.setup(list(sys.argv[1:] if argv is None else argv))
    except i18n.LangError as exc:
        print(f"village county: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(rest)
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        return COMMANDS[args.cmd](args)
    except push.UsageError as exc:  # county/push.py's words through the table of problems (agent/words.py)
        _say(args, words.problem(str(exc)))
        return EXIT_USAGE
    except NobodyHears as exc:
        _say(args, str(exc))
        return EXIT_UNHEARD
    except (ConsoleError, push.PushError) as exc:
        _say(args, words.problem(str(exc)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.cmd == "watch":
            return EXIT_OK
        _say(args, _("interrupted"))
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
