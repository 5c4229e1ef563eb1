"""The one table of codes a person sees in words: reasons, receipt and camera states, alarm and event kinds.

`reason("bad_signature")` -> "签名无效 (bad_signature)" in Chinese, "bad signature (bad_signature)" in
English: the words first, the code beside them (it is what the logs, the JSON and docs/zh/现场排查.md use).
An unknown code is shown as itself. Every code the agent, the county and the simulator emit is listed
here; docs/zh/现场排查.md explains each (tests/test_i18n_docs.py checks the doc names them all).
"""

from __future__ import annotations

import errno
import os
import re

from agent import i18n
from agent.i18n import N_, _

# why a command was rejected, a broadcast did not play, a camera is degraded/offline/unknown, a fence failed
REASONS: dict[str, str] = {
    # command checks (agent/commands.py, agent/protocol/jws.py)
    "bad_signature": N_("bad signature"),
    "unknown_kid": N_("unknown signing key"),
    "alg_not_allowed": N_("signature algorithm not allowed"),
    "malformed": N_("malformed command"),
    "too_large": N_("too large"),
    "expired": N_("expired"),
    "not_yet_valid": N_("not yet valid (box clock behind?)"),
    "replay": N_("already received (replay)"),
    "replay_unknown": N_("replay check impossible"),
    "retained": N_("retained message refused"),
    "unknown_kind": N_("unknown command kind"),
    "not_addressed": N_("not addressed to this box"),
    "clock_unsynchronised": N_("box clock not synchronised"),
    "internal_error": N_("internal error on the box"),
    "closed": N_("connection closed"),
    "maintenance": N_("maintenance"),
    # broadcasts (agent/broadcast)
    "quiet_hours": N_("quiet hours"),
    "max_play_s": N_("played too long, stopped"),
    "tts_failed": N_("text-to-speech failed"),
    "unknown_broadcast": N_("no such broadcast"),
    "window_passed": N_("time window passed"),
    "missed": N_("occurrences missed"),
    "preempted": N_("interrupted by a more urgent broadcast"),
    "cancelled": N_("cancelled"),
    "no_device": N_("no audio device"),
    "hash_mismatch": N_("audio checksum does not match"),
    # fences (agent/wearables, county)
    "invalid_fences": N_("invalid fences"),
    "invalid_wearers": N_("invalid wearer list"),
    "invalid_crs": N_("unknown coordinate system"),
    "invalid_feature": N_("invalid fence shape"),
    "mixed_crs": N_("mixed coordinate systems"),
    "unknown_fence": N_("no such fence"),
    "store_error": N_("storage error on the box"),
    "handler_error": N_("handler error on the box"),
    "nobody_hears": N_("no box answers to the target"),
    # configuration and updates (config.set, agent.update)
    "invalid_config": N_("invalid configuration"),
    "update_error": N_("update failed"),
    "rolled_back": N_("update rolled back"),
    "bad_manifest": N_("release manifest invalid"),
    "wrong_arch": N_("release for another processor"),
    "wrong_python": N_("release for another Python"),
    "below_min_version": N_("box too old for this release"),
    "same_version": N_("already on this version"),
    "disk_full": N_("not enough disk space"),
    "download_failed": N_("download failed"),
    "install_failed": N_("install failed"),
    "check_failed": N_("new release failed its check"),
    "busy": N_("another update is running"),
    "not_configured": N_("updates not configured on the box"),
    "not_allowed": N_("not allowed on this box"),
    # cameras (agent/cameras, drivers/camera)
    "unreachable": N_("unreachable"),
    "timeout": N_("no answer in time"),
    "auth_failed": N_("wrong camera password"),
    "auth_required": N_("camera asks for a password"),
    "no_credentials": N_("no camera password configured"),
    "credentials_unreadable": N_("camera password file unreadable"),
    "not_found": N_("wrong stream path"),
    "no_video": N_("no video in the stream"),
    "protocol_error": N_("not an RTSP camera"),
    "error": N_("camera error"),
    "no_frame": N_("no picture"),
    "black": N_("black picture"),
    "frozen": N_("frozen picture"),
    "agent_start": N_("box just started"),
    "agent_down": N_("box agent was not running"),
    "lan_down": N_("box LAN down"),
}

