"""What the engine schedules: broadcast items, the `repeat` rule, quiet hours, and parsing command data.

All pure: no I/O, no clock reads; times are epoch seconds passed in. docs/broadcast.md has the rules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from agent.broadcast.settings import hhmm
from agent.protocol.text import quoted, scrub, scrub_json

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_TITLE_CHARS = 200
_CMD_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")  # a command id (agent.commands.ID_RE)


class BroadcastError(Exception):
    """Base of the broadcast feature's errors."""


class BadBroadcast(BroadcastError):
    """Command data the box will not act on. `reason` is the receipt's reason word, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Klass(StrEnum):
    EMERGENCY = "emergency"
    DRILL = "drill"
    DAILY = "daily"


# among items due at once: emergencies, then drills, then daily; only an emergency preempts
RANK = {Klass.EMERGENCY: 0, Klass.DRILL: 1, Klass.DAILY: 2}


@dataclass(frozen=True, slots=True)
class Repeat:
    """Recurring schedule: on `days` at local `at` in `tz`, between `start_date` and `until` (inclusive)."""

    days: tuple[int, ...]  # 0 = Monday
    at: str  # "HH:MM" local
    tz: str
    start_date: date | None = None
    until: date | None = None
    window_s: float | None = None  # how late an occurrence may start; None = the config's late_window_s

    def next_after(self, t: float) -> float | None:
        """The first occurrence strictly after epoch `t`, or None when the series is over."""
        zone = zoneinfo.ZoneInfo(self.tz)
        h, m = hhmm(self.at)
        d = datetime.fromtimestamp(max(t, 0.0), zone).date()
        if self.start_date is not None and d < self.start_date:
            d = self.start_date
        for _ in range(9):  # any weekday set repeats within a week; one more day for the "after t" edge
            if self.until is not None and d > self.until:
                return None
            if d.weekday() in self.days:
                occ = datetime.combine(d, time(h, m), tzinfo=zone).timestamp()
                if occ > t:
                    return occ
            d += timedelta(days=1)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"days": [DAYS[d] for d in self.days], "at": self.at, "tz": self.tz,
                "from": self.start_date.isoformat() if self.start_date else None,
                "until": self.until.isoformat() if self.until else None, "window_s": self.window_s}


class QuietHours:
    def __init__(self, start: str, end: str, tz: str) -> None:
        self.start, self.end = hhmm(start), hhmm(end)
        self.zone = zoneinfo.ZoneInfo(tz)

    def until(self, now: float) -> float | None:
        """When quiet hours end, if `now` is inside them; else None."""
        local = datetime.fromtimestamp(now, self.zone)
        t = local.hour * 60 + local.minute
        s, e = self.start[0] * 60 + self.start[1], self.end[0] * 60 + self.end[1]
        inside = s <= t < e if s < e else (t >= s or t < e)
        if not inside:
            return None
        end_day = local.date() if t < e else local.date() + timedelta(days=1)
        return datetime.combine(end_day, time(*self.end), tzinfo=self.zone).timestamp()


@dataclass(slots=True)
class Item:
    """One broadcast.play command as the engine keeps it (and as it is stored, as JSON)."""

    id: str
    cls: Klass
    level: int
    title: str
    text: str
    media: str | None  # file name in the audio directory (recorded or TTS), set by the service
    mime: str | None
    volume: int | None
    start: float | None  # epoch s; None = as soon as possible
    end: float | None
    repeat: Repeat | None
    seq: int  # arrival order, for FIFO
    received: float  # wall clock at arrival (reset at the first synced step if it was before sync)
    preempted: bool = False  # was cut off by an emergency and waits to be played again from the start
    held: float | None = None  # the start (occurrence) for which a quiet-hours hold was reported
    done_until: float = -math.inf  # recurring: occurrences at or before this are done
    extra: dict[str, Any] = field(default_factory=dict)

    def order(self) -> tuple[int, int, int]:
        return (RANK[self.cls], self.level, self.seq)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["cls"] = self.cls.value
        d["repeat"] = self.repeat.to_json() if self.repeat else None
        d["done_until"] = None if math.isinf(self.done_until) else self.done_until
        try:
            return json.dumps(d, ensure_ascii=False).encode().decode()  # the store needs text UTF-8 can hold
        except (ValueError, TypeError):  # a lone surrogate (UnicodeEncodeError), odd extra: never a crash
            return json.dumps(scrub_json(d), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Item:
        d = json.loads(text)
        d["cls"] = Klass(d["cls"])
        d["repeat"] = parse_repeat(d["repeat"], d["repeat"]["tz"]) if d["repeat"] else None
        d["done_until"] = -math.inf if d["done_until"] is None else d["done_until"]
        return cls(**d)


@dataclass(frozen=True, slots=True)
class PlayRequest:
    """A validated `broadcast.play` data object (before audio is decoded or text spoken)."""

    cls: Klass
    level: int
    title: str
    text: str
    audio: dict[str, Any] | None
    start: float | None
    end: float | None
    volume: int | None
    repeat: Repeat | None


def _number(data: dict[str, Any], key: str) -> float | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise BadBroadcast("bad_data", f"{key} must be epoch seconds or null")
    return float(v)


def _date(v: Any, key: str) -> date | None:
    if v is None:
        return None
    try:
        return date.fromisoformat(v)
    except (TypeError, ValueError):
        raise BadBroadcast("bad_repeat", f"repeat.{key} must be a date YYYY-MM-DD") from None


def parse_repeat(raw: Any, default_tz: str) -> Repeat:
    """The `repeat` field (our extension of contract section 5; see docs/broadcast.md)."""
    if not isinstance(raw, dict):
        raise BadBroadcast("bad_repeat", "repeat must be an object")
    unknown = set(raw) - {"days", "at", "from", "until", "tz", "window_s"}
    if unknown:
        raise BadBroadcast("bad_repeat", f"unknown repeat keys {sorted(unknown)}")
    days = raw.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise BadBroadcast("bad_repeat", f"repeat.days must be a non-empty list of {', '.join(DAYS)}")
    at = raw.get("at")
    try:
        if not isinstance(at, str):
            raise TypeError(at)
        hhmm(at)
    except (TypeError, ValueError):
        raise BadBroadcast("bad_repeat", "repeat.at must be a local time HH:MM") from None
    tz = raw.get("tz") or default_tz
    try:
        if not isinstance(tz, str):
            raise TypeError(tz)
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise BadBroadcast("bad_repeat", f"unknown time zone {quoted(tz, 40)}") from None
    start_date, until = _date(raw.get("from"), "from"), _date(raw.get("until"), "until")
    if start_date and until and until < start_date:
        raise BadBroadcast("bad_repeat", "repeat.until is before repeat.from")
    window = raw.get("window_s")
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0):
        raise BadBroadcast("bad_repeat", "repeat.window_s must be a positive number")
    return Repeat(tuple(sorted({DAYS.index(d) for d in days})), at, tz, start_date, until,
                  float(window) if window is not None else None)


def parse_class_level(data: dict[str, Any]) -> tuple[Klass, int]:
    """A broadcast's `class` and `level` (default 3), or BadBroadcast('bad_data', why): play and live alike."""
    try:
        cls = Klass(str(data.get("class")))
    except ValueError:
        raise BadBroadcast("bad_data", "class must be emergency, daily or drill") from None
    level = data.get("level", 3)
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 4:
        raise BadBroadcast("bad_data", "level must be 1..4")
    return cls, level


