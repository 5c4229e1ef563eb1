"""The MediaRecorder path of live broadcast, server side: the WebM and Ogg Opus stream readers (county/webm.py,
county/oggopus.py) on real container bytes made here by ffmpeg (libopus) and checked against ffprobe, fed in
slices of every size the browser might use; garbage and damaged streams (hypothesis) only ever end in
DemuxError with bounded buffers; and through the real server (uvicorn, SQLite and PostgreSQL, mosquitto):
a v2 session's WebM slices become the same signed packets (seq, stream positions from the Opus TOC) as
WebCodecs frames, and a malformed slice ends that session cleanly (END to the boxes, error 400 / close 4400)
while the server goes on serving the next one."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.broadcast.live import HEADER, PacketGate
from agent.opus import Decoder
from county.oggopus import OggOpusReader
from county.store.tables import broadcasts
from county.webm import MAX_ELEMENT, DemuxError, WebmOpusReader
from sim.live_audio import click_train, write_wav
from tests.live_support import need_opus
from tests.support import Collector, Mosquitto

pytestmark = [pytest.mark.timeout(120)]

READERS: dict[str, type[WebmOpusReader] | type[OggOpusReader]] = {"webm": WebmOpusReader, "ogg": OggOpusReader}


def need_ffmpeg() -> None:
    import os

    if shutil.which("ffmpeg") and shutil.which("ffprobe"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("ffmpeg/ffprobe missing (apt-get install ffmpeg)")
    pytest.skip("ffmpeg/ffprobe missing (apt-get install ffmpeg)")


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, list[dict[str, Any]]]]:
    """container -> (the file's bytes, ffprobe's packets). WebM with 20 ms frames (what Chromium's
    MediaRecorder writes is WebM with Opus; ffmpeg's muxer writes the same SimpleBlocks), Ogg with 60 ms."""
    need_ffmpeg()
    d = tmp_path_factory.mktemp("demux")
    wav = write_wav(d / "in.wav", click_train([0.2, 0.7, 1.5], 2.0))
    out = {}
    for container, frame_ms in (("webm", 20), ("ogg", 60)):
        path = d / f"a.{container}"
        # Ogg: a page per packet, as a recorder flushing at every slice writes it (ffmpeg's default is 1 s)
        paging = ["-page_duration", str(frame_ms * 1000)] if container == "ogg" else []
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "24k",
                        "-frame_duration", str(frame_ms), *paging, str(path)], check=True, timeout=60)
        probe = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
             "packet=size,duration:stream=time_base", "-of", "json", str(path)],
            check=True, capture_output=True, timeout=60).stdout)
        num, den = probe["streams"][0]["time_base"].split("/")
        packets = [{"size": int(p["size"]), "samples": int(p["duration"]) * 48000 * int(num) // int(den)}
                   for p in probe["packets"]]
        out[container] = (path.read_bytes(), packets)
    return out


def demux(container: str, data: bytes, slice_size: int) -> list[bytes]:
    reader = READERS[container]()
    got: list[bytes] = []
    for i in range(0, len(data), slice_size):
        got += reader.feed(data[i:i + slice_size])
    return got


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_the_packets_are_ffprobes_in_any_slicing(streams: dict[str, Any], container: str) -> None:
    need_opus()
    data, probed = streams[container]
    whole = demux(container, data, len(data))
    assert [len(p) for p in whole] == [p["size"] for p in probed]
    # durations from each packet's TOC (what the server uses for stream positions) are ffprobe's; the last one
    # ffprobe may show trimmed to the end of the input (Ogg granule / WebM discard padding)
    dec = Decoder(48000, 1)
    toc = [dec.samples_in(p) for p in whole]
    dec.close()
    want = [p["samples"] for p in probed]
    assert toc[:-1] == want[:-1] and want[-1] <= toc[-1]
    assert set(toc[:-1]) == {960 if container == "webm" else 2880}
    for size in (1, 7, 100, 333, 4096):
        assert demux(container, data, size) == whole, size


def test_the_servers_own_ogg_recording_reads_back(streams: dict[str, Any], tmp_path: Path) -> None:
    """county.live.ogg_opus (the fallback recording) and the reader share the page CRC: both against ffprobe."""
    from county.live import ogg_opus

    frames = demux("webm", streams["webm"][0], 4096)
    audio = ogg_opus([(f, 960) for f in frames])
    assert demux("ogg", audio, 333) == frames
    path = tmp_path / "rec.ogg"
    path.write_bytes(audio)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "packet=size", "-of", "json",
                                       str(path)], check=True, capture_output=True, timeout=60).stdout)
    assert [int(p["size"]) for p in probe["packets"]] == [len(f) for f in frames]


