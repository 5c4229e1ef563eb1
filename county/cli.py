"""`village county push|cancel|fences|watch|status` (contract section 1).

Exit codes: 0 done (with --wait: every expected box answered and none rejected or failed); 1 the command could
not be built or published (broker, key, input); 2 usage; 3 --wait ended with a box that did not answer, or
rejected, or failed.
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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent.protocol.jws import KeysError, load_private_key
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from county import cap as cap_mod
from county import push
from county.console import (
    BrokerSpec,
    ConsoleError,
    CountyClient,
    ReceiptBoard,
    collect,
    dropped_line,
    format_envelope,
    format_state,
    print_board,
    state_json_line,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNANSWERED = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------- parser
def _broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", default=os.environ.get("VILLAGE_BROKER"), metavar="URL",
                   help="mqtt://[user:pass@]host:port or mqtts://... (default: $VILLAGE_BROKER)")
    g.add_argument("--ca", type=Path, help="CA certificate (PEM) for mqtts://")
    g.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    g.add_argument("--client-key", type=Path, help="client certificate key (PEM) for mutual TLS")
    g.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")


def _signing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("signing and delivery")
    g.add_argument("--key", type=Path, required=True, metavar="FILE", help="county private key (PKCS#8 PEM)")
    g.add_argument("--kid", required=True, help="key id the boxes know the public key under ([trust.keys])")
    g.add_argument("--to", action="append", required=True, metavar="TARGET", type=_target,
                   help="box:ID or group:NAME (repeatable)")
    g.add_argument("--ttl", type=int, default=push.DEFAULT_TTL_S, metavar="S",
                   help=f"seconds a box may still accept the command (default {push.DEFAULT_TTL_S})")
    g.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="collect receipts for S seconds and print one row per box")
    g.add_argument("--json", action="store_true", help="print JSON lines instead of text")


def _target(text: str) -> str:
    try:
        return push.parse_target(text)
    except push.PushError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="village county", description="the county console")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("push", help="sign and publish a broadcast.play")
    _broker_args(p)
    _signing_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text spoken by the box's TTS")
    what.add_argument("--audio", type=Path, metavar="FILE", help="mp3, ogg, opus or wav, sent inline")
    what.add_argument("--cap", type=Path, metavar="FILE", help="a CAP 1.2 alert (XML)")
    p.add_argument("--title", help="short title (default: the start of the text)")
    p.add_argument("--spoken", metavar="TEXT", help="with --audio: a transcript, spoken if the audio cannot play")
    p.add_argument("--class", dest="cls", choices=["emergency", "daily", "drill"],
                   help="default daily; with --cap: from the alert")
    p.add_argument("--level", type=int, choices=[1, 2, 3, 4], help="1 most severe (default 1 emergency, 3 else)")
    p.add_argument("--at", metavar="TIME", help="start: ISO 8601, now, or +10m (default now)")
    p.add_argument("--until", metavar="TIME", help="end: ISO 8601 or +2h")
    p.add_argument("--volume", type=int, metavar="0-100", help="volume (capped by each box)")
    p.add_argument("--id", dest="cmd_id", help="command (= broadcast) id; default a new UUID")

    p = sub.add_parser("cancel", help="sign and publish a broadcast.cancel")
    _broker_args(p)
    _signing_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("broadcast", nargs="?", metavar="ID", help="the broadcast id to cancel")
    which.add_argument("--all", action="store_true", help="stop and drop every broadcast")

    p = sub.add_parser("fences", help="sign and publish a geofence.set from a GeoJSON file")
    _broker_args(p)
    _signing_args(p)
    p.add_argument("--file", type=Path, required=True, metavar="F.geojson")
    p.add_argument("--crs", default="WGS84", choices=["WGS84", "GCJ02", "BD09"])
    p.add_argument("--assign", action="append", default=[], metavar="W1=f1,f2",
                   help="wearer to fence ids (repeatable)")

    p = sub.add_parser("watch", help="print every uplink message as it arrives")
    _broker_args(p)
    p.add_argument("--json", action="store_true", help="each envelope exactly as received, one per line")
    p.add_argument("--state", action="store_true",
                   help='also print box state (online/offline) messages; with --json as {"state_topic", "state"}')
    p.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")

    # resolve: county.status may define some of the shared options itself; its definition wins
    p = sub.add_parser("status", help="one row per box: state, last seen, backlog, cameras",
                       conflict_handler="resolve")
    _broker_args(p)
    status = _status_module()
    if status is not None and hasattr(status, "add_arguments"):
        status.add_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER)
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


def _publish(args: argparse.Namespace, payloads: list[dict[str, Any]], main: dict[str, Any]) -> int:
    """Sign every payload, publish each to every target's cmd topic (in order), then --wait for receipts."""
    try:
        key = load_private_key(args.key)
    except KeysError as exc:
        raise ConsoleError(str(exc)) from None
    topics = Topics(args.prefix)
    tokens = [(p, push.sign(p, key, args.kid)) for p in payloads]
    spec = _spec(args)
    board = ReceiptBoard(main["id"], main["to"], topics) if args.wait > 0 else None
    with CountyClient(spec) as client:
        if board is not None:  # subscribe before publishing: a fast box must not answer into the void
            client.subscribe([topics.all_state(), f"{args.prefix}/box/+/up/receipt/cmd"])
        for payload, token in tokens:
            dests = [push.target_topic(t, topics) for t in payload["to"]]
            for topic in dests:
                client.publish(topic, token)
            _say_published(args, payload, dests)
        if board is None:
            return EXIT_OK
        collect(client, board, args.wait)
    print_board(board, sys.stdout, as_json=args.json)
    return EXIT_OK if board.all_good else EXIT_UNANSWERED


