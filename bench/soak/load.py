"""Load for the soak: a wristband gateway twin with hundreds of wearers, camera twins, signed commands.

- `BandLoad`: one `sim.wristband.GatewayTwin` (watch codec, TCP) with N walking wearers. Every tick a slice of
  them reports, so each wearer reports every `report_s`; at random (seeded) a wearer who has not pressed yet
  presses SOS, and its next frame carries the alarm. Each wearer presses at most once, so one press is one
  alarm episode (no folding) and the checker can follow every press by wearer. While the agent is down the
  twin cannot deliver frames: the tick is skipped and a pending press waits in the band, as a real band does.
- `cameras()`: camera twins from sim/cameras.py (healthy, flapping, slow), probed by the agent over loopback.
- `CommandLoad`: signs broadcast commands with a key the agent trusts (agent.protocol.jws.sign), mostly valid
  short emergencies, and some that must be refused: signed by an unknown key under the trusted kid, expired,
  addressed to another box, and a replay of an earlier valid token.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol import jws
from drivers.wristband.transport import GatewayGone
from sim.cameras import Mode, SimCamera
from sim.wristband import GatewayTwin, SimWearer

LAT0, LON0 = 30.52, 114.31
DEVICE0 = 8_800_000_000
KID = "soak-county"
INVALID_KINDS = ("bad_signature", "expired", "other_box", "replay")


def wearer_table(n: int) -> list[dict[str, str]]:
    return [{"id": f"W{i:04d}", "device": str(DEVICE0 + i)} for i in range(n)]


@dataclass
class Press:
    t: float  # monotonic, when the band sent its alarm frame
    wall: float
    device: str
    wearer: str


class BandLoad:
    def __init__(self, n: int, rng: random.Random, *, report_s: float = 10.0, tick_s: float = 1.0) -> None:
        self.rng = rng
        self.report_s, self.tick_s = report_s, tick_s
        wearers = [SimWearer(str(DEVICE0 + i), self._walk(i), speed_m_s=rng.uniform(0.5, 2.0), jitter_m=3.0)
                   for i in range(n)]
        self.twin = GatewayTwin("watch", wearers, link="tcp", seed=rng.randrange(1 << 30))
        self.devices = [w.device for w in wearers]
        self.unpressed = list(self.devices)
        rng.shuffle(self.unpressed)
        self.pending: dict[str, float] = {}  # device -> wall time pressed, until its alarm frame is sent
        self.presses: list[Press] = []
        self.frames = 0
        self.skipped_ticks = 0

    @staticmethod
    def _walk(i: int) -> list[tuple[float, float]]:
        lat, lon = LAT0 + (i % 20) * 2e-4, LON0 + (i // 20) * 2e-4
        return [(lat, lon), (lat + 5e-4, lon), (lat + 5e-4, lon + 5e-4), (lat, lon + 5e-4)]

    async def __aenter__(self) -> BandLoad:
        await self.twin.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.twin.__aexit__(*exc)

    @property
    def url(self) -> str:
        return self.twin.url

    def press(self) -> None:
        if self.unpressed:
            device = self.unpressed.pop()
            self.twin.press_sos(device)
            self.pending[device] = time.time()

    async def run(self, press_per_s: float) -> None:
        slices = max(1, round(self.report_s / self.tick_s))
        tick = 0
        while True:
            await asyncio.sleep(self.tick_s)
            self.twin.advance(self.tick_s)
            if self.rng.random() < press_per_s * self.tick_s:
                self.press()
            try:
                await self.twin.connected(0.05)
            except TimeoutError:
                self.skipped_ticks += 1  # the agent is down: nothing reaches it; presses stay pending
                continue
            due = set(self.devices[tick % slices::slices]) | set(self.pending)
            tick += 1
            try:
                await self._send(due)
            except (GatewayGone, OSError, TimeoutError):
                self.skipped_ticks += 1

    async def _send(self, devices: set[str]) -> None:
        for device in sorted(devices):
            frame = self.twin.frame_for(self.twin.wearers[device])
            await self.twin.send(frame)
            self.frames += 1
            if device in self.pending:
                self.pending.pop(device)
                self.presses.append(Press(time.monotonic(), time.time(), device, f"W{int(device) - DEVICE0:04d}"))

    def acked_devices(self) -> set[str]:
        """Bands whose alarm the agent answered (an AL reply on the wire)."""
        return {f.split(b"*")[1].decode() for f in self.twin.reply_frames() if f.endswith(b"*AL]")}


async def cameras() -> list[SimCamera]:
    cams = [SimCamera(id="cam-healthy", scheme="none", onvif=False),
            SimCamera(id="cam-flapping", scheme="none", onvif=False, mode=Mode.FLAPPING, flap_every=2),
            SimCamera(id="cam-slow", scheme="none", onvif=False, mode=Mode.SLOW, delay_s=0.5)]
    for c in cams:
        await c.start()
    return cams


@dataclass
class SentCommand:
    id: str
    valid: bool
    why: str  # "valid" or one of INVALID_KINDS
    t: float  # monotonic when published
    token: str


@dataclass
class CommandLoad:
    key: Ed25519PrivateKey
    box: str
    rng: random.Random
    sent: list[SentCommand] = field(default_factory=list)
    stranger: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def next(self) -> SentCommand:
        """The next command to publish: about 2 in 3 valid."""
        now = int(time.time())
        valid_before = [c for c in self.sent if c.valid]
        why = "valid" if self.rng.random() < 0.65 else self.rng.choice(INVALID_KINDS)
        if why == "replay" and not valid_before:
            why = "valid"
        if why == "replay":
            old = self.rng.choice(valid_before)
            cmd = SentCommand(old.id, False, why, time.monotonic(), old.token)
        else:
            cid = str(uuid.uuid4())
            iat, exp = (now - 7200, now - 3600) if why == "expired" else (now, now + 600)
            to = ["box:some-other-box"] if why == "other_box" else [f"box:{self.box}"]
            payload: dict[str, Any] = {
                "v": 1, "id": cid, "kind": "broadcast.play", "iat": iat, "exp": exp, "to": to,
                "data": {"class": "emergency", "level": 1, "title": "soak", "text": "演练", "audio": None,
                         "start": None, "end": now + 120, "volume": None}}
            token = jws.sign(payload, self.stranger if why == "bad_signature" else self.key, KID)
            cmd = SentCommand(cid, why == "valid", why, time.monotonic(), token)
        self.sent.append(cmd)
        return cmd


def write_trust(key_dir: Path) -> tuple[Ed25519PrivateKey, Path]:
    from agent.keys import new_keypair

    priv, pub = new_keypair(KID, key_dir)
    return jws.load_private_key(priv), pub
