"""CAP 1.2 -> broadcast commands, with the OASIS example alerts from ../shared/testdata/peers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from county.cap import CapError, broadcast_id, parse_cap, plan

NOW = 1_763_900_000


def load(peers: Path, name: str) -> bytes:
    return (peers / name).read_bytes()


def test_a2_severe_thunderstorm_alert(peers: Path) -> None:
    alert = parse_cap(load(peers, "cap-1.2-A2-alert.xml"))
    assert (alert.identifier, alert.sender, alert.status, alert.msg_type) == (
        "KSTO1055887203", "KSTO@NWS.NOAA.GOV", "Actual", "Alert")
    assert alert.sent == 1055887020  # 2003-06-17T14:57:00-07:00
    p = plan(alert, NOW)
    assert p.broadcast_id == broadcast_id("KSTO@NWS.NOAA.GOV", "KSTO1055887203")
    assert p.cancels == ()
    assert p.play == {
        "class": "emergency",
        "level": 2,  # Severe
        "title": "SEVERE THUNDERSTORM WARNING",
        "text": "SEVERE THUNDERSTORM WARNING\n"
                "AT 254 PM PDT...NATIONAL WEATHER SERVICE DOPPLER RADAR INDICATED A SEVERE THUNDERSTORM OVER SOUTH "
                "CENTRAL ALPINE COUNTY...OR ABOUT 18 MILES SOUTHEAST OF KIRKWOOD...MOVING SOUTHWEST AT 5 MPH. "
                "HAIL...INTENSE RAIN AND STRONG DAMAGING WINDS ARE LIKELY WITH THIS STORM.\n"
                "TAKE COVER IN A SUBSTANTIAL SHELTER UNTIL THE STORM PASSES.",
        "audio": None,
        "start": None,
        "end": 1055890800,  # expires 2003-06-17T16:00:00-07:00
        "volume": None,
    }


def test_a3_update_replaces_the_earlier_broadcast(peers: Path) -> None:
    alert = parse_cap(load(peers, "cap-1.2-A3-update.xml"))
    assert alert.msg_type == "Update"
    p = plan(alert, NOW)
    # the earlier alert (TRI13970876.1) gets the id it was pushed under, so it is cancelled first
    assert p.cancels == (broadcast_id("trinet@caltech.edu", "TRI13970876.1"),)
    assert p.broadcast_id == broadcast_id("trinet@caltech.edu", "TRI13970876.2")
    assert p.broadcast_id not in p.cancels
    assert p.play is not None
    assert p.play["class"] == "daily"  # Actual but Minor: information, not a siren
    assert p.play["level"] == 4
    assert p.play["title"] == "EQ 3.4 Imperial County CA"
    assert p.play["text"].startswith("EQ 3.4 Imperial County CA\nA minor earthquake measuring 3.4")
    assert p.play["end"] is None  # no <expires>


def test_ids_are_stable_and_safe() -> None:
    a = broadcast_id("trinet@caltech.edu", "TRI13970876.1")
    assert a == broadcast_id("trinet@caltech.edu", "TRI13970876.1")
    assert a != broadcast_id("other@example.org", "TRI13970876.1")
    assert a.startswith("cap-") and len(a) == 36 and a.isascii()


def _alert(**over: str) -> bytes:
    f = {"status": "Actual", "msgType": "Alert", "scope": "Public", "severity": "Extreme", "references": "",
         "extra_info": "", "effective": "", "language": ""}
    f.update(over)
    refs = f"<references>{f['references']}</references>" if f["references"] else ""
    eff = f"<effective>{f['effective']}</effective>" if f["effective"] else ""
    lang = f"<language>{f['language']}</language>" if f["language"] else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>X-2</identifier><sender>county@example.cn</sender><sent>2026-11-23T09:00:00+08:00</sent>
  <status>{f['status']}</status><msgType>{f['msgType']}</msgType><scope>{f['scope']}</scope>{refs}
  {f['extra_info']}
  <info>{lang}<category>Met</category><event>洪水</event><urgency>Immediate</urgency>
    <severity>{f['severity']}</severity><certainty>Observed</certainty>{eff}
    <headline>洪水预警</headline><instruction>请立即转移到高处</instruction></info>
</alert>""".encode()


