"""`village agent status -c FILE`: what the agent is doing, read from its state directory.

It never talks to the running process (no socket, no signal): a hung or stopped agent is exactly when a
technician needs this. Sources, all written by the agent itself:
- `outbox.db` (agent.outbox, schema in agent/outbox_schema.py), opened read-only: depth, bytes and
  oldest `ts` per class, the last seq assigned (sqlite_sequence), the drop counters;
- `outbox.db.seq`: the reserved seq high-water mark;
- `link.json` (agent.linkstate): link state, broker, since when, last publish (written on every state
  edge, the publish time at most once a minute);
- the clock verdict (agent.clocksanity) of this machine now.
Exit 0 when the state directory could be read (even if the agent never ran), 1 when it cannot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import i18n, words
from agent.clocksanity import check_now
from agent.config import Config, redact_url
from agent.i18n import _, pad
from agent.linkstate import LinkStateFile
from agent.protocol.envelope import MsgClass
from agent.uplink_usage import read_usage

EXIT_OK = 0
EXIT_UNREADABLE = 1


class StatusError(Exception):
    """The state directory or the outbox cannot be read."""


@dataclass(frozen=True, slots=True)
class OutboxView:
    present: bool
    depth: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    oldest_ts_ms: dict[str, int | None] = field(default_factory=dict)
    last_seq: int | None = None
    seq_reserved_to: int | None = None
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkView:
    present: bool
    state: str | None = None
    broker: str | None = None
    since_ts: float | None = None
    last_publish_ts: float | None = None


@dataclass(frozen=True, slots=True)
class Status:
    box: str
    state_dir: str
    now: float
    outbox: OutboxView
    link: LinkView
    clock: dict[str, Any]
    usage: dict[str, Any] | None = None  # the link's 4G bytes (usage.json, issue 14); None before it ran


@contextlib.contextmanager
def _as_owner(path: Path) -> Iterator[None]:
    """Run as the database's owner while opening it, when we are root and it is not ours.

    SQLite may create `-shm`/`-wal` beside a WAL database even for a read-only connection; made by
    root they would lock the agent (user `village`) out of its own outbox at its next start.
    """
    st = path.stat()
    if os.geteuid() != 0 or st.st_uid == 0:
        yield
        return
    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _open_read_only(path: Path) -> sqlite3.Connection:
    wal = path.with_name(path.name + "-wal")
    if not wal.exists():
        # the agent is stopped (a clean close removes the WAL): the main file is everything, and
        # immutable=1 reads it without creating or locking anything
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    with _as_owner(path):  # the agent is running or crashed: read through its WAL, as its user
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the WAL index now
    return db


def read_outbox(path: Path) -> OutboxView:
    if not path.exists():
        return OutboxView(present=False)
    hwm_path = path.with_name(path.name + ".seq")
    try:
        hwm: int | None = int(hwm_path.read_text().strip())
    except (OSError, ValueError):
        hwm = None
    try:
        db = _open_read_only(path)
    except (sqlite3.Error, OSError) as exc:
        raise StatusError(_("{file}: cannot open read-only: {error}").format(file=path, error=exc)) from None
    try:
        depth = {c.wire: 0 for c in MsgClass}
        oldest: dict[str, int | None] = {c.wire: None for c in MsgClass}
        size = 0
        for cls, n, nbytes, first_ts in db.execute(
                "SELECT cls, count(*), coalesce(sum(length(body)), 0), min(ts) FROM outbox GROUP BY cls"):
            wire = MsgClass(cls).wire
            depth[wire], oldest[wire] = n, first_ts
            size += nbytes
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    except (sqlite3.Error, ValueError) as exc:
        raise StatusError(_("{file}: cannot read: {error}").format(file=path, error=exc)) from None
    finally:
        db.close()
    return OutboxView(True, depth, size, oldest, row[0] if row else None, hwm, counters)


def read_link(path: Path) -> LinkView:
    data = LinkStateFile.read(path)
    if not data:
        return LinkView(present=False)

    def num(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) else None

    broker = data.get("broker")
    return LinkView(True, str(data.get("state")), redact_url(broker) if isinstance(broker, str) else None,
                    num("ts"), num("last_publish_ts"))


def collect(config: Config, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    state_dir = config.box.state_dir
    if not state_dir.is_dir():
        raise StatusError(_("{dir}: state directory does not exist (has the agent ever run?)").format(dir=state_dir))
    verdict = check_now(now)
    return Status(config.box.id, str(state_dir), now, read_outbox(config.outbox_path),
                  read_link(state_dir / "link.json"), asdict(verdict), read_usage(config.outbox_path) or None)


def _ago(now: float, ts: float | None) -> str:
    """Local date and time (the box's zone), and how long ago."""
    if ts is None:
        return _("never")
    stamp = dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    delta = now - ts
    if delta < 0:
        return _("{stamp} (in the future: clock stepped back?)").format(stamp=stamp)
    for unit, size in ((_("d"), 86400), (_("h"), 3600), (_("min"), 60)):
        if delta >= size:
            return _("{stamp} ({n:.1f} {unit} ago)").format(stamp=stamp, n=delta / size, unit=unit)
    return _("{stamp} ({n:.0f} s ago)").format(stamp=stamp, n=delta)


def render(status: Status) -> str:
    def row(label: str, value: str) -> str:  # labels padded by display width: Chinese is two columns a character
        return f"{pad(label, 11)}{value}"

    lines = [row(_("box"), status.box), row(_("state dir"), status.state_dir)]
    link = status.link
    if link.present:
        lines.append(row(_("link"), _("{state} {broker} since {when}").format(
            state=words.state(link.state), broker=link.broker or "", when=_ago(status.now, link.since_ts))))
        lines.append(row(_("published"), _("{when} (updated at most once a minute)").format(
            when=_ago(status.now, link.last_publish_ts))))
    else:
        lines.append(row(_("link"), _("no link.json yet (the link has not run)")))
    out = status.outbox
    if out.present:
        lines.append(row(_("seq"), _("last {last}, reserved to {reserved}").format(
            last=out.last_seq if out.last_seq is not None else "-",
            reserved=out.seq_reserved_to if out.seq_reserved_to is not None else "-")))
        lines.append(row(_("outbox"), _("{n} messages, {bytes} bytes").format(n=sum(out.depth.values()),
                                                                              bytes=out.bytes)))
        for cls in MsgClass:
            oldest = out.oldest_ts_ms.get(cls.wire)
            age = _ago(status.now, oldest / 1000) if oldest is not None else "-"
            name = cls.wire if i18n.current() == "en" else words.cls(cls.wire)  # English keeps the class codes
            lines.append(f"  {pad(name, 10)} {out.depth.get(cls.wire, 0):>8}   " + _("oldest {age}").format(age=age))
        if out.counters:
            lines.append("  " + row(_("dropped"), ", ".join(f"{k}={v}" for k, v in sorted(out.counters.items()))))
    else:
        lines.append(row(_("outbox"), _("no outbox.db yet")))
    if status.usage:
        lines.append(usage_line(status.usage))
    clock = status.clock
    verdict = _("ok") if clock["plausible"] and clock["synchronised"] else _("WARNING")
    lines.append(row(_("clock"), _("{what}: {value}").format(what=verdict, value=words.problem(clock["reason"]))))
    return "\n".join(lines)


def usage_line(u: dict[str, Any]) -> str:
    """4G bytes (sent + received, IP) this UTC day and month, and the budget: as of usage.json's last write."""
    def mb(key: str, key2: str) -> str:
        return f"{(int(u.get(key) or 0) + int(u.get(key2) or 0)) / 1e6:.2f} MB"

    line = pad(_("4G data"), 11) + _("day {day}: {day_mb}, month {month}: {month_mb}").format(
        day=u.get("day", "?"), day_mb=mb("sent_day", "received_day"), month=u.get("month", "?"),
        month_mb=mb("sent_month", "received_month"))
    if not u.get("measured"):
        line += _(" (not measured: no TCP_INFO here)")
    if u.get("thinned_month"):
        line += _(", {n} telemetry thinned").format(n=u["thinned_month"])
    return line + _(" (updated at most once a minute)")


def main(config: Config, *, as_json: bool = False) -> int:
    """Called by agent.cli for `village agent status -c FILE [--json]` with the loaded config."""
    try:
        status = collect(config)
    except StatusError as exc:
        print(f"village agent status: {words.problem(str(exc))}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(json.dumps(asdict(status), indent=2, sort_keys=True) if as_json else render(status))
    return EXIT_OK
