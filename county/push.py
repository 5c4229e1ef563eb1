"""Building signed commands from console arguments: times, inline audio, targets, the command envelope.

Pure functions over an explicit `now` (and the county's timezone), so tests give exact inputs; the CLI glues
them to the broker. `UsageError` is an option value that is wrong as given (exit 2); `PushError` the rest (1).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.i18n import N_
from agent.protocol import jws
from agent.protocol.commands import COMMAND_VERSION
from agent.protocol.topics import BOX_ID_RE, Topics

# The box refuses a command whose exp - iat is over 31 days (agent.commands.MAX_LIFETIME_S); same figure here
# so the console says so before publishing instead of every box saying `malformed`.
MAX_TTL_S = 31 * 86400
DEFAULT_TTL_S = 86400
# Raw audio carried inline in the signed command; base64 twice (data, then JWS) makes it ~1.8x on the wire,
# which keeps a command under jws.MAX_TOKEN_BYTES.
MAX_AUDIO_BYTES = 2 * 1024 * 1024
AUDIO_MIME = {".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/opus",
              ".wav": "audio/wav"}
DURATION_RE = re.compile(r"^\+?(\d+(?:\.\d+)?)([smhd]?)\Z")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The county's timezone: what a time without an offset means (`--tz`, else $VILLAGE_TZ, else this), the same
# default as the box's `[broadcast] timezone` and the county server's `[county] timezone`.
DEFAULT_TZ = "Asia/Shanghai"
TZ_ENV = "VILLAGE_TZ"


class PushError(ValueError):
    """Console input that cannot become a command; `str()` is the line shown (exit 1)."""


class UsageError(PushError):
    """An option value that is wrong as given (a time, a range, a combination); exit 2, like argparse's."""


def zone(name: str | None = None) -> ZoneInfo:
    """The county's timezone: `name`, else $VILLAGE_TZ, else Asia/Shanghai (never the console machine's)."""
    name = name or os.environ.get(TZ_ENV) or DEFAULT_TZ
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(N_("unknown time zone {name!r} (an IANA name such as Asia/Shanghai)", name=name)) from None


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `2h`, `1d` (an optional leading `+`, as in `--at +30m`) -> seconds."""
    m = DURATION_RE.match(text.strip())
    if not m:
        raise UsageError(N_("{text!r} is not a duration: N[smhd], e.g. 90s, 30m, 2h, 1d", text=text))
    return float(m.group(1)) * UNIT_S[m.group(2)]


def parse_time(text: str, now: float, tz: dt.tzinfo | None = None) -> int:
    """ISO 8601, `now`, or relative `+30s/+5m/+2h/+1d` -> epoch s.

    A time without an offset is read in `tz`, the county's timezone (default `zone()`): on a console
    machine set to UTC, `2026-12-01T18:00` is still 18:00 in the villages.
    """
    text = text.strip()
    if text == "now":
        return int(now)
    if text.startswith("+"):
        return int(now + parse_duration(text))
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(N_("{text!r} is not an ISO 8601 time, 'now' or +N[smhd]", text=text)) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz if tz is not None else zone())
    return int(t.timestamp())


def describe_time(ts: float, tz: dt.tzinfo) -> str:
    """`2026-12-01 18:00:00 CST (Asia/Shanghai) = 2026-12-01 10:00:00 UTC`: what a resolved time means."""
    local = dt.datetime.fromtimestamp(ts, tz)
    utc = dt.datetime.fromtimestamp(ts, dt.UTC)
    name = getattr(tz, "key", None) or str(tz)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({name}) = {utc:%Y-%m-%d %H:%M:%S} UTC"


def describe_span(seconds: float) -> str:
    """`3 h 20 min`, `45 s`: a rough length for messages."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def parse_target(text: str) -> str:
    scope, _, name = text.partition(":")
    if scope not in ("box", "group") or not BOX_ID_RE.fullmatch(name):
        raise UsageError(N_("target {text!r} is not box:ID or group:NAME ([A-Za-z0-9_-]{{1,64}})", text=text))
    return f"{scope}:{name}"


def target_topic(target: str, topics: Topics) -> str:
    scope, name = target.split(":", 1)
    return topics.box_cmd(name) if scope == "box" else topics.group_cmd(name)


def audio_data(path: Path) -> dict[str, Any]:
    """`{"mime", "sha256", "b64"}` for a local audio file; mime from the extension."""
    mime = AUDIO_MIME.get(path.suffix.lower())
    if mime is None:
        raise PushError(N_("{path}: unknown audio type {suffix!r} (mp3, ogg, opus or wav)",
                           path=path, suffix=path.suffix))
    try:
        size = path.stat().st_size
        if size > MAX_AUDIO_BYTES:
            raise PushError(N_("{path}: {size} bytes is over the {max_audio_bytes} byte limit for inline audio",
                               path=path, size=size, max_audio_bytes=MAX_AUDIO_BYTES))
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PushError(N_("{path}: file does not exist", path=path)) from None
    except OSError as exc:
        raise PushError(N_("{path}: cannot read: {strerror}", path=path, strerror=exc.strerror)) from None
    if not raw:
        raise PushError(N_("{path}: file is empty", path=path))
    return {"mime": mime, "sha256": hashlib.sha256(raw).hexdigest(), "b64": base64.b64encode(raw).decode("ascii")}


def play_data(*, cls: str, level: int | None, title: str | None, text: str | None, audio: dict[str, Any] | None,
              start: int | None, end: int | None, volume: int | None) -> dict[str, Any]:
    if cls not in ("emergency", "daily", "drill"):
        raise UsageError(N_("class {cls!r} is not emergency, daily or drill", cls=cls))
    if level is None:
        level = 1 if cls == "emergency" else 3
    if not 1 <= level <= 4:
        raise UsageError(N_("level {level} is not 1-4", level=level))
    if volume is not None and not 0 <= volume <= 100:
        raise UsageError(N_("volume {volume} is not 0-100", volume=volume))
    if not text and audio is None:
        raise UsageError(N_("nothing to say: give --text, --audio or --cap"))
    if start is not None and end is not None and end <= start:
        raise UsageError(N_("--until must be after --at"))
    if title is None:
        title = (text or "").split("\n", 1)[0][:40] or "audio"
    return {"class": cls, "level": level, "title": title, "text": text or "", "audio": audio,
            "start": start, "end": end, "volume": volume}


def command(kind: str, data: dict[str, Any], targets: list[str], *, now: float, ttl_s: int = DEFAULT_TTL_S,
            cmd_id: str | None = None) -> dict[str, Any]:
    """The command payload (contract section 5)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise UsageError(N_("--ttl {ttl_s} s is not 1 s..31 d ({max_ttl_s} s)", ttl_s=ttl_s, max_ttl_s=MAX_TTL_S))
    if not targets:
        raise UsageError(N_("no target: give --to box:ID or --to group:NAME"))
    if cmd_id is not None and not re.fullmatch(r"[\x21-\x7e]{1,128}", cmd_id):
        raise UsageError(N_("--id must be 1-128 printable ASCII characters without spaces"))
    iat = int(now)
    return {"v": COMMAND_VERSION, "id": cmd_id or str(uuid.uuid4()), "kind": kind, "iat": iat, "exp": iat + ttl_s,
            "to": list(dict.fromkeys(targets)), "data": data}


def sign(payload: dict[str, Any], key: Ed25519PrivateKey, kid: str) -> bytes:
    try:
        return jws.sign(payload, key, kid).encode("ascii")
    except ValueError as exc:
        raise PushError(str(exc)) from None
