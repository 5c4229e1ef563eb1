"""The broadcast engine over scripted time (ManualClock): every rule, no sleeping, no I/O but SQLite."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.broadcast.engine import SYNC_EPOCH, Engine, Notify, Rules, Start, Stop
from agent.broadcast.items import BadBroadcast, Item, Klass, QuietHours, parse_cancel, parse_play, parse_repeat
from agent.broadcast.settings import BroadcastConfig
from agent.broadcast.store import BroadcastStore
from agent.clock import ManualClock
from agent.schema import SchemaError, build

CST = ZoneInfo("Asia/Shanghai")


def at(text: str) -> float:
    """Local Asia/Shanghai time -> epoch s."""
    return datetime.fromisoformat(text).replace(tzinfo=CST).timestamp()


def rules(**kw) -> Rules:
    return Rules.from_config(BroadcastConfig(**kw))


class Box:
    """An engine with a manual clock and an arrival counter."""

    def __init__(self, wall: float, **cfg) -> None:
        self.clock = ManualClock(wall=wall)
        self.engine = Engine(rules(**cfg))

    def item(self, id: str, cls: str = "daily", *, level: int = 3, start: float | None = None,
             end: float | None = None, volume: int | None = None, repeat: dict | None = None) -> Item:
        rep = parse_repeat(repeat, "Asia/Shanghai") if repeat else None
        return Item(id, Klass(cls), level, "", "text", f"{id}.wav", "audio/wav", volume, start, end, rep, 0,
                    self.clock.time())

    def add(self, *args, **kw) -> list:
        return self.engine.add(self.item(*args, **kw), self.clock.time(), self.clock.monotonic())

    def step(self) -> list:
        return self.engine.step(self.clock.time(), self.clock.monotonic())

    def finish(self, ok: bool = True, reason: str | None = None) -> list:
        p = self.engine.playing
        assert p is not None
        return self.engine.ended(p.token, ok, reason, {"duration_s": 1.0})

    def wake(self) -> float | None:
        return self.engine.next_wake(self.clock.time(), self.clock.monotonic())

    def advance_to_wake(self) -> None:
        w = self.wake()
        assert w is not None
        self.clock.advance(w)


def starts(effects: list) -> list[str]:
    return [e.item.id for e in effects if isinstance(e, Start)]


def notes(effects: list) -> list[tuple]:
    return [(e.cmd, e.state, e.reason) for e in effects if isinstance(e, Notify)]


NOW = at("2026-11-23T10:00:00")  # a Monday


def test_start_now_plays_at_once_and_finishes() -> None:
    box = Box(NOW)
    eff = box.add("a")
    assert starts(eff) == ["a"] and notes(eff) == []
    (s,) = eff
    assert s.volume == 70 and s.late_s == 0 and not s.drill and not s.resumed and s.occurrence is None
    assert notes(box.finish()) == [("a", "finished", None)]
    assert box.engine.items == {} and box.engine.playing is None


def test_future_start_is_scheduled_then_plays_on_time() -> None:
    box = Box(NOW)
    eff = box.add("a", start=NOW + 300)
    assert eff == [Notify("a", "scheduled", extra={"at": NOW + 300})]
    assert box.step() == [] and box.wake() == 300
    box.clock.advance(299)
    assert box.step() == []
    box.clock.advance(1)
    assert starts(box.step()) == ["a"]


def test_missed_start_inside_window_plays_late_else_expired() -> None:
    box = Box(NOW)
    (s,) = box.add("late", start=NOW - 120, end=NOW + 60)
    assert isinstance(s, Start) and s.late_s == 120
    box.finish()
    assert notes(box.add("gone", start=NOW - 120, end=NOW - 1)) == [("gone", "expired", "window_passed")]
    # no `end`: the window is late_window_s long
    assert notes(box.add("old", start=NOW - 601)) == [("old", "expired", "window_passed")]
    assert box.engine.items == {}


def test_waiting_item_expires_when_its_window_closes_behind_a_long_play() -> None:
    box = Box(NOW)
    box.add("long")
    assert notes(box.add("short", end=NOW + 30)) == [("short", "scheduled", None)]
    assert box.wake() == 30
    box.clock.advance(30)
    assert notes(box.step()) == [("short", "expired", "window_passed")]


def test_same_class_lower_level_first_then_fifo() -> None:
    box = Box(NOW)
    box.add("playing")
    for name, level in (("b3", 3), ("c2", 2), ("d2", 2), ("e1", 1)):
        box.add(name, level=level)
    order = []
    for _ in range(4):
        order += starts(box.finish() + box.step())
    assert order == ["e1", "c2", "d2", "b3"]


def test_drill_goes_before_daily_but_does_not_preempt() -> None:
    box = Box(NOW)
    box.add("daily1")
    assert starts(box.add("drill", "drill")) == []
    box.add("daily2", level=1)
    assert starts(box.finish() + box.step()) == ["drill"]


def test_emergency_preempts_and_preempted_item_resumes_from_start() -> None:
    box = Box(NOW)
    box.add("daily", end=NOW + 600)
    token = box.engine.playing.token
    box.clock.advance(5)
    eff = box.add("sos", "emergency", level=1, volume=20)
    assert eff[0] == Stop(token, "daily", "preempted")
    assert notes(eff) == [("daily", "scheduled", "preempted")]
    assert starts(eff) == ["sos"] and eff[-1].volume == 100  # emergency forces the maximum
    assert box.engine.ended(token, True, None, {}) == []  # the stopped play's late end is ignored
    box.clock.advance(20)
    eff = box.finish() + box.step()
    assert notes(eff) == [("sos", "finished", None)]
    (resumed,) = [e for e in eff if isinstance(e, Start)]
    assert resumed.item.id == "daily" and resumed.resumed
    assert notes(box.finish()) == [("daily", "finished", None)]


def test_preempted_item_past_its_window_is_reported_preempted() -> None:
    box = Box(NOW)
    box.add("daily", end=NOW + 60)
    box.add("sos", "emergency")
    box.clock.advance(120)
    assert notes(box.finish() + box.step()) == [("sos", "finished", None), ("daily", "preempted", "window_passed")]
    assert box.engine.items == {}


def test_emergency_preempts_only_a_less_severe_emergency() -> None:
    box = Box(NOW)
    box.add("e3", "emergency", level=3)
    assert starts(box.add("e3b", "emergency", level=3)) == []  # same level: waits its turn
    eff = box.add("e1", "emergency", level=1)
    assert [type(e) for e in eff] == [Stop, Notify, Start] and starts(eff) == ["e1"]
    assert starts(box.finish() + box.step()) == ["e3"]  # the preempted one first (it came first)


def test_volume_rules() -> None:
    r = rules(default_volume=50, max_volume=80, emergency_volume=100)
    mk = Box(NOW).item
    assert r.volume_for(mk("a")) == 50
    assert r.volume_for(mk("a", volume=95)) == 80
    assert r.volume_for(mk("a", volume=10)) == 10
    assert r.volume_for(mk("e", "emergency", volume=10)) == 100
    assert r.volume_for(mk("d", "drill", volume=100)) == 80
    same = rules(max_volume=100, default_volume=100, emergency_volume=100)
    assert same.volume_for(mk("d", "drill")) == 99  # a drill never plays at emergency volume
    assert same.volume_for(mk("d", "daily")) == 100


def test_drill_is_flagged_for_markers() -> None:
    (s,) = Box(NOW).add("d", "drill")
    assert s.drill


def test_cancel_playing_queued_and_unknown() -> None:
    box = Box(NOW)
    box.add("a")
    box.add("b")
    token = box.engine.playing.token
    eff = box.engine.cancel("c1", "a")
    assert eff == [Stop(token, "a", "cancelled"), Notify("a", "cancelled", extra={"by": "c1"}),
                   Notify("c1", "applied", extra={"cancelled": ["a"]})]
    assert starts(box.step()) == ["b"]
    box.add("c", start=NOW + 100)
    assert notes(box.engine.cancel("c2", "c")) == [("c", "cancelled", None), ("c2", "applied", None)]
    assert notes(box.engine.cancel("c3", "nope")) == [("c3", "failed", "unknown_broadcast")]
    assert box.engine.playing is not None


def test_cancel_all_stops_everything() -> None:
    box = Box(NOW)
    box.add("a")
    box.add("b", start=NOW + 100)
    box.add("e", "emergency", start=NOW + 5)
    eff = box.engine.cancel("call", None)
    assert [type(e) for e in eff] == [Notify, Stop, Notify, Notify, Notify]  # by priority: e, a, b
    assert eff[-1] == Notify("call", "applied", extra={"cancelled": ["e", "a", "b"]})
    assert box.engine.items == {} and box.engine.playing is None
    assert box.step() == [] and box.wake() is None


def test_safety_stop_after_max_play_s() -> None:
    box = Box(NOW, max_play_s=60)
    box.add("a")
    token = box.engine.playing.token
    assert box.wake() == 60
    box.clock.advance(59.9)
    assert box.step() == []
    box.clock.advance(0.1)
    eff = box.step()
    assert eff[0] == Stop(token, "a", "max_play_s") and notes(eff) == [("a", "failed", "max_play_s")]
    assert box.engine.items == {}


WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "at": "07:30", "from": "2026-11-20", "until": "2026-12-01"}


def test_recurring_weekdays_across_days_and_the_weekend() -> None:
    box = Box(at("2026-11-19T12:00:00"))  # Thursday, before `from`
    eff = box.add("morning", repeat=WEEKDAYS)
    assert eff == [Notify("morning", "scheduled", extra={"at": at("2026-11-20T07:30:00")})]
    played = []
    for _ in range(7):
        box.advance_to_wake()
        (s,) = [e for e in box.step() if isinstance(e, Start)]
        played.append(datetime.fromtimestamp(s.occurrence, CST).strftime("%a %d %H:%M"))
        box.clock.advance(60)
        assert notes(box.finish()) == [("morning", "finished", None)]
    assert played == ["Fri 20 07:30", "Mon 23 07:30", "Tue 24 07:30", "Wed 25 07:30", "Thu 26 07:30",
                      "Fri 27 07:30", "Mon 30 07:30"]
    box.advance_to_wake()
    assert starts(box.step()) == ["morning"]  # Tue 1 December, the last one
    box.finish()
    assert box.engine.items == {} and box.wake() is None


def test_recurring_missed_occurrences_are_reported_once_and_the_series_goes_on() -> None:
    box = Box(at("2026-11-23T07:00:00"))
    box.add("morning", repeat={**WEEKDAYS, "window_s": 300})
    box.clock.set_wall(at("2026-11-25T07:36:00"))  # the box was off Monday to Wednesday 07:36
    eff = box.step()
    assert notes(eff) == [("morning", "expired", "window_passed")] and eff[0].extra["missed"] == 3
    assert box.wake() == pytest.approx(at("2026-11-26T07:30:00") - box.clock.time())


def test_recurring_occurrence_already_running_at_arrival_plays_late() -> None:
    box = Box(at("2026-11-23T07:32:00"))
    (s,) = box.add("morning", repeat=WEEKDAYS)
    assert s.occurrence == at("2026-11-23T07:30:00") and s.late_s == 120


def test_quiet_hours_hold_daily_and_drill_never_emergency() -> None:
    box = Box(at("2026-11-23T23:00:00"), quiet_hours=("22:00", "06:30"))
    until = at("2026-11-24T06:30:00")
    eff = box.add("daily", end=at("2026-11-24T08:00:00"))
    assert eff == [Notify("daily", "scheduled", "quiet_hours", {"until": until})]
    assert notes(box.add("drill", "drill", end=at("2026-11-24T08:00:00"))) == [("drill", "scheduled", "quiet_hours")]
    assert starts(box.add("sos", "emergency")) == ["sos"]
    box.finish()
    assert box.step() == []  # held: reported once, not again
    assert box.wake() == pytest.approx(until - box.clock.time())
    box.advance_to_wake()
    assert starts(box.step()) == ["drill"]
    assert starts(box.finish() + box.step()) == ["daily"]


def test_quiet_hours_daily_whose_window_ends_inside_them_expires() -> None:
    box = Box(at("2026-11-23T21:59:00"), quiet_hours=("22:00", "06:30"))
    box.add("late", start=at("2026-11-23T22:10:00"), end=at("2026-11-23T23:00:00"))
    box.advance_to_wake()
    assert notes(box.step()) == [("late", "scheduled", "quiet_hours")]
    box.advance_to_wake()
    assert notes(box.step()) == [("late", "expired", "window_passed")]


def test_quiet_hours_not_wrapping_midnight() -> None:
    q = QuietHours("12:00", "14:00", "Asia/Shanghai")
    assert q.until(at("2026-11-23T11:59:00")) is None
    assert q.until(at("2026-11-23T12:00:00")) == at("2026-11-23T14:00:00")
    assert q.until(at("2026-11-23T14:00:00")) is None


def test_unsynced_clock_schedules_wait_emergencies_with_start_null_play() -> None:
    box = Box(86_400.0)  # 1970: an RTC-less box before NTP
    assert notes(box.add("daily")) == [("daily", "scheduled", None)]
    box.add("later", start=NOW + 60)
    box.add("e-timed", "emergency", start=NOW)
    assert starts(box.add("sos", "emergency")) == ["sos"]
    box.finish()
    assert box.step() == [] and box.wake() is None
    box.clock.set_wall(NOW)  # NTP: the real time arrives
    assert starts(box.step()) == ["e-timed"]
    assert starts(box.finish() + box.step()) == ["daily"]  # its "now" is the first synced time
    assert box.engine.items["daily"].received >= SYNC_EPOCH


async def test_reboot_resumes_the_schedule(tmp_path: Path) -> None:
    box = Box(at("2026-11-23T07:00:00"))
    box.add("morning", repeat=WEEKDAYS)
    box.add("notice", start=at("2026-11-23T09:00:00"), volume=60)
    box.advance_to_wake()
    box.step()
    box.finish()  # Monday's occurrence played
    db = tmp_path / "broadcast.db"
    store = await BroadcastStore.open(db)
    await store.save(box.engine.items, box.engine.take_dirty())
    await store.close()

    store = await BroadcastStore.open(db)  # power cycle
    engine = Engine(rules(), await store.load())
    await store.close()
    assert sorted(engine.items) == ["morning", "notice"]
    now = box.clock.time()
    assert engine.window(engine.items["morning"])[0] == at("2026-11-24T07:30:00")  # Monday is not replayed
    assert engine.next_wake(now, 0) == pytest.approx(at("2026-11-23T09:00:00") - now)
    eff = engine.step(at("2026-11-23T09:00:00"), 10)
    assert starts(eff) == ["notice"] and eff[0].volume == 60
    assert engine.next_seq == 3


async def test_unreadable_database_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "broadcast.db"
    db.write_bytes(b"this is not sqlite" * 100)
    store = await BroadcastStore.open(db)
    assert await store.load() == []
    await store.close()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("broadcast.db.broken-")]) == 1


def test_parse_play_rejects_bad_data_with_reasons() -> None:
    ok = {"class": "daily", "level": 2, "text": "明天停水", "start": None, "end": None, "volume": 50}
    req = parse_play(ok, default_tz="Asia/Shanghai", max_text_chars=100)
    assert req.cls is Klass.DAILY and req.level == 2 and req.volume == 50
    for bad, reason in (
        ({**ok, "class": "party"}, "bad_data"), ({**ok, "level": 0}, "bad_data"), ({**ok, "level": True}, "bad_data"),
        ({**ok, "volume": 101}, "bad_data"), ({**ok, "text": ""}, "bad_data"),
        ({**ok, "start": 10, "end": 5}, "bad_data"),
        ({**ok, "text": "x" * 101}, "text_too_long"), ({**ok, "audio": {"mime": "audio/wav"}}, "bad_audio"),
        ({**ok, "repeat": {"days": ["xyz"], "at": "07:30"}}, "bad_repeat"),
        ({**ok, "repeat": {"days": ["mon"], "at": "25:00"}}, "bad_repeat"),
        ({**ok, "repeat": {"at": "07:30", "tz": "Mars/Olympus"}}, "bad_repeat"),
        ({**ok, "class": "emergency", "repeat": {"at": "07:30"}}, "bad_repeat"),
        ("nope", "bad_data"),
    ):
        with pytest.raises(BadBroadcast) as exc:
            parse_play(bad, default_tz="Asia/Shanghai", max_text_chars=100)
        assert exc.value.reason == reason, bad
    assert parse_cancel({"all": True}) is None and parse_cancel({"broadcast": "x"}) == "x"
    with pytest.raises(BadBroadcast):
        parse_cancel({"all": "yes"})


def test_config_validation() -> None:
    assert build(BroadcastConfig, {"quiet_hours": ["22:00", "06:30"]}).quiet_hours == ("22:00", "06:30")
    for raw in ({"quiet_hours": ["22:00"]}, {"quiet_hours": ["22:00", "24:00"]}, {"timezone": "Nowhere/X"},
                {"max_volume": 101}, {"max_volume": 90, "emergency_volume": 80}, {"warmup_s": -1}):
        with pytest.raises(SchemaError):
            build(BroadcastConfig, raw)


def _item(item_id: str, text: str) -> Item:
    return Item(item_id, Klass.DAILY, 3, "", text, f"{item_id}.wav", "audio/wav", 70, None, None, None, 0, NOW)


async def _fill_disk(store: BroadcastStore) -> None:
    """A real SQLITE_FULL: the database may not grow past the pages it has now."""
    db = store._db
    (pages,) = await (await db.execute("PRAGMA page_count")).fetchone()
    await db.execute(f"PRAGMA max_page_count = {max(pages, 1)}")


async def test_a_full_disk_keeps_the_schedule_in_memory_and_saves_it_later(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "broadcast.db"
    store = await BroadcastStore.open(db)
    await store.save({"a": _item("a", "x")}, {"a"})
    await store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    await _fill_disk(store)
    big = {"a": _item("a", "x"), "b": _item("b", "明" * 5000), "c": _item("c", "停" * 5000)}
    caplog.set_level("ERROR", logger="agent.broadcast.store")
    assert await store.save(big, {"b"}) is False  # no exception: the caller's loop goes on
    assert await store.save(big, {"c"}) is False
    assert store.unsaved == {"b", "c"}
    assert len([r for r in caplog.records if "cannot save" in r.message]) == 1  # once per episode
    await store._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert await store.save(big, set()) is True and store.unsaved == set()
    await store.close()
    store = await BroadcastStore.open(db)
    assert sorted(i.id for i in await store.load()) == ["a", "b", "c"]
    await store.close()
