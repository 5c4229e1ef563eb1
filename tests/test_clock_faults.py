"""Clock faults: a box without an RTC boots in 1970, or with its clock behind (restored from a file, no NTP).

What must hold (docs/reliability-security.md, "Clock faults"):
- emergencies still play, and cancels still stop sound, whatever the clock says;
- nothing with a time (a `daily` at 08:00, a repeat) plays at a wrong time: schedules wait until the wall
  clock is believable, and then play or expire by the real time;
- commands are not rejected forever: once the clock is right, everything is accepted again;
- the clock is reported (heartbeat `clock`), and intervals and timeouts run on the monotonic clock.
All driven by ManualClock; nothing here sleeps for timing.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent import clocksanity
from agent.broadcast.engine import Engine, Notify, Rules, Start
from agent.broadcast.items import Item, Klass
from agent.broadcast.service import BroadcastService, make_services
from agent.clock import ManualClock
from agent.clocksanity import KernelSync
from agent.commands import MAX_FLOOR_STEP_S, MAX_SKEW_S, CommandRouter
from agent.config import parse_config
from agent.context import AgentContext, Hardware
from agent.heartbeat import Heartbeat
from agent.linkstate import LinkStateFile
from agent.outbox import Outbox
from agent.profile import load_profile
from agent.protocol import jws
from agent.protocol.commands import Command
from agent.receipts import Receipts
from agent.service import InboundCommand
from sim.amp import TwinAmpRelay
from sim.audio import SilentTts, TwinPlayer
from tests.test_commands import RecordingUplink
from tests.test_fuzz_protocol import KEY, KEYS
from tests.test_playback import Registry, audio, wav

NOW = 1_763_900_000.0  # the real time in these stories (2025-11-23)
HOUR = 3600.0
BOX, GROUP = "box-1", "town-a"
TOPIC = f"vc/v1/group/{GROUP}/cmd"
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ the router
def token(cmd_id: str, iat: float, cls: str = "daily", kind: str = "broadcast.play", ttl: float = HOUR) -> bytes:
    data = {"class": cls, "level": 1 if cls == "emergency" else 3, "text": "x"} if kind == "broadcast.play" \
        else {"all": True}
    payload = {"v": 1, "id": cmd_id, "kind": kind, "iat": int(iat), "exp": int(iat + ttl), "to": [f"group:{GROUP}"],
               "data": data}
    return jws.sign(payload, KEY, "county-2026").encode()


# what the kernel says about NTP discipline (agent.clocksanity.read_kernel), injected into the router
NTP_SYNCED = KernelSync(synchronised=True, offset_s=0.001, esterror_s=0.002, maxerror_s=0.01)
NTP_UNSYNCED = KernelSync(synchronised=False, offset_s=0.0, esterror_s=16.0, maxerror_s=16.0)


class Kernel:
    """A settable kernel NTP reading: what adjtimex would say now."""

    def __init__(self, sync: KernelSync | None) -> None:
        self.sync = sync

    def __call__(self) -> KernelSync | None:
        return self.sync


@contextlib.asynccontextmanager
async def router(tmp_path: Path, clock: ManualClock, kernel: KernelSync | Kernel | None = None,
                 known_floor: float | None = None, uplink: RecordingUplink | None = None,
                 ) -> AsyncIterator[tuple[CommandRouter, RecordingUplink, list[Command]]]:
    config = parse_config({"box": {"id": BOX, "profile": "sim", "groups": [GROUP], "state_dir": str(tmp_path)},
                           "mqtt": {"url": "mqtt://127.0.0.1:1883"}})
    uplink, calls = uplink or RecordingUplink(), []
    reading = kernel if isinstance(kernel, Kernel) else Kernel(kernel)
    r = CommandRouter(config, Receipts(uplink, clock), clock, tmp_path, keys=KEYS, clock_sync=reading,
                      known_floor=known_floor if known_floor is not None else clocksanity.EPOCH_FLOOR)

    async def handler(cmd: Command) -> None:
        calls.append(cmd)

    r.register("broadcast.play", handler)
    r.register("broadcast.cancel", handler)
    ready = asyncio.Event()
    task = asyncio.create_task(r.run(ready.set), name="test.router")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield r, uplink, calls
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def outcome(uplink: RecordingUplink, cmd_id: str) -> tuple[str, str | None]:
    r = next(r for r in uplink.receipts() if r["cmd"] == cmd_id)
    return r["state"], r.get("reason") or r.get("note")


async def test_box_in_1970_obeys_emergencies_and_cancels_then_everything_once_the_clock_is_set(
        tmp_path: Path) -> None:
    clock = ManualClock(wall=0.0)  # booted without RTC, NTP not answered yet
    async with router(tmp_path, clock) as (r, uplink, calls):
        await r.on_command(InboundCommand(TOPIC, token("sos", NOW, "emergency"), False, 0.0))
        await r.on_command(InboundCommand(TOPIC, token("stop", NOW, kind="broadcast.cancel"), False, 0.0))
        await r.on_command(InboundCommand(TOPIC, token("news", NOW), False, 0.0))
        assert outcome(uplink, "sos") == ("received", "clock_unsynchronised")
        assert outcome(uplink, "stop") == ("received", "clock_unsynchronised")
        assert outcome(uplink, "news") == ("rejected", "clock_unsynchronised")
        clock.set_wall(NOW + 60)  # NTP answers
        await r.on_command(InboundCommand(TOPIC, token("news-again", NOW + 30), False, NOW + 60))
        assert outcome(uplink, "news-again") == ("received", None), "not rejected forever"
    assert [c.id for c in calls] == ["sos", "stop", "news-again"]


async def test_box_an_hour_behind_obeys_an_emergency_signed_ahead_of_its_clock(tmp_path: Path) -> None:
    """The clock was restored from a file and NTP is unreachable (the kernel says: not synchronised): an
    hour behind, but plausible. A signed emergency whose iat is ahead of the box clock used to be rejected
    `not_yet_valid`: silence in an emergency. The kernel does not vouch for the clock, so it may be behind:
    the emergency plays (`clock_behind`); the floor does not follow the signed time past the clock."""
    clock = ManualClock(wall=NOW - HOUR)
    async with router(tmp_path, clock, NTP_UNSYNCED) as (r, uplink, calls):
        await r.on_command(InboundCommand(TOPIC, token("daily-1", NOW), False, NOW - HOUR))
        await r.on_command(InboundCommand(TOPIC, token("sos", NOW, "emergency"), False, NOW - HOUR))
        await r.on_command(InboundCommand(TOPIC, token("daily-2", NOW + 5), False, NOW - HOUR))
        assert outcome(uplink, "daily-1")[0] == "rejected"  # iat ahead by an hour: not acted on
        assert outcome(uplink, "sos") == ("received", "clock_behind")
        assert outcome(uplink, "daily-2") == ("rejected", "not_yet_valid")
        clock.set_wall(NOW + 30)  # the clock is put right
        await r.on_command(InboundCommand(TOPIC, token("daily-3", NOW + 20), False, NOW + 30))
        assert outcome(uplink, "daily-3") == ("received", None)
    assert [c.id for c in calls] == ["sos", "daily-3"]


async def send(r: CommandRouter, tok: bytes, at: float) -> None:
    await r.on_command(InboundCommand(TOPIC, tok, False, at))


YEAR_2099 = 4_070_908_800  # 2099-01-01T00:00:00Z


async def test_ntp_synchronised_box_holds_the_contract_for_an_emergency_signed_an_hour_ahead(
        tmp_path: Path) -> None:
    """The kernel says NTP disciplines the clock: `iat <= now + 120 s` holds for every command. An emergency
    signed an hour ahead (a console with a wrong clock) used to play with `clock_behind`."""
    clock = ManualClock(wall=NOW)
    async with router(tmp_path, clock, NTP_SYNCED) as (r, uplink, calls):
        await send(r, token("sos-ahead", NOW + HOUR, "emergency"), NOW)
        await send(r, token("stop-ahead", NOW + HOUR, kind="broadcast.cancel"), NOW)
        await send(r, token("sos-skew", NOW + MAX_SKEW_S - 1, "emergency"), NOW)  # inside the skew: fine
        assert outcome(uplink, "sos-ahead") == ("rejected", "not_yet_valid")
        assert outcome(uplink, "stop-ahead") == ("rejected", "not_yet_valid")
        assert outcome(uplink, "sos-skew") == ("received", None)
    assert [c.id for c in calls] == ["sos-skew"]


@pytest.mark.parametrize("kernel", [NTP_SYNCED, NTP_UNSYNCED, None], ids=["ntp-synced", "ntp-unsynced", "no-kernel"])
async def test_a_token_signed_in_2099_never_disables_the_box(tmp_path: Path, kernel: KernelSync | None) -> None:
    """An emergency signed for 2099 used to be played and to raise the stored floor to 2099: every later
    command, emergencies and cancels included, was refused, across restarts. On any plausible clock it is
    now refused (valid for more than 31 days on the box's clock), and everything later is obeyed."""
    clock = ManualClock(wall=NOW)
    async with router(tmp_path, clock, kernel) as (r, uplink, calls):
        await send(r, token("from-2099", YEAR_2099, "emergency"), NOW)
        assert outcome(uplink, "from-2099") == ("rejected", "not_yet_valid")
        clock.advance(60)
        await send(r, token("daily", NOW + 30), NOW + 60)
        assert outcome(uplink, "daily") == ("received", None)
    clock.advance(60)
    async with router(tmp_path, clock, kernel) as (r, uplink, calls2):  # restarted: the floor was not poisoned
        await send(r, token("sos", NOW + 100, "emergency"), NOW + 120)
        await send(r, token("stop", NOW + 110, kind="broadcast.cancel"), NOW + 120)
        await send(r, token("daily-2", NOW + 115), NOW + 120)
        assert [outcome(uplink, c) for c in ("sos", "stop", "daily-2")] == [("received", None)] * 3
    assert [c.id for c in calls + calls2] == ["daily", "sos", "stop", "daily-2"]


async def test_unsynchronised_box_obeys_a_stockpiled_emergency_without_refusing_what_follows(
        tmp_path: Path) -> None:
    """The kernel does not vouch for the clock: an emergency signed ten days ahead may mean the clock is
    ten days behind, so it plays (`clock_behind`). If the clock was right after all (the token was
    stockpiled), nothing later that is valid by this clock is refused because of it: the floor stays."""
    clock = ManualClock(wall=NOW)
    async with router(tmp_path, clock, NTP_UNSYNCED) as (r, uplink, calls):
        await send(r, token("stockpiled", NOW + 10 * 86400, "emergency"), NOW)
        assert outcome(uplink, "stockpiled") == ("received", "clock_behind")
        assert r._store.floor <= NOW + MAX_SKEW_S
        await send(r, token("daily", NOW + 10), NOW)
        await send(r, token("news", NOW - 600), NOW)
        assert outcome(uplink, "daily") == ("received", None)
        assert outcome(uplink, "news") == ("received", None)
        # a token valid longer than 31 days by this clock is never accepted, however urgent
        await send(r, token("far", NOW + 30 * 86400, "emergency", ttl=2 * 86400), NOW)
        assert outcome(uplink, "far") == ("rejected", "not_yet_valid")
        assert "31" in next(x for x in uplink.receipts() if x["cmd"] == "far")["detail"]
    assert [c.id for c in calls] == ["stockpiled", "daily", "news"]


async def test_box_in_1970_moves_the_floor_one_bounded_step_and_ntp_puts_it_right(tmp_path: Path) -> None:
    """In 1970 the box cannot judge a signed time, and an emergency still plays. The 2099 token moves the
    floor at most MAX_FLOOR_STEP_S past what the box knew (here the last NTP sync), and once the kernel
    reports a synchronised clock the floor comes down to it: later commands are all obeyed, also after a
    restart."""
    synced_at = NOW - 2 * HOUR
    clock, kernel = ManualClock(wall=40.0), Kernel(NTP_UNSYNCED)
    async with router(tmp_path, clock, kernel, known_floor=synced_at) as (r, uplink, calls):
        await send(r, token("from-2099", YEAR_2099, "emergency"), 40.0)
        assert outcome(uplink, "from-2099") == ("received", "clock_unsynchronised")
        assert r._store.floor == synced_at + MAX_FLOOR_STEP_S, "one bounded step, not 2099"
        clock.set_wall(NOW + 60)  # NTP answers
        kernel.sync = NTP_SYNCED
        await send(r, token("daily", NOW + 30), NOW + 60)
        assert outcome(uplink, "daily") == ("received", None)
        assert r._store.floor <= NOW + 60
    async with router(tmp_path, clock, kernel, known_floor=synced_at) as (r, uplink, calls2):
        assert r._store.floor <= NOW + 60, "the lowered floor was committed"
        await send(r, token("news", NOW + 50), NOW + 60)
        assert outcome(uplink, "news") == ("received", None)
    assert [c.id for c in calls + calls2] == ["from-2099", "daily", "news"]


async def test_a_floor_ahead_of_an_ntp_synchronised_clock_is_lowered_by_the_prune_too(tmp_path: Path) -> None:
    clock, kernel = ManualClock(wall=40.0), Kernel(NTP_UNSYNCED)
    async with router(tmp_path, clock, kernel, known_floor=NOW) as (r, _uplink, _calls):
        await send(r, token("from-2099", YEAR_2099, "emergency"), 40.0)
        assert r._store.floor == NOW + MAX_FLOOR_STEP_S
        clock.set_wall(NOW + 60)
        assert await r.prune() == 0 and r._store.floor == NOW + MAX_FLOOR_STEP_S  # not vouched for: kept
        kernel.sync = NTP_SYNCED
        await r.prune()
        assert r._store.floor == NOW + 60


# ------------------------------------------------------------------------------------------ the engine
RULES = Rules(quiet=None, late_window_s=600.0)


def item(item_id: str, cls: Klass, start: float | None, received: float) -> Item:
    return Item(item_id, cls, 1 if cls is Klass.EMERGENCY else 3, "t", "x", f"{item_id}.wav", "audio/wav", None,
                start, None, None, 0, received)


def starts(effects: list[Any]) -> list[str]:
    return [e.item.id for e in effects if isinstance(e, Start)]


def states(effects: list[Any], item_id: str) -> list[str]:
    return [e.state for e in effects if isinstance(e, Notify) and e.cmd == item_id]


def test_engine_in_1970_plays_an_emergency_now_and_holds_the_0800_daily_until_the_clock_is_set() -> None:
    eight = NOW + 2 * HOUR  # the daily's start, real time
    clock = ManualClock(wall=5.0, mono=100.0)  # 1970
    engine = Engine(RULES, [item("daily", Klass.DAILY, eight, received=NOW - HOUR)])  # stored before the reboot
    effects = engine.add(item("sos", Klass.EMERGENCY, None, received=clock.time()), clock.time(), clock.monotonic())
    assert starts(effects) == ["sos"]
    engine.ended(engine.playing.token, True, None, {})
    for _ in range(10):  # hours pass on a clock that reads 1970: the daily neither plays nor expires
        clock.advance(HOUR)
        effects = engine.step(clock.time(), clock.monotonic())
        assert not starts(effects) and not states(effects, "daily")
    assert "daily" in engine.items
    clock.set_wall(eight - 60)  # NTP answers a minute before eight
    assert not starts(engine.step(clock.time(), clock.monotonic()))
    assert engine.next_wake(clock.time(), clock.monotonic()) == pytest.approx(60.0)
    clock.advance(60)
    assert starts(engine.step(clock.time(), clock.monotonic())) == ["daily"], "at eight, real time"


def test_engine_an_hour_behind_holds_timed_items_once_signed_time_shows_it() -> None:
    """The box clock reads 07:00 while it is 08:00. The county's signed time (a command's iat) says so;
    until the clock is put right, the 07:30 daily must not play at the box's 07:30 (really 08:30)."""
    clock = ManualClock(wall=NOW - HOUR)
    engine = Engine(RULES)
    engine.add(item("daily", Klass.DAILY, NOW - HOUR / 2, received=clock.time()), clock.time(), clock.monotonic())
    engine.time_floor = NOW  # what the broadcast service learns from the signed commands it is handed
    effects = engine.add(item("sos", Klass.EMERGENCY, None, received=clock.time()), clock.time(), clock.monotonic())
    assert starts(effects) == ["sos"], "emergencies play"
    engine.ended(engine.playing.token, True, None, {})
    clock.advance(HOUR / 2)  # the box's 07:30
    effects = engine.step(clock.time(), clock.monotonic())
    assert not starts(effects) and not states(effects, "daily"), "not at a wrong time"
    clock.set_wall(NOW + HOUR / 2 + 5)  # the clock is put right: it is 08:30; the 07:30 daily's window passed
    effects = engine.step(clock.time(), clock.monotonic())
    assert states(effects, "daily") == ["expired"] and not starts(effects)


async def test_broadcast_service_learns_signed_time_and_holds_the_daily(tmp_path: Path) -> None:
    clock = ManualClock(wall=NOW - HOUR)
    config = parse_config({"box": {"id": BOX, "profile": "sim", "state_dir": str(tmp_path)}, "mqtt": {"url": "mqtt://127.0.0.1:1"},
                           "broadcast": {"warmup_s": 0.0, "tail_s": 0.0, "off_delay_s": 0.0, "chime": ""}})
    uplink, registry = RecordingUplink(), Registry()
    relay, player = TwinAmpRelay(17), TwinPlayer(speed=20.0, hang_slack_s=0.05)
    ctx = AgentContext(config, load_profile("sim"), uplink, Receipts(uplink, clock), clock, registry,
                       Hardware(relay=relay, player=player, tts=SilentTts()))
    (service,) = make_services(ctx)
    assert isinstance(service, BroadcastService)
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(ready.set), name="test.broadcast")
    play = registry.handlers["broadcast.play"]
    try:
        await asyncio.wait_for(ready.wait(), 10)
        daily = {"class": "daily", "level": 3, "audio": audio(wav(1.0)), "start": int(NOW - HOUR + 5), "end": None}
        sos = {"class": "emergency", "level": 1, "audio": audio(wav(1.0, 880))}
        await play(Command("sos", "broadcast.play", int(NOW), int(NOW + HOUR), (f"box:{BOX}",), sos, "k"))
        await play(Command("daily", "broadcast.play", int(NOW), int(NOW + HOUR), (f"box:{BOX}",), daily, "k"))
        await until(lambda: ("sos", "finished") in receipts(uplink))
        clock.advance(10)  # the daily's start on the box clock passes
        await registry.handlers["broadcast.cancel"](Command("nudge", "broadcast.cancel", int(NOW), int(NOW + HOUR),
                                                            (f"box:{BOX}",), {"broadcast": "none"}, "k"))
        await until(lambda: ("nudge", "failed") in receipts(uplink))
        assert [s for c, s in receipts(uplink) if c == "daily"] == ["scheduled"]
        assert [e[1] for e in player.events() if e[0] == "play"] == ["sos.wav"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not relay.is_on


async def test_broadcast_service_is_held_back_a_bounded_step_by_signed_time_far_ahead(tmp_path: Path) -> None:
    """The service learns signed time from what it is handed (a box in 1970 accepts a 2099 emergency).
    It used to take the 2099 iat as its floor: every timed item on this box then waited for 2099. Now signed
    time moves the floor at most a day past the wall clock: a daily due a day and a bit later plays."""
    clock = ManualClock(wall=NOW)
    config = parse_config({"box": {"id": BOX, "profile": "sim", "state_dir": str(tmp_path)},
                           "mqtt": {"url": "mqtt://127.0.0.1:1"},
                           "broadcast": {"warmup_s": 0.0, "tail_s": 0.0, "off_delay_s": 0.0, "chime": ""}})
    uplink, registry = RecordingUplink(), Registry()
    relay, player = TwinAmpRelay(17), TwinPlayer(speed=20.0, hang_slack_s=0.05)
    ctx = AgentContext(config, load_profile("sim"), uplink, Receipts(uplink, clock), clock, registry,
                       Hardware(relay=relay, player=player, tts=SilentTts()))
    (service,) = make_services(ctx)
    assert isinstance(service, BroadcastService)
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(ready.set), name="test.broadcast")
    play, cancel = registry.handlers["broadcast.play"], registry.handlers["broadcast.cancel"]
    try:
        await asyncio.wait_for(ready.wait(), 10)
        sos = {"class": "emergency", "level": 1, "audio": audio(wav(0.5, 880))}
        await play(Command("sos", "broadcast.play", YEAR_2099, YEAR_2099 + 3600, (f"box:{BOX}",), sos, "k"))
        await until(lambda: ("sos", "finished") in receipts(uplink))
        assert service.engine is not None and service.engine.time_floor <= NOW + 86400
        later = NOW + 86400 + 2 * MAX_SKEW_S  # past the bounded floor
        clock.set_wall(later)
        daily = {"class": "daily", "level": 3, "audio": audio(wav(0.5)), "start": int(later + 5), "end": None}
        await play(Command("daily", "broadcast.play", int(later), int(later + HOUR), (f"box:{BOX}",), daily, "k"))
        await until(lambda: ("daily", "scheduled") in receipts(uplink))
        clock.advance(10)  # the daily's start passes
        await cancel(Command("nudge", "broadcast.cancel", int(later), int(later + HOUR), (f"box:{BOX}",),
                             {"broadcast": "none"}, "k"))
        await until(lambda: ("daily", "finished") in receipts(uplink))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [e[1] for e in player.events() if e[0] == "play"] == ["sos.wav", "daily.wav"]
    assert not relay.is_on


