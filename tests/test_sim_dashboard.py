"""The dashboard's view model folds county messages in; both renderers draw it without a terminal, by names."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from rich.console import Console

from agent import i18n
from sim.countyview import Seen
from sim.dashboard import LiveDashboard, Names, PlainDashboard, VillageState, WearerRow, clock, render


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    i18n.set_lang("en")
    yield
    i18n.set_lang("en")


def seen(cls: str, kind: str, data: dict[str, object], t: float = 5.0, dup: bool = False) -> Seen:
    return Seen(t, 0.0, "box-1", cls, kind, {"id": "box-1:1", "seq": 1, "data": data}, dup)


def state() -> VillageState:
    names = Names(cameras={"cam1": "village gate"}, wearers={"W1": "grandma at home"},
                  broadcasts={"b1": "morning news"}, box="Menglou box")
    s = VillageState("menglou", "box-1", 600, 5, "mosquitto", names=names)
    s.wearers["W1"] = WearerRow("W1")
    s.cameras["cam1"] = ("healthy", "")
    return s


def draw(s: VillageState, width: int, height: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, height=height, force_terminal=False).print(render(s, width, height))
    return out.getvalue()


def test_alarms_positions_receipts_and_cameras_fold_in_by_name() -> None:
    s = state()
    pos = {"lat": 21.95, "lon": 101.25}
    assert s.apply(seen("telemetry", "position", {"wearer": "W1", "pos": pos})) is None  # routine: not printed
    assert s.apply(seen("alarm", "sos", {"wearer": "W1", "pos": pos})) == "county: ALARM SOS: grandma at home"
    assert s.apply(seen("alarm", "sos", {"wearer": "W1"}, dup=True)) is None  # a resend is not news
    s.apply(seen("alarm", "geofence_exit", {"wearer": "W1", "fence": "village", "pos": pos}))
    line = s.apply(seen("receipt", "cmd", {"cmd": "b1", "state": "rejected", "reason": "bad_signature"}))
    assert line == "county: broadcast «morning news»: rejected: bad signature (bad_signature)"
    assert s.apply(seen("event", "camera", {"camera": "cam1", "state": "offline", "reason": "unreachable"})) == \
        "county: camera village gate: offline: unreachable (unreachable)"
    w = s.wearers["W1"]
    assert (w.lat, w.lon, w.fence, w.outside, w.last) == (21.95, 101.25, "village", True, "geofence_exit")
    assert s.broadcasts == {"b1": "rejected"} and s.broadcast_reasons == {"b1": "bad_signature"}
    assert s.cameras["cam1"][1] == "offline"
    # counted as the summary counts: unique envelopes only (the duplicate SOS is not one more alarm)
    assert len(s.alarms) == 2 and s.counts == {"telemetry": 1, "alarm": 2, "receipt": 1, "event": 1}


def test_chinese_reason_words_with_the_code_beside_them() -> None:
    i18n.set_lang("zh")
    s = state()
    line = s.apply(seen("receipt", "cmd", {"cmd": "b1", "state": "rejected", "reason": "bad_signature"}))
    assert line == "县里：广播 《morning news》：已拒绝：签名无效 (bad_signature)"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_compact_layout_fits_80x24_and_wide_shows_ids(lang: str) -> None:
    i18n.set_lang(lang)
    s = state()
    for n in range(6):
        s.wearers[f"W{n + 2}"] = WearerRow(f"W{n + 2}", battery=50)
    s.apply(seen("alarm", "sos", {"wearer": "W1"}))
    for n in range(20):
        s.note(f"line {n}")
    s.relay, s.link, s.backlog = "on", "down", 12
    text = draw(s, 80, 24)
    rows = text.splitlines()
    assert len(rows) <= 23 and all(i18n.width(r) <= 80 for r in rows), text
    assert "grandma at home" in text and "village gate" in text and "(cam1)" not in text
    wide = draw(s, 160, 48)
    assert "grandma at home (W1)" in wide and "village gate (cam1)" in wide


def test_live_renderer_and_plain_lines_in_time_order() -> None:
    s = state()
    s.apply(seen("alarm", "sos", {"wearer": "W1"}))
    live = LiveDashboard(Console(file=io.StringIO(), width=120, height=40, force_terminal=True))
    with live:
        live.refresh(s)
        live.line(s, "scenario: sos", 12)
    assert s.log[0] == "00:12 scenario: sos"
    out = io.StringIO()
    with PlainDashboard(out) as plain:
        plain.line(s, "late county line", 13.5)
        plain.line(s, "scenario action", 12.0)
        plain.release(12.2)  # only what nothing earlier can still precede
        assert out.getvalue() == "[00:12] scenario action\n"
        plain.line(s, "box line", 13.0)
    assert out.getvalue().splitlines() == ["[00:12] scenario action", "[00:13] box line", "[00:13] late county line"]


def test_clock() -> None:
    assert (clock(0), clock(59.6), clock(600), clock(3725)) == ("00:00", "00:59", "10:00", "1:02:05")


def test_compact_keeps_states_and_counts_on_a_crowded_village() -> None:
    s = state()
    s.names.broadcasts["b1"] = "a very long broadcast title that could never fit in one line of eighty columns"
    for n in range(20):
        s.wearers[f"X{n}"] = WearerRow(f"X{n}", battery=80)
    s.apply(seen("alarm", "sos", {"wearer": "X17"}, t=40))
    s.apply(seen("receipt", "cmd", {"cmd": "b1", "state": "rejected", "reason": "bad_signature"}))
    s.apply(seen("event", "camera", {"camera": "cam1", "state": "offline", "reason": "unreachable"}))
    rows = draw(s, 80, 24).splitlines()
    assert len(rows) <= 23 and all(i18n.width(r) <= 80 for r in rows)
    text = "\n".join(rows)
    assert any(r.strip().startswith("X17") and "SOS" in r for r in rows), text  # the one with news is shown
    assert "… and " in text and " more" in text
    bc = next(r for r in rows if "broadcast «a very long" in r)
    assert bc.endswith("rejected: bad signature (bad_signature)"), bc  # the title gave way, not the state
    assert any(r.endswith("offline: unreachable (unreachable)") for r in rows), text
    assert any(r.startswith("county received:") for r in rows), text


def test_display_labels_stay_in_the_simulator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The scenario's labels and names are for the technician's screen: the box's config never carries them."""
    from sim.agentproc import agent_config, toml_dumps
    from sim.report import names_for
    from sim.scenario import BUNDLED, load_scenario

    sc = load_scenario(BUNDLED / "menglou.toml")
    names = names_for(sc)
    assert names.wearers["W3"] == "在家的奶奶" and names.cameras["42068200001320000002"] == "学校"
    assert names.broadcasts["county-emergency-flood"] == "山洪预警" and names.box == "勐楼村委会"
    doc = toml_dumps(agent_config(sc, speed=10, state_dir=tmp_path, broker_url="mqtt://127.0.0.1:1",
                                  gateway_url="/dev/null", fences_file=None, trust={}, cameras=[]))
    for label in names.wearers.values():
        assert label not in doc
    assert "\nlabel" not in doc and "\"label\"" not in doc


def test_a_box_state_said_again_is_not_news() -> None:
    s = state()
    online, offline = Seen(1.0, 0.0, "box-1", "state", "online", {}), Seen(2.0, 0.0, "box-1", "state", "offline", {})
    assert s.apply(online) == "county: box Menglou box (box-1) is online"
    assert s.apply(offline) == "county: box Menglou box (box-1) is offline"
    assert s.apply(offline) is None  # the will, then the retained copy after the county view reconnects
    assert s.apply(online) is not None and s.box_state == "online"