def parse_play(data: Any, *, default_tz: str, max_text_chars: int) -> PlayRequest:
    if not isinstance(data, dict):
        raise BadBroadcast("bad_data", "data must be an object")
    cls, level = parse_class_level(data)
    title, text = data.get("title") or "", data.get("text") or ""
    if not isinstance(title, str) or not isinstance(text, str):
        raise BadBroadcast("bad_data", "title and text must be strings")
    title, text = scrub(title), scrub(text)  # a lone surrogate ("\ud800" in JSON) would break the store and TTS
    if len(text) > max_text_chars or len(title) > MAX_TITLE_CHARS:
        raise BadBroadcast("text_too_long", f"text is limited to {max_text_chars} characters")
    audio = data.get("audio")
    if audio is not None and (not isinstance(audio, dict) or not {"mime", "sha256", "b64"} <= set(audio)):
        raise BadBroadcast("bad_audio", "audio must be an object with mime, sha256 and b64")
    if audio is None and not text.strip():
        raise BadBroadcast("bad_data", "nothing to play: no audio and no text")
    start, end = _number(data, "start"), _number(data, "end")
    if start is not None and end is not None and end <= start:
        raise BadBroadcast("bad_data", "end must be after start")
    volume = data.get("volume")
    if volume is not None and (isinstance(volume, bool) or not isinstance(volume, int) or not 0 <= volume <= 100):
        raise BadBroadcast("bad_data", "volume must be 0..100 or null")
    repeat = None
    if data.get("repeat") is not None:
        if cls is Klass.EMERGENCY:
            raise BadBroadcast("bad_repeat", "an emergency does not repeat")
        repeat = parse_repeat(data["repeat"], default_tz)
    return PlayRequest(cls, level, title, text, audio, start, end, volume, repeat)


def parse_cancel(data: Any) -> str | None:
    """`broadcast.cancel` data -> the broadcast id, or None for `all: true`."""
    if not isinstance(data, dict):
        raise BadBroadcast("bad_data", "data must be an object")
    if data.get("all") is True:
        return None
    target = data.get("broadcast")
    if not isinstance(target, str) or not _CMD_ID.fullmatch(target):  # it is echoed in the receipt
        raise BadBroadcast("bad_data", "needs broadcast (a command id: 1-128 printable ASCII) or all: true")
    return target