@pytest.mark.parametrize(("status", "severity", "cls", "level"), [
    ("Actual", "Extreme", "emergency", 1), ("Actual", "Severe", "emergency", 2),
    ("Actual", "Moderate", "emergency", 3), ("Actual", "Minor", "daily", 4), ("Actual", "Unknown", "daily", 4),
    ("Exercise", "Extreme", "drill", 1), ("Test", "Minor", "drill", 4),
])
def test_status_and_severity_mapping(status: str, severity: str, cls: str, level: int) -> None:
    p = plan(parse_cap(_alert(status=status, severity=severity)), NOW)
    assert p.play is not None and (p.play["class"], p.play["level"]) == (cls, level)
    assert p.play["text"] == "洪水预警\n请立即转移到高处"


def test_cancel_cancels_only() -> None:
    p = plan(parse_cap(_alert(msgType="Cancel", references="county@example.cn,X-1,2026-11-23T08:00:00+08:00")), NOW)
    assert p.play is None and p.cancels == (broadcast_id("county@example.cn", "X-1"),)


def test_effective_in_future_is_start_past_is_now() -> None:
    future = plan(parse_cap(_alert(effective="2025-11-23T21:00:00+08:00")), NOW)  # NOW is 20:13 +08:00
    assert future.play is not None and future.play["start"] == 1763902800
    past = plan(parse_cap(_alert(effective="2025-11-23T08:00:00+08:00")), NOW)
    assert past.play is not None and past.play["start"] is None


def test_language_choice_prefers_chinese() -> None:
    en = "<info><language>en-US</language><event>Flood</event><urgency>Immediate</urgency>" \
         "<severity>Minor</severity><certainty>Observed</certainty><headline>Flood</headline></info>"
    p = plan(parse_cap(_alert(extra_info=en, language="zh-CN")), NOW)
    assert p.play is not None and p.play["title"] == "洪水预警"


@pytest.mark.parametrize(("over", "match"), [
    ({"status": "System"}, "not for public"),
    ({"status": "Draft"}, "not for public"),
    ({"msgType": "Ack"}, "msgType"),
    ({"scope": "Restricted"}, "Public"),
    ({"msgType": "Update"}, "references"),
    ({"severity": "Apocalyptic"}, "severity"),
])
def test_refused(over: dict[str, str], match: str) -> None:
    with pytest.raises(CapError, match=match):
        plan(parse_cap(_alert(**over)), NOW)


def test_dtd_and_entities_refused() -> None:
    bomb = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol2;</identifier></alert>"""
    # the refusal itself, not wrapped in the encoding-declaration error (CapError is a ValueError too)
    with pytest.raises(CapError, match=r"^CAP document has a DOCTYPE; refused"):
        parse_cap(bomb)
    xxe = b"""<?xml version="1.0"?><!DOCTYPE a SYSTEM "file:///etc/passwd"><alert/>"""
    with pytest.raises(CapError, match=r"^CAP document has a DOCTYPE; refused"):
        parse_cap(xxe)


@pytest.mark.parametrize(("data", "match"), [
    (b"x" * (512 * 1024 + 1), "limit"),
    (b"<alert", "well-formed"),
    (b"<alert/>", "not a CAP 1.2"),
    (b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></alert>', "missing"),
])
def test_bad_documents(data: bytes, match: str) -> None:
    with pytest.raises(CapError, match=match):
        parse_cap(data)


def test_bad_times_and_references() -> None:
    with pytest.raises(CapError, match="effective"):
        parse_cap(_alert(effective="tomorrow"))
    with pytest.raises(CapError, match="no UTC offset"):
        parse_cap(_alert(effective="2026-11-23T09:00:00"))
    with pytest.raises(CapError, match="reference"):
        parse_cap(_alert(msgType="Cancel", references="just-an-id"))