# receipt states (contract 4) and camera states
STATES: dict[str, str] = {
    "received": N_("received"),
    "rejected": N_("rejected"),
    "scheduled": N_("scheduled"),
    "started": N_("playing"),
    "finished": N_("finished"),
    "failed": N_("failed"),
    "cancelled": N_("cancelled"),
    "preempted": N_("interrupted"),
    "expired": N_("expired"),
    "applied": N_("applied"),
    "pushed": N_("sent"),
    "starting": N_("starting"),
    "no_answer": N_("no answer"),
    "online": N_("online"),
    "degraded": N_("degraded"),
    "offline": N_("offline"),
    "unknown": N_("unknown"),
    "connected": N_("connected"),
    "connecting": N_("connecting"),
    "disconnected": N_("disconnected"),
    "inside": N_("inside"),
    "outside": N_("outside"),
    "ok": N_("ok"),
    "up": N_("up"),
    "down": N_("down"),
    # a rollout and its boxes (county/rollout.py), as `village county rollout status` shows them
    "pilot": N_("pilot"),
    "running": N_("running"),
    "halted": N_("halted"),
    "done": N_("done"),
    "pending": N_("pending"),
    "downloading": N_("downloading"),
    "installed": N_("installed"),
    "healthy": N_("healthy"),
    "rolled_back": N_("rolled back"),
    "timed_out": N_("timed out"),
}

# envelope kinds (contract 4) a person sees on the dashboard and in the summary
KINDS: dict[str, str] = {
    "sos": N_("SOS"),
    "fall": N_("fall"),
    "band_removed": N_("band removed"),
    "geofence_exit": N_("left the fence"),
    "geofence_enter": N_("back inside the fence"),
    "lost_contact": N_("lost contact"),
    "low_battery": N_("low battery"),
    "geofence_state": N_("fence position"),
    "alarm_episode": N_("alarm episode"),
    "band_alarm": N_("band alarm"),
    "contact_restored": N_("contact restored"),
    "camera": N_("camera"),
    "camera_device": N_("camera device"),
    "cameras": N_("camera summary"),
    "gateway": N_("gateway"),
    "gateway_setup": N_("gateway setup"),
    "outbox_reset": N_("outbox reset"),
    "replay_reset": N_("replay memory reset"),
    "session_lost": N_("broker session lost"),
    "cmd": N_("receipt"),
    "heartbeat": N_("heartbeat"),
    "position": N_("position"),
}

# message classes (contract 4)
CLASSES: dict[str, str] = {
    "alarm": N_("alarms"),
    "event": N_("events"),
    "telemetry": N_("telemetry"),
    "receipt": N_("receipts"),
    "state": N_("state"),
}


def reason(code: str | None) -> str:
    """'签名无效 (bad_signature)'; '' for no reason; an unknown code as itself."""
    if not code:
        return ""
    words = REASONS.get(code)
    return f"{_(words)} ({code})" if words else code


def state(code: str | None) -> str:
    if not code:
        return ""
    words = STATES.get(code)
    return _(words) if words else code


def kind(code: str | None) -> str:
    if not code:
        return ""
    words = KINDS.get(code)
    return _(words) if words else code


def cls(code: str) -> str:
    words = CLASSES.get(code)
    return _(words) if words else code


def state_reason(code: str | None, why: str | None) -> str:
    """'rejected: 签名无效 (bad_signature)' in words: '已拒绝：签名无效 (bad_signature)'."""
    if not why:
        return state(code)
    return _("{state}: {reason}").format(state=state(code), reason=reason(why))


