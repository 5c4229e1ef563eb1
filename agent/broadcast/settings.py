"""`[broadcast]` config section (owned by the broadcast feature). docs/broadcast.md explains each key."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field

from agent.i18n import N_
from agent.schema import non_negative, percent, positive

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])\Z")  # \Z: "$" also matches before a final "\n"


def hhmm(value: str) -> tuple[int, int]:
    m = _HHMM.match(value)
    if m is None:
        raise ValueError(N_("{value!r} is not a local time HH:MM", value=value))
    return int(m.group(1)), int(m.group(2))


def _quiet_hours(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(value) not in (0, 2):
        raise ValueError(N_('expected ["HH:MM", "HH:MM"] (start, end) or [] for none'))
    for v in value:
        hhmm(v)
    if len(value) == 2 and value[0] == value[1]:
        raise ValueError(N_("start and end are the same time"))
    return value


def timezone_name(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(N_("unknown time zone {value!r}", value=value)) from None
    return value


@dataclass(frozen=True, slots=True)
class BroadcastConfig:
    # quiet hours as local "HH:MM" start and end (may wrap midnight); empty = none. Hold back daily and drill.
    quiet_hours: tuple[str, ...] = field(default=(), metadata={"check": _quiet_hours})
    timezone: str = field(default="Asia/Shanghai", metadata={"check": timezone_name})
    # volume, percent: a daily/drill command's `volume` (or default_volume) is capped at max_volume;
    # emergencies always play at emergency_volume. A drill never reaches emergency_volume.
    default_volume: int = field(default=70, metadata={"check": percent})
    max_volume: int = field(default=80, metadata={"check": percent})
    emergency_volume: int = field(default=100, metadata={"check": percent})
    # the playback chain: relay on -> warmup_s -> chime -> content -> tail_s -> relay off after off_delay_s
    warmup_s: float = field(default=1.5, metadata={"check": non_negative})
    tail_s: float = field(default=0.5, metadata={"check": non_negative})
    off_delay_s: float = field(default=10.0, metadata={"check": non_negative})
    chime: str = "builtin"  # "builtin" (a ding-dong), "" for none, or a path to a WAV file
    # safety: no single play runs longer than this; the player is killed and the item `failed`
    max_play_s: float = field(default=900.0, metadata={"check": positive})
    # a hung player is killed this long after the media's own duration * 1.5
    hang_slack_s: float = field(default=10.0, metadata={"check": non_negative})
    max_audio_bytes: int = field(default=8 * 1024 * 1024, metadata={"check": positive})
    max_text_chars: int = field(default=2000, metadata={"check": positive})
    # how late an item without `end` (and each occurrence of a repeat) may still start; later = `expired`
    late_window_s: float = field(default=600.0, metadata={"check": positive})
    tts_voice: str = "cmn"  # espeak-ng voice
    drill_marker: str = "演习。现在进行的是演习。"  # spoken before and after every drill
    db_file: str = "broadcast.db"  # in box.state_dir
    # live broadcast (docs/live-broadcast.md): a session with no valid audio packet for this long ends
    live_silence_s: float = field(default=5.0, metadata={"check": positive})
    # the live jitter buffer's delay adapts between these (seconds)
    live_jitter_min_s: float = field(default=0.2, metadata={"check": positive})
    live_jitter_max_s: float = field(default=0.5, metadata={"check": positive})

    def __post_init__(self) -> None:
        if self.max_volume > self.emergency_volume:
            raise ValueError(N_("max_volume must not exceed emergency_volume"))
        if self.default_volume > self.max_volume:
            raise ValueError(N_("default_volume must not exceed max_volume"))
        if self.live_jitter_min_s > self.live_jitter_max_s:
            raise ValueError(N_("live_jitter_min_s must not exceed live_jitter_max_s"))
