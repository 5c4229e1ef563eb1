"""The dashboard's view model folds county messages in; both renderers draw it without a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from sim.countyview import Seen
from sim.dashboard import LiveDashboard, PlainDashboard, VillageState, WearerRow, render


def seen(cls: str, kind: str, data: dict[str, object], t: float = 5.0, dup: bool = False) -> Seen:
    return Seen(t, 0.0, "box-1", cls, kind, {"id": "box-1:1", "seq": 1, "data": data}, dup)


def state() -> VillageState:
    s = VillageState("menglou", "box-1", 600, 5, "mosquitto")
    s.wearers["W1"] = WearerRow("W1")
    return s


def test_alarms_positions_receipts_and_cameras_fold_in() -> None:
    s = state()
    pos = {"lat": 21.95, "lon": 101.25}
    assert s.apply(seen("telemetry", "position", {"wearer": "W1", "pos": pos})) is None  # routine: not printed
    assert s.apply(seen("alarm", "sos", {"wearer": "W1", "pos": pos})) == "county: alarm sos wearer=W1"
    assert s.apply(seen("alarm", "sos", {"wearer": "W1"}, dup=True)) is None  # a resend is not news
    s.apply(seen("alarm", "geofence_exit", {"wearer": "W1", "fence": "village", "pos": pos}))
    s.apply(seen("receipt", "cmd", {"cmd": "b1", "state": "scheduled", "reason": "preempted"}))
    s.apply(seen("event", "camera", {"camera": "cam1", "state": "offline"}))
    w = s.wearers["W1"]
    assert (w.lat, w.lon, w.fence, w.last) == (21.95, 101.25, "OUT village", "geofence_exit")
    assert s.broadcasts == {"b1": "scheduled (preempted)"}
    assert s.cameras["cam1"][1] == "offline"
    assert len(s.alarms) == 2 and s.counts == {"telemetry": 1, "alarm": 3, "receipt": 1, "event": 1}


def test_live_and_plain_renderers_draw_the_state() -> None:
    s = state()
    s.apply(seen("alarm", "sos", {"wearer": "W1"}))
    s.relay, s.link, s.backlog = "on", "down", 12
    out = io.StringIO()
    Console(file=out, width=140, force_terminal=False).print(render(s))
    text = out.getvalue()
    for words in ("menglou", "4G link: down", "backlog 12", "RELAY".lower(), "W1", "sos"):
        assert words.lower() in text.lower()
    live = LiveDashboard(Console(file=io.StringIO(), width=120, force_terminal=True))
    with live:
        live.refresh(s)
        live.line(s, "scenario: sos")
    assert s.log[0].endswith("scenario: sos")
    plain_out = io.StringIO()
    with PlainDashboard(plain_out) as plain:
        plain.line(s, "county: alarm sos")
    assert plain_out.getvalue() == "[t=   0.0s] county: alarm sos\n"
