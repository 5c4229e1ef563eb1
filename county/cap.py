"""CAP 1.2 (OASIS Common Alerting Protocol) -> `broadcast.play` / `broadcast.cancel` command data.

Parsing is defensive, as defusedxml would be: a size limit, and any DOCTYPE or ENTITY declaration is refused
before ElementTree sees the document (no entity expansion, no external entities). Stdlib only.

Mapping (documented in docs/county-console.md):
- status Actual -> class `emergency` for severity Extreme/Severe/Moderate, `daily` for Minor/Unknown (a minor
  or past event is information, not a siren: it must not preempt or break quiet hours); Exercise and Test ->
  `drill`; System and Draft are refused (not for the public).
- severity Extreme/Severe/Moderate/Minor/Unknown -> level 1/2/3/4/4.
- headline, description, instruction -> the spoken `text` (in that order); headline (else event) -> `title`.
- effective (else onset) -> `start`, a time in the past meaning now; expires -> `end`.
- the broadcast id (= the `broadcast.play` command id) derives from sender and identifier, so a later
  Update or Cancel whose `references` name this alert can name the broadcast: see `broadcast_id`.
- msgType Alert -> play; Update -> cancel every referenced broadcast, then play; Cancel -> cancel only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from agent.i18n import N_

NS = "urn:oasis:names:tc:emergency:cap:1.2"
MAX_CAP_BYTES = 512 * 1024
PREFERRED_LANGUAGES = ("zh-CN", "zh", "en")

SEVERITY_LEVEL = {"Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4, "Unknown": 4}
URGENT_SEVERITIES = frozenset({"Extreme", "Severe", "Moderate"})
STATUS_PUBLIC = frozenset({"Actual", "Exercise", "Test"})
MSG_TYPES = frozenset({"Alert", "Update", "Cancel"})


class CapError(ValueError):
    """A CAP document this console will not turn into a broadcast; `str()` says why."""


@dataclass(frozen=True, slots=True)
class CapReference:
    sender: str
    identifier: str
    sent: str


@dataclass(frozen=True, slots=True)
class CapInfo:
    language: str
    event: str
    severity: str
    urgency: str
    headline: str
    description: str
    instruction: str
    effective: int | None
    onset: int | None
    expires: int | None


@dataclass(frozen=True, slots=True)
class CapAlert:
    identifier: str
    sender: str
    sent: int
    status: str
    msg_type: str
    scope: str
    references: tuple[CapReference, ...]
    infos: tuple[CapInfo, ...]


@dataclass(frozen=True, slots=True)
class CapPlan:
    """What to publish for one CAP document: cancels first, then (unless a Cancel) one play."""

    broadcast_id: str  # this alert's broadcast id (the play command's id)
    cancels: tuple[str, ...]  # broadcast ids to cancel
    play: dict[str, Any] | None  # broadcast.play data, None for msgType Cancel


def broadcast_id(sender: str, identifier: str) -> str:
    """`cap-` + the first 32 hex digits of sha256("sender,identifier"): stable, ASCII, no separators to escape.

    CAP identifies an alert by (sender, identifier); `references` entries carry both, so an Update or a
    Cancel computes the earlier alert's broadcast id the same way.
    """
    return "cap-" + hashlib.sha256(f"{sender},{identifier}".encode()).hexdigest()[:32]


def _refuse_dtd(data: bytes) -> None:
    """Scan with expat first: any DOCTYPE or entity declaration is refused (defusedxml's rule)."""
    parser = expat.ParserCreate()

    def doctype(*_a: Any) -> None:
        raise CapError(N_("CAP document has a DOCTYPE; refused (no DTDs or entities)"))

    def entity(*_a: Any) -> None:
        raise CapError(N_("CAP document declares entities; refused"))

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = lambda *_a: False  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except CapError:  # a ValueError too: the refusal above, as it is
        raise
    except expat.ExpatError as exc:
        raise CapError(N_("not well-formed XML: {exc}", exc=exc)) from None
    except (LookupError, ValueError) as exc:  # <?xml encoding="..."?> naming an unknown or unusable codec
        raise CapError(N_("unusable XML encoding declaration: {exc}", exc=exc)) from None


def _time(text: str | None, what: str) -> int | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CapError(N_("{what} {value!r} is not a CAP dateTime", what=what, value=text.strip())) from None
    if t.tzinfo is None:
        raise CapError(N_("{what} {value!r} has no UTC offset", what=what, value=text.strip()))
    return int(t.timestamp())


def _text(el: ET.Element, name: str) -> str:
    child = el.find(f"{{{NS}}}{name}")
    return " ".join((child.text or "").split()) if child is not None else ""


def parse_cap(data: bytes) -> CapAlert:
    if len(data) > MAX_CAP_BYTES:
        raise CapError(N_("CAP document is {data} bytes, limit {limit}", data=len(data), limit=MAX_CAP_BYTES))
    _refuse_dtd(data)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CapError(N_("not well-formed XML: {exc}", exc=exc)) from None
    if root.tag != f"{{{NS}}}alert":
        raise CapError(N_("root element is {tag!r}, not a CAP 1.2 <alert>", tag=root.tag))
    fields = {name: _text(root, name) for name in ("identifier", "sender", "sent", "status", "msgType", "scope")}
    for name, value in fields.items():
        if not value:
            raise CapError(N_("<{name}> is missing", name=name))
    sent = _time(fields["sent"], "sent")
    assert sent is not None
    refs = []
    for entry in _text(root, "references").split():
        parts = entry.split(",")
        if len(parts) != 3 or not all(parts):
            raise CapError(N_("reference {entry!r} is not sender,identifier,sent", entry=entry))
        refs.append(CapReference(*parts))
    infos = []
    for el in root.findall(f"{{{NS}}}info"):
        infos.append(CapInfo(
            language=_text(el, "language") or "en-US",
            event=_text(el, "event"),
            severity=_text(el, "severity"),
            urgency=_text(el, "urgency"),
            headline=_text(el, "headline"),
            description=_text(el, "description"),
            instruction=_text(el, "instruction"),
            effective=_time(_text(el, "effective"), "effective"),
            onset=_time(_text(el, "onset"), "onset"),
            expires=_time(_text(el, "expires"), "expires"),
        ))
    return CapAlert(identifier=fields["identifier"], sender=fields["sender"], sent=sent, status=fields["status"],
                    msg_type=fields["msgType"], scope=fields["scope"], references=tuple(refs), infos=tuple(infos))


def pick_info(alert: CapAlert, languages: tuple[str, ...] = PREFERRED_LANGUAGES) -> CapInfo:
    """The <info> block to speak: the first matching a preferred language (prefix match), else the first."""
    if not alert.infos:
        raise CapError(N_("CAP alert has no <info> block: nothing to say"))
    for lang in languages:
        for info in alert.infos:
            if info.language.lower() == lang.lower() or info.language.lower().startswith(lang.lower() + "-"):
                return info
    return alert.infos[0]


def plan(alert: CapAlert, now: float) -> CapPlan:
    """Turn a parsed alert into the commands to publish (see the module docstring for the mapping)."""
    if alert.status not in STATUS_PUBLIC:
        raise CapError(N_("status {status!r} is not for public broadcast (Actual, Exercise or Test)",
                          status=alert.status))
    if alert.msg_type not in MSG_TYPES:
        raise CapError(N_("msgType {msg_type!r} is not broadcast (Alert, Update or Cancel)", msg_type=alert.msg_type))
    if alert.scope != "Public":
        raise CapError(N_("scope {scope!r}: village loudspeakers only carry Public alerts", scope=alert.scope))
    own_id = broadcast_id(alert.sender, alert.identifier)
    cancels = tuple(dict.fromkeys(broadcast_id(r.sender, r.identifier) for r in alert.references))
    if alert.msg_type in ("Update", "Cancel") and not cancels:
        raise CapError(N_("msgType {msg_type} without <references>: nothing to update or cancel",
                          msg_type=alert.msg_type))
    if alert.msg_type == "Cancel":
        return CapPlan(own_id, cancels, None)
    info = pick_info(alert)
    if info.severity not in SEVERITY_LEVEL:
        raise CapError(N_("severity {severity!r} is not a CAP severity", severity=info.severity))
    if alert.status == "Actual":
        cls = "emergency" if info.severity in URGENT_SEVERITIES else "daily"
    else:
        cls = "drill"
    text = "\n".join(t for t in (info.headline, info.description, info.instruction) if t)
    if not text:
        raise CapError(N_("CAP info has no headline, description or instruction: nothing to say"))
    start = info.effective if info.effective is not None else info.onset
    if start is not None and start <= now:
        start = None  # already effective: play now
    return CapPlan(own_id, cancels, {
        "class": cls,
        "level": SEVERITY_LEVEL[info.severity],
        "title": info.headline or info.event,
        "text": text,
        "audio": None,
        "start": start,
        "end": info.expires,
        "volume": None,
    })
