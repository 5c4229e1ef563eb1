"""Helpers of the live broadcast tests: a box composed as agent.app composes it (outbox, router, link, the
broadcast feature) with the relay/player twins and the live loudspeaker twin, and a county side that
signs `broadcast.live` commands and reads receipts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from sim.live_audio import TwinPcmSink
from tests.conftest import in_ci
from tests.support import Collector

KID = "county-test"


def need_opus() -> None:
    """libopus0 present, or skip saying so (with CI=true: fail; scripts/test installs it)."""
    from agent.opus import available

    if available():
        return
    why = "libopus0 is not installed (apt-get install libopus0)"
    if in_ci():
        pytest.fail(f"{why}; CI=true needs it", pytrace=False)
    pytest.skip(why)


def county_keypair(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / f"{KID}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def raw_public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def box_config(tmp_path: Path, url: str, pub: Path, box: str = "box-live", kid: str = KID, **broadcast: Any) -> Config:
    return parse_config({
        "box": {"id": box, "groups": ["town-live"], "profile": "sim", "state_dir": str(tmp_path / box)},
        "mqtt": {"url": url, "backoff_min_s": 0.2, "backoff_max_s": 1.0},
        "uplink": {"batch_window_s": 0.05},  # batched as in the field, without its minute
        "trust": {"keys": {kid: str(pub)}},
        "outbox": {"commit_interval_ms": 5},
        "broadcast": {"warmup_s": 0.05, "tail_s": 0.0, "off_delay_s": 0.1, "chime": "", "live_silence_s": 1.5,
                      **broadcast},
    })


class Box:
    def __init__(self, cfg: Config, silence_s: float | None = None) -> None:
        self.cfg = cfg
        self.relay = TwinAmpRelay(17)
        self.player = TwinPlayer(speed=8.0, hang_slack_s=0.05)
        self.speaker = TwinPcmSink()
        self.player.live_sink = self.speaker.factory()  # type: ignore[attr-defined]
        self.silence_s = silence_s
        self.service: BroadcastService | None = None
        self.router: CommandRouter | None = None

    @property
    def live(self) -> Any:
        assert self.service is not None
        return self.service.live


@contextlib.asynccontextmanager
async def running(box: Box, collector: Collector) -> AsyncIterator[Box]:
    cfg, clock = box.cfg, SystemClock()
    outbox = Outbox(cfg.outbox_path, cfg.box.id, max_bytes=cfg.outbox.max_bytes,
                    telemetry_ttl_s=cfg.outbox.telemetry_ttl_s, commit_interval_s=0.005, clock=clock)
    receipts = Receipts(outbox, clock)
    router = CommandRouter(cfg, receipts, clock, cfg.box.state_dir)
    link = Link(cfg, outbox, router, clock=clock)
    ctx = AgentContext(config=cfg, profile=load_profile("sim"), uplink=outbox, receipts=receipts, clock=clock,
                       commands=router, hardware=Hardware(relay=box.relay, player=box.player, tts=SilentTts()),
                       listener=link)
    (service,) = make_services(ctx)
    assert isinstance(service, BroadcastService)
    if box.silence_s is not None:
        service.live.silence_s = box.silence_s
    box.service, box.router = service, router

    def online(msgs: list[Any]) -> int:
        return len([m for m in msgs if m.topic.endswith(f"{cfg.box.id}/state") and b"online" in m.payload])

    before = online(collector.snapshot())
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.run(lambda: None), name=f"{s.name}.run") for s in (outbox, router, service, link)]
        try:
            await asyncio.to_thread(collector.wait_for, lambda msgs: online(msgs) > before)
            yield box
        finally:
            for t in reversed(tasks):
                t.cancel()
    assert not box.relay.is_on


class County:
    """Signs commands with the county key and reads the receipts off the broker."""

    def __init__(self, collector: Collector, key: Ed25519PrivateKey, box: str = "box-live") -> None:
        self.collector, self.key, self.box = collector, key, box
        self.topic = Topics().box_cmd(box)

    def token(self, kind: str, data: dict[str, Any], *, cmd_id: str | None = None, to: list[str] | None = None,
              iat: int | None = None, ttl: int = 3600) -> tuple[str, bytes]:
        cmd_id = cmd_id or str(uuid.uuid4())
        now = int(time.time()) if iat is None else iat
        return cmd_id, jws.sign({"v": 1, "id": cmd_id, "kind": kind, "iat": now, "exp": now + ttl,
                                 "to": to or [f"box:{self.box}"], "data": data}, self.key, KID)

    def send(self, kind: str, data: dict[str, Any], *, retain: bool = False, **kw: Any) -> str:
        cmd_id, token = self.token(kind, data, **kw)
        self.collector.publish(self.topic, token, retain=retain)
        return cmd_id

    def live(self, session: str, session_key: Ed25519PrivateKey, cls: str = "emergency", max_s: float = 60,
             **kw: Any) -> str:
        return self.send("broadcast.live", live_data(session, session_key, cls, max_s), **kw)

    def receipts(self, cmd: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.collector.envelopes()
                if e["kind"] == "cmd" and e["data"]["cmd"] == cmd and e["box"] == self.box]

    def states(self, cmd: str) -> list[str]:
        return [r["state"] for r in self.receipts(cmd)]

    async def wait(self, cmd: str, state: str, within: float = 20.0) -> dict[str, Any]:
        await asyncio.to_thread(self.collector.wait_for, lambda _: state in self.states(cmd), within)
        return next(r for r in self.receipts(cmd) if r["state"] == state)


def live_data(session: str, session_key: Ed25519PrivateKey, cls: str = "emergency", max_s: float = 60,
              level: int = 2) -> dict[str, Any]:
    return {"session": session, "class": cls, "level": level, "title": "喊话",
            "codec": {"name": "opus", "rate": 48000, "channels": 1}, "max_s": max_s, "key": raw_public(session_key)}


def audio_publisher(collector: Collector, session: str) -> Any:
    topic = f"vc/v1/live/{session}/audio"
    return lambda pkt: collector.client.publish(topic, pkt, qos=0)


def relative(times: list[float]) -> list[float]:
    return [round(t - times[0], 3) for t in times]


def same_rhythm(want: list[float], got: list[float], receipt: dict[str, Any], slack: float = 0.04) -> None:
    """`got` clicks at `want`'s times relative to the first, within `slack` plus 20 ms for each frame the
    jitter buffer skipped (a quiet one) or stretched while adapting its delay (the receipt says how many)."""
    frame = 0.02
    tolerance = slack + frame * (receipt.get("skipped", 0) + receipt.get("stretched", 0))
    assert len(got) == len(want), (want, got, receipt)
    for w, g in zip(relative(want), relative(got), strict=True):
        assert abs(w - g) <= tolerance, (relative(want), relative(got), receipt)
