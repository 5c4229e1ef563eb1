"""End to end: signed commands published on a real mosquitto -> the real link, command router (JWS, replay,
addressing) and outbox -> the broadcast service -> the relay and player twins; receipts back on the broker.

Composed the way agent.app composes the agent (outbox, router, link, the broadcast feature), with the
broadcast drivers from sim/ (twins), so what is checked is the whole path a county command takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.broadcast.service import BroadcastService, make_services
from agent.clock import SystemClock
from agent.commands import CommandRouter
from agent.config import Config, parse_config
from agent.context import AgentContext, Hardware
from agent.link import Link
from agent.outbox import Outbox
from agent.profile import load_profile
from agent.protocol import jws
from agent.protocol.topics import Topics
from agent.receipts import Receipts
from sim.amp import TwinAmpRelay
from sim.audio import SilentTts, TwinPlayer
from tests.support import Collector, Mosquitto

pytestmark = pytest.mark.timeout(90)
BOX = "box-bc"
KID = "county-test"


def wav(seconds: float, freq: int = 440) -> bytes:
    return subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-t", "wav", "-", "synth",
                           str(seconds), "sine", str(freq)], check=True, capture_output=True).stdout


def audio(data: bytes, sha: str | None = None) -> dict[str, str]:
    return {"mime": "audio/wav", "sha256": sha or hashlib.sha256(data).hexdigest(),
            "b64": base64.b64encode(data).decode()}


DAILY, SOS = wav(4.0), wav(1.0, 880)


class County:
    """The county side: signs commands with its key and reads receipts off the broker."""

    def __init__(self, collector: Collector, key: Ed25519PrivateKey) -> None:
        self.collector, self.key = collector, key
        self.topic = Topics().box_cmd(BOX)

    def send(self, kind: str, data: dict[str, Any], cmd_id: str | None = None) -> str:
        cmd_id = cmd_id or str(uuid.uuid4())
        now = int(time.time())
        token = jws.sign({"v": 1, "id": cmd_id, "kind": kind, "iat": now, "exp": now + 3600, "to": [f"box:{BOX}"],
                          "data": data}, self.key, KID)
        self.collector.publish(self.topic, token)
        return cmd_id

    def play(self, **data: Any) -> str:
        return self.send("broadcast.play", {"class": "daily", "level": 3, "start": None, "end": None,
                                            "volume": None, **data})

    def receipts(self, cmd: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.collector.envelopes() if e["kind"] == "cmd" and e["data"]["cmd"] == cmd]

    def states(self, cmd: str) -> list[str]:
        return [r["state"] for r in self.receipts(cmd)]

    async def wait(self, cmd: str, state: str, within: float = 20.0) -> dict[str, Any]:
        await asyncio.to_thread(self.collector.wait_for, lambda _: state in self.states(cmd), within)
        return next(r for r in self.receipts(cmd) if r["state"] == state)


@pytest.fixture
def county_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / f"{KID}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


@pytest.fixture
def county(collector: Collector, county_key: tuple[Ed25519PrivateKey, Path]) -> County:
    return County(collector, county_key[0])


def config(tmp_path: Path, broker: Mosquitto, pub: Path, **broadcast: Any) -> Config:
    return parse_config({
        "box": {"id": BOX, "profile": "sim", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": broker.url, "backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "uplink": {"batch_window_s": 0.05},  # batched as in the field, without its minute
        "trust": {"keys": {KID: str(pub)}},
        "outbox": {"commit_interval_ms": 5},
        "broadcast": {"warmup_s": 0.05, "tail_s": 0.0, "off_delay_s": 0.1, "chime": "", **broadcast},
    })


class Box:
    def __init__(self, cfg: Config, speed: float = 4.0) -> None:
        self.cfg = cfg
        self.relay = TwinAmpRelay(17)
        self.player = TwinPlayer(speed=speed, hang_slack_s=0.05)
        self.service: BroadcastService | None = None


@contextlib.asynccontextmanager
async def agent(box: Box, collector: Collector) -> AsyncIterator[Box]:
    cfg, clock = box.cfg, SystemClock()
    outbox = Outbox(cfg.outbox_path, cfg.box.id, max_bytes=cfg.outbox.max_bytes,
                    telemetry_ttl_s=cfg.outbox.telemetry_ttl_s, commit_interval_s=0.005, clock=clock)
    receipts = Receipts(outbox, clock)
    router = CommandRouter(cfg, receipts, clock, cfg.box.state_dir)
    ctx = AgentContext(config=cfg, profile=load_profile("sim"), uplink=outbox, receipts=receipts, clock=clock,
                       commands=router, hardware=Hardware(relay=box.relay, player=box.player, tts=SilentTts()))
    (service,) = make_services(ctx)
    assert isinstance(service, BroadcastService)
    box.service = service
    link = Link(cfg, outbox, router, clock=clock)
    online_before = len([m for m in collector.snapshot() if m.topic.endswith("/state") and b"online" in m.payload])
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(lambda: None), name=f"{s.name}.run") for s in (outbox, router, service, link)]
        try:
            await asyncio.to_thread(collector.wait_for, lambda msgs: len(
                [m for m in msgs if m.topic.endswith("/state") and b"online" in m.payload]) > online_before)
            yield box
        finally:
            for t in reversed(tasks):
                t.cancel()
    assert not box.relay.is_on


async def test_emergency_preempts_daily_through_the_broker(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                           county: County, county_key: Any) -> None:
    box = Box(config(tmp_path, broker, county_key[1]))
    async with agent(box, collector):
        d1 = county.play(audio=audio(DAILY), volume=60)
        await county.wait(d1, "started")
        e1 = county.play(**{"class": "emergency"}, level=1, audio=audio(SOS))
        await county.wait(d1, "finished")
        await asyncio.to_thread(collector.wait_for, lambda _: not box.relay.is_on)
    assert county.states(d1) == ["received", "started", "scheduled", "started", "finished"]
    assert county.states(e1) == ["received", "started", "finished"]
    assert box.relay.events() == ["off", "on", "off"]
    assert box.player.events() == [
        ("play", f"{d1}.wav", 60), ("stopped", f"{d1}.wav", 60),
        ("play", f"{e1}.wav", 100), ("end", f"{e1}.wav", 100),
        ("play", f"{d1}.wav", 60), ("end", f"{d1}.wav", 60),
    ]
    started = county.receipts(d1)[1]
    assert started["lead_s"] >= 0.05 and started["volume"] == 60
    assert county.receipts(d1)[-1]["duration_s"] > 0


async def test_quiet_hours_hold_daily_emergency_plays(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                       county: County, county_key: Any) -> None:
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    quiet = [(now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")]
    box = Box(config(tmp_path, broker, county_key[1], quiet_hours=quiet))
    async with agent(box, collector):
        d1 = county.play(text="明天上午九点停水", end=time.time() + 86400)
        held = await county.wait(d1, "scheduled")
        e1 = county.play(**{"class": "emergency"}, audio=audio(SOS))
        await county.wait(e1, "finished")
    assert held["reason"] == "quiet_hours" and held["until"] > time.time()
    assert county.states(d1) == ["received", "scheduled"]
    assert box.player.events() == [("play", f"{e1}.wav", 100), ("end", f"{e1}.wav", 100)]


async def test_cancel_stops_within_a_second(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                            county: County, county_key: Any) -> None:
    box = Box(config(tmp_path, broker, county_key[1]), speed=0.5)  # 2 s of audio plays for 8 s
    async with agent(box, collector):
        d1 = county.play(audio=audio(wav(2.0)))
        await county.wait(d1, "started")
        t0 = time.monotonic()
        c1 = county.send("broadcast.cancel", {"broadcast": d1})
        await county.wait(c1, "applied")
        took = time.monotonic() - t0
        # the state a second after the cancel: nothing plays, the amplifier is off (the figure is only printed)
        assert box.player.playing is None and not box.relay.is_on
    print(f"cancel published -> applied receipt on the broker: {took * 1000:.0f} ms")
    assert county.states(d1) == ["received", "started", "cancelled"]
    assert box.player.events() == [("play", f"{d1}.wav", 70), ("stopped", f"{d1}.wav", 70)]
    assert box.relay.events() == ["off", "on", "off"]


async def test_reboot_in_the_middle_of_a_schedule_resumes(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                          county: County, county_key: Any) -> None:
    cfg = config(tmp_path, broker, county_key[1])
    first = Box(cfg)
    async with agent(first, collector):
        first_due = county.play(audio=audio(SOS), start=time.time() + 1.0)
        later = county.play(audio=audio(SOS), start=time.time() + 4.0)
        await county.wait(first_due, "finished")
        assert county.states(later) == ["received", "scheduled"]
    second = Box(cfg)  # power cycle: new process, new drivers, same state_dir
    async with agent(second, collector):
        await county.wait(later, "finished")
    assert first.player.events() == [("play", f"{first_due}.wav", 70), ("end", f"{first_due}.wav", 70)]
    assert second.player.events() == [("play", f"{later}.wav", 70), ("end", f"{later}.wav", 70)]
    assert county.states(later) == ["received", "scheduled", "started", "finished"]


async def test_hash_mismatch_and_oversize_audio_rejected_relay_never_on(
        tmp_path: Path, broker: Mosquitto, collector: Collector, county: County, county_key: Any) -> None:
    box = Box(config(tmp_path, broker, county_key[1], max_audio_bytes=20_000))
    async with agent(box, collector):
        bad_hash = county.play(**{"class": "emergency"}, audio=audio(SOS, sha="00" * 32))
        too_big = county.play(**{"class": "emergency"}, audio=audio(DAILY))  # 64 kB > max_audio_bytes 20 kB
        r1 = await county.wait(bad_hash, "rejected")
        r2 = await county.wait(too_big, "rejected")
    assert r1["reason"] == "hash_mismatch" and r2["reason"] == "audio_too_large"
    assert county.states(bad_hash) == ["received", "rejected"] and county.states(too_big) == ["received", "rejected"]
    assert box.relay.events() == ["off"] and box.player.events() == []
