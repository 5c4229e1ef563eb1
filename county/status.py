"""`village county status`: one row per box, and the camera online rate per village over `--since`.

Where the figures come from:
- box state, version: the retained `P/box/{box}/state` message (the MQTT will says offline);
- last seen, outbox backlog: the last `heartbeat` telemetry (backlog = sum of `outbox.depth`);
- cameras online/total: the last `cameras` telemetry summary per camera, updated by later `camera` events;
- online rate per village: the `seconds` per state in `cameras` telemetry, over the `--since` window,
  as online / (online + degraded + offline). Time in `unknown` (agent not running, box LAN down) and
  `maintenance` is left out of the rate and shown as its own share ("observed").

Telemetry is not retained, so the command keeps a small SQLite history (`--db`) and reads the broker
through a persistent MQTT session (fixed client id, clean_session false): the broker queues what
arrives between two runs (up to its per-client queue limit), each run drains it for `--listen`
seconds. The first run of a fresh `--db` sees only the retained box states; run it from a timer
(every few minutes) to keep a complete history. A box's village is its id without the trailing
number (`lhk-menglou-001` -> `lhk-menglou`) unless `--villages FILE` (JSON box -> village) says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agent import i18n, words
from agent.i18n import _
from agent.protocol.envelope import Envelope, EnvelopeError, MsgClass
from agent.protocol.topics import DEFAULT_PREFIX, Topics
from county.console import BrokerSpec, ConsoleError, CountyClient, Message

STATES = ("online", "degraded", "offline", "unknown", "maintenance")
_PERIOD_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

SCHEMA = """
CREATE TABLE IF NOT EXISTS boxes (box TEXT PRIMARY KEY, state TEXT, state_ts INTEGER, version TEXT,
    last_seen INTEGER, backlog INTEGER, heartbeat_ts INTEGER);
CREATE TABLE IF NOT EXISTS cameras (box TEXT, camera TEXT, state TEXT, reason TEXT, since INTEGER, ts INTEGER,
    PRIMARY KEY (box, camera));
CREATE TABLE IF NOT EXISTS camera_periods (id TEXT, box TEXT, camera TEXT, t_from INTEGER, t_to INTEGER,
    online REAL, degraded REAL, offline REAL, unknown REAL, maintenance REAL, PRIMARY KEY (id, camera));
