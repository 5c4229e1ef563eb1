"""What the 4G link costs: bytes sent and received per UTC day and month, and the monthly budget (issue 14).

The counts are the kernel's own for the link's TCP socket (Linux `TCP_INFO`: bytes acknowledged by the peer,
bytes received, segments each way), so TLS records, MQTT framing, PINGs and pure ACKs are all in. IP bytes are
estimated as TCP payload + segments x (IP + TCP header with timestamps: 52 bytes on IPv4, 72 on IPv6); a 4G
operator counts about that. Where TCP_INFO is missing (not Linux), `measured` is false and the counts stay 0.

`Usage` lives beside the outbox as `usage.json` (written at most once a minute and when a connection ends,
without fsync: it is accounting, not data), so a reboot does not start the month again. The heartbeat
(`usage`) and `village agent status` report it. With `[uplink] monthly_budget_mb` set, once the month's bytes
reach `thin_at` of it the link thins telemetry: per kind and subject (wearer, camera, device) at most one
envelope per `thin_interval_s`; alarms, receipts, events and commands are never thinned. Thinned rows are
deleted from the outbox unsent and counted (`thinned.telemetry` in the outbox counters, `thinned_month` here).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.fsutil import write_atomic

log = logging.getLogger("agent.link")

SAVE_EVERY_S = 60.0
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_INFO_LEN = 144  # through tcpi_segs_in (Linux >= 4.2)
_HDR = {socket.AF_INET: 52, socket.AF_INET6: 72}
_registry: dict[Path, Usage] = {}


def tcp_counts(sock: Any) -> tuple[int, int] | None:
    """(IP bytes out, IP bytes in) of a connected TCP socket so far, from TCP_INFO; None if not available."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 232)
        family = sock.family
    except (OSError, ValueError, AttributeError):
        return None
    if len(raw) < _INFO_LEN:
        return None
    acked, received = struct.unpack_from("=QQ", raw, 120)  # tcpi_bytes_acked, tcpi_bytes_received
    segs_out, segs_in = struct.unpack_from("=II", raw, 136)
    hdr = _HDR.get(family, 52)
    return acked + segs_out * hdr, received + segs_in * hdr


class SocketMeter:
    """One connection's socket: each `sample` adds what moved since the last one to the Usage. Thread-safe
    (paho's thread samples at socket close, the event loop on its own schedule)."""

    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self._lock = threading.Lock()
        self._last = (0, 0)
        self.sent = self.received = 0  # this connection's totals

    def sample(self, sock: Any) -> None:
        counts = tcp_counts(sock) if sock is not None else None
        if counts is None:
            return
        with self._lock:
            out, inn = counts
            d_out, d_in = max(0, out - self._last[0]), max(0, inn - self._last[1])
            self._last = (max(out, self._last[0]), max(inn, self._last[1]))
            self.sent += d_out
            self.received += d_in
        self.usage.add(d_out, d_in, measured=True)


class Usage:
    def __init__(self, path: Path, clock: Clock, *, budget_bytes: int = 0, thin_at: float = 0.8) -> None:
        self.path = path
        self.clock = clock
        self.budget_bytes = budget_bytes
        self.thin_at = thin_at
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # paho's thread and the event loop both save: one writer at a time
        self._saved_at = float("-inf")
        self._announced = False
        self.d: dict[str, Any] = {"day": "", "month": "", "sent_day": 0, "received_day": 0, "sent_month": 0,
                                  "received_month": 0, "thinned_month": 0, "measured": False}
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict):
                for k, v in self.d.items():
                    if isinstance(old.get(k), type(v)):
                        self.d[k] = old[k]
        except (OSError, ValueError):
            pass
        self._roll()

    @classmethod
    def beside(cls, outbox_path: Path, clock: Clock, **kw: Any) -> Usage:
        """The Usage of the outbox at `outbox_path` (usage.json beside it), registered for the heartbeat."""
        usage = cls(outbox_path.parent / "usage.json", clock, **kw)
        _registry[outbox_path.parent] = usage
        return usage

    def _roll(self) -> None:
        now = dt.datetime.fromtimestamp(self.clock.time(), dt.UTC)
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        if self.d["month"] != month:
            self.d.update(month=month, sent_month=0, received_month=0, thinned_month=0)
            self._announced = False
        if self.d["day"] != day:
            self.d.update(day=day, sent_day=0, received_day=0)

    def add(self, sent: int, received: int, *, measured: bool = False) -> None:
        with self._lock:
            self._roll()
            self.d["sent_day"] += sent
            self.d["received_day"] += received
            self.d["sent_month"] += sent
            self.d["received_month"] += received
            self.d["measured"] = self.d["measured"] or measured
        self.save()

    def add_thinned(self, n: int = 1) -> None:
        with self._lock:
            self.d["thinned_month"] += n

    @property
    def month_bytes(self) -> int:
        return int(self.d["sent_month"] + self.d["received_month"])

    @property
    def thinning(self) -> bool:
        """The month's bytes have reached `thin_at` of the budget: telemetry is thinned."""
        if self.budget_bytes <= 0:
            return False
        with self._lock:
            self._roll()
        on = self.month_bytes >= self.thin_at * self.budget_bytes
        if on and not self._announced:
            self._announced = True
            log.warning("link: %.1f MB of the month's %.1f MB 4G budget used: thinning telemetry (alarms, "
                        "receipts, events and commands are not thinned)", self.month_bytes / 1e6,
                        self.budget_bytes / 1e6)
        return on

    def report(self) -> dict[str, Any]:
        thinning = self.thinning
        with self._lock:
            out = dict(self.d)
        out["budget_month"] = self.budget_bytes or None
        out["thinning"] = thinning
        return out

    def save(self, *, force: bool = False) -> None:
        with self._save_lock:
            now = self.clock.monotonic()
            if not force and now - self._saved_at < SAVE_EVERY_S:
                return
            self._saved_at = now
            with self._lock:
                data = json.dumps(self.d, sort_keys=True).encode()
            try:
                write_atomic(self.path, data, durable=False)
            except OSError as exc:  # accounting must not take the link down
                log.warning("link: cannot write %s: %s", self.path, exc)


def usage_beside(outbox_path: Path) -> Usage | None:
    """The running link's Usage for this outbox (the heartbeat's view), or None."""
    return _registry.get(outbox_path.parent)


def read_usage(outbox_path: Path) -> dict[str, Any]:
    """usage.json as last saved (for `village agent status`, another process)."""
    try:
        data = json.loads((outbox_path.parent / "usage.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