def test_webm_and_ogg_of_the_same_audio_give_the_same_packets(streams: dict[str, Any], tmp_path: Path) -> None:
    data, _ = streams["webm"]
    src = tmp_path / "a.webm"
    src.write_bytes(data)
    dst = tmp_path / "copy.ogg"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy", str(dst)], check=True,
                   timeout=60)
    assert demux("ogg", dst.read_bytes(), 500) == demux("webm", data, 500)


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_a_cut_stream_gives_a_prefix_and_waits(streams: dict[str, Any], container: str) -> None:
    data, _ = streams[container]
    whole = demux(container, data, len(data))
    for cut in (0, 30, len(data) // 3, len(data) - 1):
        part = demux(container, data[:cut], 64)
        assert part == whole[:len(part)]
    assert len(demux(container, data[:len(data) // 2], 64)) > 0


def test_other_codecs_and_garbled_streams_are_refused(streams: dict[str, Any], tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "in.wav", click_train([0.2], 0.5))
    for container in ("webm", "ogg"):
        path = tmp_path / f"v.{container}"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "libvorbis", str(path)],
                       check=True, timeout=60)
        with pytest.raises(DemuxError, match="not Opus"):
            demux(container, path.read_bytes(), 256)
    webm, _ = streams["webm"]
    ogg, _ = streams["ogg"]
    with pytest.raises(DemuxError, match="EBML header"):
        WebmOpusReader().feed(b"\x42\x86\x81\x01" + webm)
    with pytest.raises(DemuxError, match="capture pattern"):
        OggOpusReader().feed(b"xx" + ogg)
    damaged = bytearray(ogg)
    damaged[200] ^= 0x40
    with pytest.raises(DemuxError, match="CRC"):
        demux("ogg", bytes(damaged), 4096)
    # a SimpleBlock that claims 2^40 bytes is refused at its header, not waited for
    huge = webm + b"\xa3\x01" + (1 << 40).to_bytes(7, "big")  # an 8-byte size
    with pytest.raises(DemuxError, match="at most"):
        demux("webm", huge, len(huge))
    # nor an element to skip that would swallow the rest of the session
    with pytest.raises(DemuxError, match="at most"):
        demux("webm", webm + b"\xec\x01" + (1 << 40).to_bytes(7, "big"), 4096)
    # unknown sizes only on Segment and Cluster
    with pytest.raises(DemuxError, match="unknown size"):
        demux("webm", webm + b"\x16\x54\xae\x6b\xff", 4096)


def _bounded(container: str, data: bytes, slices: list[int]) -> None:
    reader = READERS[container]()
    at = 0
    try:
        for n in [*slices, len(data)]:
            packets = reader.feed(data[at:at + n])
            at += n
            assert all(isinstance(p, bytes) and 0 < len(p) <= 1 << 16 for p in packets)
            assert len(reader._buf) <= MAX_ELEMENT + 70_000  # a page or an element, never more
    except DemuxError:
        pass  # the only way a stream is refused


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(container=st.sampled_from(["webm", "ogg"]), data=st.binary(max_size=3000),
       slices=st.lists(st.integers(1, 400), max_size=10))
def test_garbage_only_ever_ends_in_demux_error(container: str, data: bytes, slices: list[int]) -> None:
    _bounded(container, data, slices)
    _bounded(container, (b"\x1a\x45\xdf\xa3" if container == "webm" else b"OggS\0\x02") + data, slices)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(container=st.sampled_from(["webm", "ogg"]),
       edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6),
       slices=st.lists(st.integers(1, 700), max_size=10))
def test_damaged_real_streams_only_ever_end_in_demux_error(streams: dict[str, Any], container: str,
                                                            edits: list[tuple[int, int]], slices: list[int]) -> None:
    data = bytearray(streams[container][0])
    for at, value in edits:
        data[at % len(data)] = value
    _bounded(container, bytes(data), slices)


# ------------------------------------------------------------------------------------------- the server
def _session_key(token: str) -> bytes:
    body = token.split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    key: str = payload["data"]["key"]
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))