CREATE INDEX IF NOT EXISTS camera_periods_to ON camera_periods (t_to);
"""


def parse_period(text: str) -> float:
    """"90s", "30m", "24h", "7d", "2w" or plain seconds -> seconds."""
    m = _PERIOD_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(_("not a period: {text!r} (e.g. 30m, 24h, 7d)").format(text=text))
    return float(m.group(1)) * _UNITS[m.group(2)]


def default_db() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "village-county" / "status.db"


def _add(parser: argparse.ArgumentParser, *flags: str, **kw: Any) -> None:
    """Add an option unless the console already did (county/cli.py adds the shared broker options)."""
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(*flags, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--broker", default=os.environ.get("VILLAGE_BROKER"), metavar="URL",
         help=_("mqtt://[user:pass@]host:port (default: $VILLAGE_BROKER)"))
    _add(parser, "--prefix", default=DEFAULT_PREFIX,
         help=_("topic prefix (default {prefix})").format(prefix=DEFAULT_PREFIX))
    _add(parser, "--ca", type=Path, help=_("CA certificate (PEM) for mqtts://"))
    _add(parser, "--cert", type=Path, help=_("client certificate (PEM) for mutual TLS"))
    _add(parser, "--client-key", type=Path, help=_("client certificate key (PEM) for mutual TLS"))
    _add(parser, "--since", type=parse_period, default=parse_period("24h"), metavar="PERIOD",
         help=_("window for the online rate: 30m, 24h, 7d ... (default 24h)"))
    _add(parser, "--json", action="store_true", help=_("JSON lines: one per box, then one per village"))
    _add(parser, "--listen", type=float, default=2.0, metavar="S",
         help=_("seconds to collect what the broker holds for this console (default 2)"))
    _add(parser, "--db", type=Path, default=None, metavar="FILE",
         help=_("history file (default {file})").format(file=default_db()))
    _add(parser, "--villages", type=Path, default=None, metavar="FILE", help=_("JSON map box id -> village"))


def village_of(box: str, overrides: dict[str, str]) -> str:
    if box in overrides:
        return overrides[box]
    head, sep, tail = box.rpartition("-")
    return head if sep and tail.isdigit() and head else box


# ------------------------------------------------------------------------------------- the history
class History:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def _box(self, box: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO boxes (box) VALUES (?)", (box,))

    def _seen(self, box: str, ts: int) -> None:
        self.db.execute("UPDATE boxes SET last_seen = max(coalesce(last_seen, 0), ?) WHERE box = ?", (ts, box))

    def on_state(self, box: str, payload: dict[str, Any]) -> None:
        self._box(box)
        ts = _int(payload.get("ts"))
        self.db.execute("UPDATE boxes SET state = ?, state_ts = ?, version = coalesce(?, version) WHERE box = ?",
                        (str(payload.get("state", "?")), ts, payload.get("version"), box))
        if ts is not None and payload.get("state") == "online":
            self._seen(box, _ms(ts))

    def on_envelope(self, env: Envelope) -> None:
        self._box(env.box)
        self._seen(env.box, env.ts)
        if env.cls is MsgClass.TELEMETRY and env.kind == "heartbeat":
            self.db.execute("UPDATE boxes SET backlog = ?, heartbeat_ts = ? WHERE box = ? "
                            "AND coalesce(heartbeat_ts, 0) <= ?",
                            (backlog(env.data), env.ts, env.box, env.ts))
        elif env.cls is MsgClass.TELEMETRY and env.kind == "cameras":
            t_from, t_to = _int(env.data.get("from")), _int(env.data.get("to")) or env.ts
            for cam in env.data.get("cameras") or []:
                if not isinstance(cam, dict) or not isinstance(cam.get("camera"), str):
                    continue
                raw = cam.get("seconds")
                secs: dict[str, Any] = raw if isinstance(raw, dict) else {}
                self.db.execute(
                    "INSERT OR IGNORE INTO camera_periods VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (env.id, env.box, cam["camera"], t_from if t_from is not None else t_to, t_to,
                     *(float(secs.get(s) or 0.0) for s in STATES)))
                self._camera(env.box, cam["camera"], cam.get("state"), cam.get("reason"), cam.get("since"), env.ts)
        elif env.cls is MsgClass.EVENT and env.kind == "camera" and isinstance(env.data.get("camera"), str):
            d = env.data
            self._camera(env.box, d["camera"], d.get("state"), d.get("reason"), d.get("since"), env.ts)

    def _camera(self, box: str, camera: str, state: Any, reason: Any, since: Any, ts: int) -> None:
        if state not in STATES:
            return
        self.db.execute(
            "INSERT INTO cameras VALUES (?,?,?,?,?,?) ON CONFLICT (box, camera) DO UPDATE SET "
            "state = excluded.state, reason = excluded.reason, since = excluded.since, ts = excluded.ts "
            "WHERE excluded.ts >= cameras.ts",
            (box, camera, state, reason, _int(since), ts))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for box, state, version, last_seen, bl in self.db.execute(
                "SELECT box, state, version, last_seen, backlog FROM boxes ORDER BY box"):
            cams = dict(self.db.execute(
                "SELECT state, count(*) FROM cameras WHERE box = ? GROUP BY state", (box,)).fetchall())
            out.append({"box": box, "state": state or "?", "last_seen": last_seen, "backlog": bl,
                        "version": version, "cameras_online": cams.get("online", 0),
                        "cameras_total": sum(cams.values())})
        return out

    def villages(self, since_s: float, now_ms: int, overrides: dict[str, str]) -> list[dict[str, Any]]:
        start = now_ms - int(since_s * 1000)
        acc: dict[str, dict[str, float]] = {}
        for box, t_from, t_to, *secs in self.db.execute(
                "SELECT box, t_from, t_to, online, degraded, offline, unknown, maintenance "
                "FROM camera_periods WHERE t_to > ?", (start,)):
            share = _overlap(t_from, t_to, start, now_ms)
            v = acc.setdefault(village_of(box, overrides), dict.fromkeys(STATES, 0.0))
            for s, x in zip(STATES, secs, strict=True):
                v[s] += x * share
        boxes: dict[str, set[str]] = {}
        for box, in self.db.execute("SELECT box FROM boxes"):
            boxes.setdefault(village_of(box, overrides), set()).add(box)
        out = []
        for village in sorted(set(acc) | set(boxes)):
            v = acc.get(village, dict.fromkeys(STATES, 0.0))
            seen = v["online"] + v["degraded"] + v["offline"]
            total = seen + v["unknown"] + v["maintenance"]
            out.append({"village": village, "boxes": len(boxes.get(village, ())),
                        "online_rate": round(v["online"] / seen, 4) if seen else None,
                        "observed": round(seen / total, 4) if total else None,
                        "camera_seconds": {s: round(x, 1) for s, x in v.items()}})
        return out


def _overlap(t_from: int, t_to: int, start: int, end: int) -> float:
    """Share of the period [t_from, t_to] (ms) inside the window; a zero-length period counts whole."""
    if t_to <= t_from:
        return 1.0 if start <= t_to <= end else 0.0
    inside = max(0, min(t_to, end) - max(t_from, start))
    return inside / (t_to - t_from)


def backlog(heartbeat: dict[str, Any]) -> int | None:
    depth = (heartbeat.get("outbox") or {}).get("depth") if isinstance(heartbeat.get("outbox"), dict) else None
    if isinstance(depth, dict):
        return int(sum(v for v in depth.values() if isinstance(v, int | float)))
    if isinstance(depth, int | float):
        return int(depth)
    return None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _ms(ts: int) -> int:
    """Box state `ts` may be epoch s or ms: normalise to ms."""
    return ts * 1000 if ts < 10_000_000_000 else ts


# ------------------------------------------------------------------------------------------- MQTT
def client_id(spec: BrokerSpec, db: Path) -> str:
    digest = hashlib.sha256(f"{spec.host}:{spec.port}:{db.resolve()}".encode()).hexdigest()[:16]
    return f"village-status-{digest}"


def collect(spec: BrokerSpec, topics: Topics, cid: str, listen_s: float,
            stop: threading.Event | None = None) -> list[Message]:
    """Blocking: connect with a persistent session, subscribe, drain for `listen_s` seconds (or until `stop`).

    The console's client subscribes again after a reconnect (a broker restart mid-window) and says so on
    stderr; the persistent session keeps what arrived meanwhile once the broker has it saved.
    """
    subs = [(topics.all_state(), 1), (f"{topics.prefix}/box/+/up/telemetry/heartbeat", 1),
            (f"{topics.prefix}/box/+/up/telemetry/cameras", 1), (f"{topics.prefix}/box/+/up/event/camera", 1),
            (f"{topics.prefix}/box/+/up/batch/+", 1)]  # uplink batches (issue 14): CountyClient unpacks them
    # unbounded: what the broker queued for this session between two runs is the history's input
    with CountyClient(spec, max_queued=0, client_id=cid, clean_session=False, name="status", tz=UTC) as client:
        client.subscribe(subs)
        (stop or threading.Event()).wait(max(0.0, listen_s))  # the listening window itself: the command's job
    items = []
    while (msg := client.get(0)) is not None:
        items.append(msg)
    return items


def ingest(history: History, topics: Topics, items: Iterable[Message]) -> int:
    n = 0
    for msg in items:
        n += 1
        if (box := topics.parse_state(msg.topic)) is not None:
            with contextlib.suppress(ValueError, AttributeError, RecursionError):
                obj = json.loads(msg.payload)
                if isinstance(obj, dict):
                    history.on_state(box, obj)
            continue
        try:
            env = Envelope.decode(msg.payload)
        except EnvelopeError:
            continue
        if topics.parse_up(msg.topic) is not None:
            history.on_envelope(env)
    return n


# ----------------------------------------------------------------------------------------- output
def _when(ms: int | None) -> str:
    """Local date and time (this machine's zone, named), as a technician reads a clock."""
    if ms is None:
        return _("never")
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _period(s: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


def render(rows: list[dict[str, Any]], villages: list[dict[str, Any]], since_s: float, as_json: bool,
           out: TextIO) -> None:
    if as_json:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
        for v in villages:
            out.write(json.dumps({**v, "since_s": since_s}, ensure_ascii=False) + "\n")
        return
    # headings in the chosen language, padded by display width (a Chinese character takes two columns)
    pad, cw = i18n.pad, i18n.width
    head = (_("BOX"), _("STATE"), _("LAST SEEN"), _("BACKLOG"), _("CAMERAS"))
    states = [r["state"] if i18n.current() == "en" else words.state(r["state"]) for r in rows]
    w = max([cw(head[0]), *(cw(r["box"]) for r in rows)])
    sw = max([8, cw(head[1]), *(cw(x) for x in states)])
    out.write(f"{pad(head[0], w + 2)}{pad(head[1], sw + 2)}{pad(head[2], 26)}{head[3]:>7}  {head[4]}\n")
    for r, st in zip(rows, states, strict=True):
        bl = "-" if r["backlog"] is None else str(r["backlog"])
        out.write(f"{pad(r['box'], w + 2)}{pad(st, sw + 2)}{pad(_when(r['last_seen']), 26)}{bl:>7}  "
                  f"{r['cameras_online']}/{r['cameras_total']}\n")
    vhead = (_("VILLAGE"), _("BOXES"), _("ONLINE RATE {period}").format(period=_period(since_s)), _("OBSERVED"))
    vw = max([cw(vhead[0]), *(cw(v["village"]) for v in villages)])
    out.write(f"\n{pad(vhead[0], vw + 2)}{vhead[1]:>5}  {vhead[2]:>16}  {vhead[3]}\n")
    for v in villages:
        out.write(f"{pad(v['village'], vw + 2)}{v['boxes']:>5}  {_pct(v['online_rate']):>16}  "
                  f"{_pct(v['observed'])}\n")


async def run_status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The `village county status` command (county/cli.py runs it with asyncio.run)."""
    return await asyncio.to_thread(status_main, args, out or sys.stdout)


def status_main(args: argparse.Namespace, out: TextIO, stop: threading.Event | None = None) -> int:
    """Blocking body: collect from the broker, update the history, print. 0 done, 1 broker/history error.

    `stop` ends the listening window early (a caller that embeds the command, and the tests)."""
    try:
        spec = BrokerSpec.parse(args.broker, ca=getattr(args, "ca", None), cert=getattr(args, "cert", None),
                                client_key=getattr(args, "client_key", None))
        overrides: dict[str, str] = {}
        if getattr(args, "villages", None):
            try:
                overrides = {str(k): str(v) for k, v in json.loads(Path(args.villages).read_text()).items()}
            except (OSError, ValueError, AttributeError) as exc:
                raise ConsoleError(f"--villages {args.villages}: {exc}") from None
        db = args.db or default_db()
        topics = Topics(getattr(args, "prefix", DEFAULT_PREFIX))
        items = collect(spec, topics, client_id(spec, db), args.listen, stop)
        history = History(db)
        try:
            ingest(history, topics, items)
            history.db.commit()
            rows = history.rows()
            villages = history.villages(args.since, int(time.time() * 1000), overrides)
        finally:
            history.close()
    except ConsoleError as exc:
        print(f"village county status: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print("village county status: " + _("history {file}: {error}").format(file=args.db or default_db(), error=exc),
              file=sys.stderr)
        return 1
    render(rows, villages, args.since, args.json, out)
    return 0