def _say_published(args: argparse.Namespace, payload: dict[str, Any], dests: list[str]) -> None:
    line = {"cmd": payload["id"], "kind": payload["kind"], "to": payload["to"], "topics": dests,
            "exp": payload["exp"]}
    if args.wait > 0:  # stdout carries the receipt rows then
        print(f"published {payload['kind']} {payload['id']} to {', '.join(dests)}", file=sys.stderr)
    elif args.json:
        print(json.dumps(line, ensure_ascii=False))
    else:
        print(f"published {payload['kind']} {payload['id']} to {', '.join(dests)}")


def cmd_push(args: argparse.Namespace) -> int:
    now = time.time()
    start = push.parse_time(args.at, now) if args.at else None
    end = push.parse_time(args.until, now) if args.until else None
    payloads: list[dict[str, Any]] = []
    if args.cap:
        try:
            plan = cap_mod.plan(cap_mod.parse_cap(_read_cap(args.cap)), now)
        except cap_mod.CapError as exc:
            raise ConsoleError(f"{args.cap}: {exc}") from None
        for ref in plan.cancels:
            payloads.append(push.command("broadcast.cancel", {"broadcast": ref}, args.to, now=now, ttl_s=args.ttl))
        if plan.play is None:  # msgType Cancel: the cancels are the whole message
            if not payloads:
                raise ConsoleError(f"{args.cap}: nothing to cancel")
            return _publish(args, payloads, payloads[-1])
        data = dict(plan.play)
        if data["end"] is not None and data["end"] <= now and end is None:
            raise ConsoleError(f"{args.cap}: the alert expired already (pass --until to broadcast it anyway)")
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
    main = push.command("broadcast.play", data, args.to, now=now, ttl_s=args.ttl, cmd_id=cmd_id)
    payloads.append(main)
    return _publish(args, payloads, main)


def _read_cap(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(cap_mod.MAX_CAP_BYTES + 1)
    except OSError as exc:
        raise ConsoleError(f"{path}: cannot read: {exc.strerror}") from None


def cmd_cancel(args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"all": True} if args.all else {"broadcast": args.broadcast}
    main = push.command("broadcast.cancel", data, args.to, now=time.time(), ttl_s=args.ttl)
    return _publish(args, [main], main)


def cmd_fences(args: argparse.Namespace) -> int:
    try:
        fences = importlib.import_module("county.fences")  # written by the wearables engineer
    except ModuleNotFoundError as exc:
        if exc.name != "county.fences":
            raise
        raise ConsoleError("geofence support (county/fences.py) is not installed in this build") from None
    assign: dict[str, list[str]] = {}
    for item in args.assign:
        wearer, sep, ids = item.partition("=")
        if not sep or not wearer or not ids:
            raise ConsoleError(f"--assign {item!r} is not WEARER=fence1,fence2")
        assign.setdefault(wearer, []).extend(i for i in ids.split(",") if i)
    try:
        data = fences.build_geofence_command_data(args.file, args.crs, assign)
    except (ValueError, OSError) as exc:
        raise ConsoleError(f"{args.file}: {exc}") from None
    main = push.command("geofence.set", data, args.to, now=time.time(), ttl_s=args.ttl)
    return _publish(args, [main], main)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print uplink messages; with --json each envelope byte for byte and --state lines wrapped (never mixed up).

    Messages lost to the client's full queue are counted: the human form says so in the stream when it
    notices, and the total goes to stderr on exit in both forms (stdout stays parseable with --json).
    """
    topics = Topics(args.prefix)
    out = sys.stdout.buffer
    subs = [topics.all_up()] + ([topics.all_state()] if args.state else [])
    deadline = time.monotonic() + args.duration if args.duration else None
    seen = reported = 0
    with CountyClient(_spec(args)) as client:
        held = client.messages.maxsize
        try:
            client.subscribe(subs)
            print(f"watching {client.spec.display} ({args.prefix})", file=sys.stderr, flush=True)
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
                    out.write((format_state(box, msg.payload) + "\n").encode())
                else:
                    out.write((format_envelope(msg.topic, msg.payload, topics) + "\n").encode())
                out.flush()
                seen += 1
        finally:  # also on Ctrl-C/SIGTERM (KeyboardInterrupt passes through here)
            if client.dropped:
                print(f"village county watch: {client.dropped} message(s) dropped in all (the queue holds {held})",
                      file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = _status_module()
    if status is None or not hasattr(status, "run_status"):
        raise ConsoleError("`county status` (county/status.py) is not installed in this build")
    return int(asyncio.run(status.run_status(args)))


COMMANDS = {"push": cmd_push, "cancel": cmd_cancel, "fences": cmd_fences, "watch": cmd_watch, "status": cmd_status}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        return COMMANDS[args.cmd](args)
    except (ConsoleError, push.PushError) as exc:
        print(f"village county {args.cmd}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK if args.cmd == "watch" else EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
