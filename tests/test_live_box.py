"""Live broadcast on the box, end to end without a browser: a Python sender encodes a click train with the
same libopus binding and signs packets as the county server does; everything else is real (mosquitto, the
link, the command router, the broadcast engine and service, the live player, libopus), down to the relay
twin (gpiozero MockFactory) and the loudspeaker twin that records what the box played."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sim.live_audio import LiveSender, click_train, find_clicks
from sim.netem import NetemProxy
from tests.live_support import (
    Box,
    County,
    audio_publisher,
    box_config,
    county_keypair,
    need_opus,
    running,
    same_rhythm,
)
from tests.support import Collector, Mosquitto

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("opus")]


@pytest.fixture
def opus() -> None:
    need_opus()

CLICKS = [0.3, 0.8, 1.4, 1.9]
SPEECH = click_train(CLICKS, 2.2)


def session_id() -> str:
    return "s" + secrets.token_hex(8)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    return county_keypair(tmp_path)


async def wait_relay_off(box: Box, collector: Collector) -> None:
    await asyncio.to_thread(collector.wait_for, lambda _: not box.relay.is_on, 20)


async def test_live_session_plays_the_speech_in_order(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                      keys: Any) -> None:
    box = Box(box_config(tmp_path, broker.url, keys[1]))
    county = County(collector, keys[0])
    sid = session_id()
    sender = LiveSender(sid)
    async with running(box, collector):
        cmd = county.live(sid, sender.key)
        await county.wait(cmd, "started")
        sent = await sender.stream(SPEECH, audio_publisher(collector, sid))
        finished = await county.wait(cmd, "finished")
        await wait_relay_off(box, collector)
    assert county.states(cmd) == ["received", "started", "finished"]
    assert box.relay.events() == ["off", "on", "off"]
    # the same rhythm: each click at its time relative to the first (within two frames, and the adaptation)
    same_rhythm(CLICKS, find_clicks(box.speaker.pcm()), finished)
    p = finished["packets"]
    assert finished["live"] is True and finished["end"] == "ended" and finished["session"] == sid
    assert p["received"] == len(sent) and p["lost"] == 0 and p["late"] == 0 and p["dropped"] == {}
    assert finished["link_poor"] is False
    assert box.speaker.volume == 100  # emergency volume


async def test_refused_packets_and_commands_play_nothing(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                        keys: Any) -> None:
    box = Box(box_config(tmp_path, broker.url, keys[1]), silence_s=1.0)
    county = County(collector, keys[0])
    old = LiveSender(session_id())
    async with running(box, collector):
        # an earlier session, played in full
        first = county.live(old.session, old.key)
        await county.wait(first, "started")
        old_packets = list(LiveSender(old.session, old.key).packets(SPEECH[:48000 * 2]))
        await old.stream(SPEECH[:48000 * 2], audio_publisher(collector, old.session))
        await county.wait(first, "finished")
        await wait_relay_off(box, collector)
        # ... whose packets, sent again after its end, are counted and not played
        chunks_before = len(box.speaker.sessions)
        for pkt in old_packets[:5]:
            audio_publisher(collector, old.session)(pkt)
        await asyncio.to_thread(collector.wait_for, lambda _: box.live.counters["dropped.after_end"] >= 5, 10)
        # a new session fed only with forged packets (another key) and the old session's packets
        sid = session_id()
        good_key = Ed25519PrivateKey.generate()
        cmd = county.live(sid, good_key)
        await county.wait(cmd, "started")
        forger = LiveSender(sid)  # right session, wrong key
        pub = audio_publisher(collector, sid)
        for pkt in forger.packets(SPEECH[:48000]):
            pub(pkt)
        for pkt in old_packets[:10]:
            pub(pkt)
        failed = await county.wait(cmd, "failed")
        await wait_relay_off(box, collector)
        # commands that must not start anything
        expired = county.live(session_id(), good_key, iat=int(time.time()) - 7200)
        other = county.live(session_id(), good_key, to=["box:someone-else"])
        retained = county.live(session_id(), good_key, retain=True)
        for c, why in ((expired, "expired"), (other, "not_addressed"), (retained, "retained")):
            r = await county.wait(c, "rejected")
            assert r["reason"] == why
    assert failed["reason"] == "no_audio"
    assert len(box.speaker.sessions) == chunks_before + 1 and box.speaker.sessions[-1] == []  # nothing played
    c = box.live.counters
    assert c["dropped.bad_signature"] == len(list(LiveSender(sid).packets(SPEECH[:48000])))
    assert c["dropped.other_session"] == 10
    assert c["dropped.after_end"] >= 5
    # relay: on for the first session, on for the second (it did start: warm-up), off after each
    assert box.relay.events() == ["off", "on", "off", "on", "off"]
    assert box.router is not None
    assert box.router.counters["rejected.expired"] == 1 and box.router.counters["rejected.retained"] == 1


async def test_replayed_duplicate_and_reordered_packets_play_once_in_order(
        tmp_path: Path, broker: Mosquitto, collector: Collector, keys: Any) -> None:
    box = Box(box_config(tmp_path, broker.url, keys[1]))
    county = County(collector, keys[0])
    sid = session_id()
    sender = LiveSender(sid)
    held: list[bytes] = []

    def shuffle(i: int, pkt: bytes) -> bytes | None:
        # every 10th packet is sent twice; every 7th is held back and sent after the next one (reordered)
        if i % 7 == 3:
            held.append(pkt)
            return None
        if held:
            pub(pkt)
            return held.pop()
        if i % 10 == 5:
            pub(pkt)
        return pkt

    pub = audio_publisher(collector, sid)
    async with running(box, collector):
        cmd = county.live(sid, sender.key)
        await county.wait(cmd, "started")
        sent = await sender.stream(SPEECH, pub, on_packet=shuffle)
        finished = await county.wait(cmd, "finished")
    p = finished["packets"]
    assert p["received"] == len(sent) - len(held) and p["lost"] == 0, finished  # the last one held: never sent
    assert p["dropped"]["duplicate"] == len([i for i in range(len(sent)) if i % 10 == 5 and i % 7 not in (3, 4)])
    same_rhythm(CLICKS, find_clicks(box.speaker.pcm()), finished)


async def test_lossy_jittery_link_conceals_and_keeps_the_relay_on(tmp_path: Path, broker: Mosquitto,
                                                                   collector: Collector, keys: Any) -> None:
    async with NetemProxy("127.0.0.1", broker.port, jitter_ms=200, loss=0.1, rto_ms=200, seed=7) as proxy:
        box = Box(box_config(tmp_path, proxy.url, keys[1]), silence_s=3.0)
        county = County(collector, keys[0])
        sid = session_id()
        sender = LiveSender(sid, per_packet=1)  # 20 ms packets: 50 a second, so the loss hits many
        long_speech = click_train([0.4 + 0.6 * i for i in range(4)], 2.6)
        async with running(box, collector):
            cmd = county.live(sid, sender.key)
            await county.wait(cmd, "started", within=30)
            await sender.stream(long_speech, audio_publisher(collector, sid))
            finished = await county.wait(cmd, "finished", within=30)
            await wait_relay_off(box, collector)
    print("lossy link:", finished, "proxy:", proxy.stats)
    assert proxy.stats.losses > 0
    assert finished["end"] == "ended"
    assert finished["concealed"] + finished["underrun"] + finished["packets"]["late"] > 0
    assert box.relay.events() == ["off", "on", "off"]  # no flapping
    assert len(find_clicks(box.speaker.pcm())) >= 3  # the speech still came through


async def test_sender_gone_ends_after_the_silence_timeout(tmp_path: Path, broker: Mosquitto, collector: Collector,
                                                          keys: Any) -> None:
    box = Box(box_config(tmp_path, broker.url, keys[1], live_silence_s=1.0))  # the config key, as a box has it
    county = County(collector, keys[0])
    sid = session_id()
    sender = LiveSender(sid)
    async with running(box, collector):
        assert box.live.silence_s == 1.0
        cmd = county.live(sid, sender.key)
        await county.wait(cmd, "started")
        await sender.stream(SPEECH[:48000 * 2], audio_publisher(collector, sid), end=False)  # no END
        t_last = time.monotonic()
        finished = await county.wait(cmd, "finished")
        await wait_relay_off(box, collector)
        took = time.monotonic() - t_last
    assert finished["end"] == "silence"
    assert box.relay.events() == ["off", "on", "off"]
    print(f"last packet -> relay off: {took:.2f} s (silence_s 1.0 + off_delay 0.1)")


async def test_live_daily_waits_for_quiet_hours_and_emergency_preempts_it(
        tmp_path: Path, broker: Mosquitto, collector: Collector, keys: Any) -> None:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    quiet = [(now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")]
    box = Box(box_config(tmp_path, broker.url, keys[1], quiet_hours=quiet), silence_s=1.0)
    county = County(collector, keys[0])
    async with running(box, collector):
        daily = county.live(session_id(), Ed25519PrivateKey.generate(), cls="daily")
        held = await county.wait(daily, "scheduled")
        assert held["reason"] == "quiet_hours"
        sid = session_id()
        sender = LiveSender(sid)
        em = county.live(sid, sender.key, cls="emergency")
        await county.wait(em, "started")
        await sender.stream(SPEECH[:48000 * 2], audio_publisher(collector, sid))
        await county.wait(em, "finished")
    assert county.states(daily) == ["received", "scheduled"]


async def test_cancel_and_max_duration_end_a_live_session_with_the_relay_off(
        tmp_path: Path, broker: Mosquitto, collector: Collector, keys: Any) -> None:
    box = Box(box_config(tmp_path, broker.url, keys[1]))
    county = County(collector, keys[0])
    cut, capped = LiveSender(session_id()), LiveSender(session_id())
    async with running(box, collector):
        # 结束 from another console (or the END packet lost): broadcast.cancel naming the session's command
        first = county.live(cut.session, cut.key)
        await county.wait(first, "started")
        stream = asyncio.create_task(cut.stream(SPEECH, audio_publisher(collector, cut.session), end=False))
        await asyncio.to_thread(collector.wait_for, lambda _: len(box.speaker.pcm()) > 48000, 10)
        cancel = county.send("broadcast.cancel", {"broadcast": first})
        await county.wait(cancel, "applied")
        await wait_relay_off(box, collector)
        playing_after_cancel = box.speaker.is_open
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stream
        # max_s 1 on 2.2 s of speech: the box stops at 1 s
        second = county.live(capped.session, capped.key, max_s=1)
        await county.wait(second, "started")
        await capped.stream(SPEECH, audio_publisher(collector, capped.session))
        finished = await county.wait(second, "finished")
        await wait_relay_off(box, collector)
    assert county.states(first) == ["received", "started", "cancelled"]
    assert not playing_after_cancel
    assert finished["end"] == "max_duration" and finished["played_s"] < 1.0
    assert box.relay.events() == ["off", "on", "off", "on", "off"]


async def test_the_simulator_speaks_a_wav_file_through_a_lossy_link(tmp_path: Path, broker: Mosquitto,
                                                                      collector: Collector, keys: Any) -> None:
    """`python -m sim.live_audio FILE.wav` (a child process, as an operator would run it) to a box behind the
    netem proxy with 5 % loss and 100 ms jitter: the box plays the file's clicks."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    from sim.live_audio import write_wav
    from tests.live_support import KID

    key_file = tmp_path / "county.key"
    key_file.write_bytes(keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    key_file.chmod(0o600)
    wav = write_wav(tmp_path / "speech.wav", SPEECH[:48000 * 2 * 3 // 2])  # 1.5 s: three clicks
    async with NetemProxy("127.0.0.1", broker.port, jitter_ms=100, loss=0.05, seed=3) as proxy:
        box = Box(box_config(tmp_path, proxy.url, keys[1]))
        county = County(collector, keys[0])
        async with running(box, collector):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sim.live_audio", str(wav), "--broker", broker.url, "--key", str(key_file),
                "--kid", KID, "--to", "box:box-live", stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            cmd = out.decode().strip()
            finished = await county.wait(cmd, "finished", within=30)
            await wait_relay_off(box, collector)
    assert finished["end"] == "ended" and finished["packets"]["received"] > 0
    heard = len(find_clicks(box.speaker.pcm()))
    # a click in a packet the lossy link made late is concealed, not played: the receipt accounts for it
    assert heard >= 1, finished
    assert heard == 3 or finished["packets"]["late"] + finished["packets"]["lost"] > 0, finished


async def test_what_is_said_during_warm_up_and_chime_is_kept(tmp_path: Path, broker: Mosquitto,
                                                             collector: Collector, keys: Any) -> None:
    """The speaker starts at once; the box listens from the moment it takes the session, plays after its
    1 s warm-up, and takes the extra delay back in the pauses (quiet frames skipped, never speech)."""
    box = Box(box_config(tmp_path, broker.url, keys[1], warmup_s=1.0))
    county = County(collector, keys[0])
    sid = session_id()
    sender = LiveSender(sid)
    async with running(box, collector):
        cmd = county.live(sid, sender.key)
        await county.wait(cmd, "received")
        await asyncio.sleep(0.2)  # the box subscribes as it takes the command (a few ms here)
        await sender.stream(SPEECH, audio_publisher(collector, sid))
        finished = await county.wait(cmd, "finished")
    started = county.receipts(cmd)[1]
    assert started["state"] == "started" and started["lead_s"] >= 1.0
    assert len(find_clicks(box.speaker.pcm())) == len(CLICKS)  # the first click (0.3 s, during warm-up) too
    assert finished["packets"]["lost"] == 0 and finished["packets"]["late"] == 0