async def test_webm_slices_become_signed_packets_and_garbage_ends_only_that_session(
        db_url: str, broker: Mosquitto, collector: Collector, tmp_path: Path, streams: dict[str, Any]) -> None:
    need_opus()
    from tests.test_live_server import served

    webm, probed = streams["webm"]
    ogg, _ = streams["ogg"]
    async with served(db_url, broker, tmp_path) as (env, host):
        url = f"ws://{host}/ws/v1/live"
        async with websockets.connect(url, additional_headers=env.auth("operator")) as ws:
            await ws.send(json.dumps({"type": "start", "v": 2, "container": "webm", "to": ["box:a1"]}))
            started = json.loads(await ws.recv())
            assert started["type"] == "started" and started["v"] == 2, started
            for i in range(0, len(webm), 211):  # about a MediaRecorder slice's size
                await ws.send(webm[i:i + 211])
            await ws.send(json.dumps({"type": "end"}))
            ended = json.loads(await ws.recv())
        assert ended["end"] == "ended" and ended["frames"] == len(probed) and ended["frames_bad"] == 0, ended
        # a second session on the same server: some good Ogg, then a slice of garbage
        async with websockets.connect(url, additional_headers=env.auth("operator")) as ws:
            await ws.send(json.dumps({"type": "start", "v": 2, "container": "ogg", "to": ["box:a1"]}))
            second = json.loads(await ws.recv())
            await ws.send(ogg[:ogg.index(b"OggS", len(ogg) // 2)])  # whole pages
            await ws.send(b"this is not an Ogg page at all" * 3)
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4400, (ws.close_code, error)
        assert error["type"] == "error" and error["status"] == 400 and "ogg stream" in error["detail"], error
        # the server still serves: a v2 start naming no container is v1 (raw frames); an unknown version is refused
        async with websockets.connect(url, additional_headers=env.auth("operator")) as ws:
            await ws.send(json.dumps({"type": "start", "v": 3, "to": ["box:a1"]}))
            assert json.loads(await ws.recv())["status"] == 400
        rows = await env.rows(broadcasts, broadcasts.c.id == started["id"])
        ends = await env.audit_rows("broadcast.live.end")

    def audio(session: str) -> list[bytes]:
        return [m.payload for m in collector.snapshot() if m.topic.endswith(f"/live/{session}/audio")]

    # what went to the boxes: signed packets (verified with the session key of the command), seq 0.., each
    # packet's pos = the samples before it, holding exactly the WebM's Opus packets in order; then END
    await asyncio.to_thread(collector.wait_for, lambda _: len(audio(started["session"])) >= ended["packets"] + 3)
    gate = PacketGate(started["session"], _session_key(rows[0]["token"]))
    admitted = [gate.admit(raw) for raw in audio(started["session"])]
    assert gate.counters.get("dropped.bad_signature", 0) == 0
    packets = [p for p in admitted if p is not None]
    assert [p.seq for p in packets] == list(range(len(packets)))
    assert packets[-1].end and not any(p.end for p in packets[:-1])
    frames = [f for p in packets for f in p.frames]
    assert frames == demux("webm", webm, len(webm))
    dec = Decoder(48000, 1)
    pos = 0
    for p in packets:
        assert p.pos == pos
        pos += sum(dec.samples_in(f) for f in p.frames)
    dec.close()
    # the broken session: its good audio went out, then END (the boxes stop at once, not after a silence timeout)
    await asyncio.to_thread(collector.wait_for, lambda _: any(
        raw[3] & 1 for raw in audio(second["session"]) if len(raw) >= HEADER.size))
    broken = [e["detail"] for e in ends if e["detail"]["id"] == second["id"]]
    assert broken and broken[0]["end"] == "malformed" and "capture pattern" in broken[0]["error"]
    assert broken[0]["frames"] > 0