# Problems made before this process, or by code that writes its text itself: stored and read back (a rollout's
# halt reason, the clock verdict in the box's status file) or said by a parser (json, tomllib). Everything
# a validator, loader or parser of ours raises is made with N_(message, **fields) instead and needs no
# pattern (tests/test_i18n_problems.py checks the modules a console reads).
_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), m) for p, m in (
    # where a parser stopped (json and tomllib say what went wrong in English; the place is said in words)
    (r"^(?P<what>.*): line (?P<line>\d+) column (?P<col>\d+) \(char \d+\)$",
     N_("{what} (line {line}, column {col})")),
    (r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$", N_("{what} (line {line}, column {col})")),
    (r"^(?P<what>.*) \(at end of document\)$", N_("{what} (at the end of the file)")),
    # why a rollout halted, as the county server stored it (county/rollout.py, routes_releases.py)
    (r"^(?P<failed>\d+) of (?P<sent>\d+) boxes failed \((?P<how>.*)\), over the (?P<pct>\d+)% allowed$",
     N_("{failed} of {sent} boxes failed ({how}), over the {pct}% allowed")),
    (r"^halted by (?P<user>.*)$", N_("halted by {user}")),
    # the clock verdict (agent/clocksanity.py), as `village agent status` reads it from the status file
    (r"^not NTP-synchronised; plausible but may be off by any amount$",
     N_("not NTP-synchronised; plausible but may be off by any amount")),
    (r"^plausible; NTP status unknown$", N_("plausible; NTP status unknown")),
    (r"^NTP-synchronised \(offset (?P<offset>\S+ ms), est\. error (?P<err>\S+ ms)\)$",
     N_("NTP-synchronised (offset {offset}, est. error {err})")),
    (r"^wall clock (?P<now>\S+) is before (?P<floor>\S+): never set since boot \(at least (?P<s>\d+) s behind\)$",
     N_("wall clock {now} is before {floor}: never set since boot (at least {s} s behind)")),
))


# the system's error texts (OSError.strerror, in English whatever the locale: Python never calls setlocale)
# for the errors a person meets at a console: files, disks and connections
_ERRNO = {
    errno.ENOENT: N_("no such file or directory"),
    errno.EACCES: N_("permission denied"),
    errno.EPERM: N_("operation not permitted"),
    errno.EISDIR: N_("is a directory"),
    errno.ENOTDIR: N_("not a directory"),
    errno.EEXIST: N_("file exists"),
    errno.ENOSPC: N_("no space left on the disk"),
    errno.EROFS: N_("read-only file system"),
    errno.ECONNREFUSED: N_("connection refused"),
    errno.ECONNRESET: N_("connection reset"),
    errno.ETIMEDOUT: N_("timed out"),
    errno.EHOSTUNREACH: N_("no route to the host"),
    errno.ENETUNREACH: N_("network unreachable"),
}
_STRERROR = {os.strerror(code): msgid for code, msgid in _ERRNO.items()}
_OSERROR = re.compile(r"^\[Errno (?P<n>\d+)\] (?P<why>[^:]*)(?:: (?P<file>.*))?$")


def _field(value: object, lang: str | None) -> object:
    """A field of a made problem, said too when it is itself a problem: an exception's text (a config's or key
    file's is made too: file, key, problem), a made text, a system error text, or a sentence of the catalog
    (`N_("not a PEM public key")`; a sentence, not a one-word value that happens to be a msgid)."""
    if isinstance(value, i18n.Raised) or (isinstance(value, str) and (
            value in _STRERROR or i18n.made(value)
            or (" " in value and value in i18n.catalog(lang or i18n.current())))):
        return problem(value, lang)
    return value


def problem(text: str, lang: str | None = None) -> str:
    """One problem in the chosen language (or `lang`): a text made by `N_(message, **fields)` (agent/i18n.py,
    with its fields said too), a message of the catalog as it is, a system error text, else by the patterns
    above; unmatched: as it is."""
    def say(message: str) -> str:
        return i18n.gettext(message, lang)

    if (made := i18n.made(text)) is not None:
        message, fields = made
        return say(message).format(**{k: _field(v, lang) for k, v in fields.items()})
    if text in i18n.catalog(lang or i18n.current()):
        return say(text)
    if text in _STRERROR:
        return say(_STRERROR[text])
    if (m := _OSERROR.match(text)) and (msgid := _ERRNO.get(int(m["n"]))):
        return f"{m['file']}: {say(msgid)}" if m["file"] else say(msgid)
    for pattern, msgid in _PROBLEMS:
        if m := pattern.match(text):
            return say(msgid).format(**m.groupdict(""))
    return text


def config_error(exc: Exception) -> str:
    """`file: key: problem` of a ConfigError / ProfileError / ScenarioError (anything with those three), or
    `path: problem` of a KeyFileError, the problem in words; any other exception: its str() in words."""
    file, key, what = (getattr(exc, a, None) for a in ("file", "key", "problem"))
    if file is None:  # a key file (agent.protocol.jws.KeyFileError): path and problem
        file = getattr(exc, "path", None)
    if not isinstance(file, str) or not isinstance(what, str):
        return problem(str(exc))
    return f"{file}: {key}: {problem(what)}" if key else f"{file}: {problem(what)}"