def receipts(uplink: RecordingUplink) -> list[tuple[str, str]]:
    return [(r["cmd"], r["state"]) for r in uplink.receipts()]


async def until(pred: Any, within: float = 10.0) -> None:
    for _ in range(int(within / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)  # polling another task's progress, not timing
    raise AssertionError("condition not met")


# ------------------------------------------------------------------------------------------ reporting
async def test_heartbeat_reports_a_1970_clock_as_not_plausible(tmp_path: Path) -> None:
    clock = ManualClock(wall=5.0)
    outbox = Outbox(tmp_path / "outbox.db", BOX, max_bytes=10**7, telemetry_ttl_s=3600.0, commit_interval_s=0.01,
                    clock=clock)
    task = asyncio.create_task(outbox.run(lambda: None), name="test.outbox")
    try:
        await outbox.wait_open()
        data = await Heartbeat(outbox, clock, interval_s=60).snapshot()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert data["clock"]["plausible"] is False and data["clock"]["synchronised"] is False
    assert "never set" in data["clock"]["reason"]


def test_link_state_file_keeps_updating_after_the_clock_jumps_back(tmp_path: Path) -> None:
    """The last-publish time is written at most once a minute; measured on the wall clock, a jump back
    (NTP correcting a clock that was ahead) froze it until the clock caught up again."""
    f = LinkStateFile(tmp_path / "link.json")
    f.published(NOW)
    f.published(NOW - 2 * HOUR)  # the clock was two hours ahead and has been corrected
    assert LinkStateFile.read(tmp_path / "link.json")["last_publish_ts"] == NOW - 2 * HOUR


# ------------------------------------------------------------------------------------------ the audit
# Wall-clock reads in agent/ that are not intervals: stamping (`ts`, file names of set-aside databases),
# the status CLI's "now", and the Clock implementation itself. Anything else measuring time between two
# events must use Clock.monotonic() (or the event loop's clock, which is monotonic).
WALL_CLOCK_ALLOWED = {"agent/clock.py", "agent/status.py", "agent/replay.py", "agent/wearables/store.py",
                      "agent/broadcast/store.py",
                      "agent/release.py"}  # a release's build time, on the build machine: no box clock there


def test_agent_code_reads_time_time_only_where_a_wall_time_is_meant() -> None:
    found = set()
    for path in (REPO / "agent").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "time"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "time"):
                found.add(str(path.relative_to(REPO)))
    assert found <= WALL_CLOCK_ALLOWED, f"time.time() in {sorted(found - WALL_CLOCK_ALLOWED)}: use the Clock"
