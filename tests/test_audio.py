"""Audio drivers against the real tools: aplay to ALSA's `null` device, ffmpeg decoding, espeak-ng.

Player faults use real child processes too: small shell scripts standing in for aplay that crash or
hang, so the kill-the-process-group path runs for real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from drivers.audio.base import AudioPlayer, MediaError, PlaybackError, Tts, TtsError
from drivers.audio.media import canonical_mime, chime_wav, decode_audio, sniff, wav_duration
from drivers.audio.player import AlsaPlayer, mixer_ctl, sanitize
from drivers.audio.tts import EspeakTts
from sim.audio import SilentTts, TwinPlayer


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    wav = d / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(wav), "synth", "1", "sine", "440"],
                   check=True)
    out = {"wav": wav}
    for ext, codec in (("mp3", ["-c:a", "libmp3lame"]), ("ogg", ["-c:a", "libopus"])):
        out[ext] = d / f"tone.{ext}"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), *codec, str(out[ext])], check=True)
    return out


def fake_aplay(tmp_path: Path, body: str) -> str:
    """A stand-in for aplay: a real process that misbehaves; it records its pid for the test."""
    script = tmp_path / "aplay"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def started(pid_file: Path) -> None:
    """Wait until the stand-in child wrote its pid (another process: nothing to await but the file)."""
    while not os.path.exists(pid_file):
        await asyncio.sleep(0.01)


def gone(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


async def test_aplay_plays_a_wav_to_the_null_device(media: dict[str, Path]) -> None:
    player = AlsaPlayer("null")
    assert isinstance(player, AudioPlayer)
    result = await player.play(media["wav"], "audio/wav", 100)
    # ALSA's `null` PCM takes samples as fast as they come (not paced), so the measured duration_s has no
    # known figure here; the paced test below checks it against the WAV's length
    assert not result.stopped and result.expected_s == pytest.approx(1.0)


async def test_duration_is_the_measured_playing_time(media: dict[str, Path], tmp_path: Path) -> None:
    """A player that takes real time (ffmpeg -re consumes the 1 s WAV at its own rate, like a sound card)."""
    aplay = fake_aplay(tmp_path, 'for last; do :; done; exec ffmpeg -nostdin -loglevel error -re -i "$last" -f null -')
    result = await AlsaPlayer("null", aplay=aplay).play(media["wav"], "audio/wav", 100)
    assert not result.stopped and result.expected_s == pytest.approx(1.0)
    # a lower bound only (a busy machine plays no faster, only later): zero or an unmeasured figure fails it
    assert result.duration_s >= 0.9 * result.expected_s


@pytest.mark.parametrize("kind,mime", [("mp3", "audio/mpeg"), ("ogg", "audio/ogg"), ("wav", "audio/x-wav")])
async def test_ffmpeg_decodes_into_aplay_with_software_gain(media: dict[str, Path], kind: str, mime: str) -> None:
    result = await AlsaPlayer("null").play(media[kind], mime, 40)  # < 100 and no mixer: ffmpeg | aplay
    assert not result.stopped and result.expected_s == pytest.approx(1.0, abs=0.1)


async def test_bytes_source_is_played_and_the_temp_file_removed(media: dict[str, Path], tmp_path: Path) -> None:
    result = await AlsaPlayer("null", tmp_dir=tmp_path).play(media["mp3"].read_bytes(), "audio/mpeg", 70)
    assert result.expected_s == pytest.approx(1.0, abs=0.1)
    assert os.listdir(tmp_path) == []


async def test_unknown_device_is_no_device(media: dict[str, Path]) -> None:
    with pytest.raises(PlaybackError) as exc:
        await AlsaPlayer("nosuchpcm").play(media["wav"], "audio/wav", 100)
    assert exc.value.reason == "no_device"


async def test_player_crash_is_a_playback_error_with_sanitised_detail(media: dict[str, Path], tmp_path: Path) -> None:
    aplay = fake_aplay(tmp_path, "printf 'boom \\033[31msecret\\001\\n' >&2; exit 3")
    with pytest.raises(PlaybackError) as exc:
        await AlsaPlayer("null", aplay=aplay).play(media["wav"], "audio/wav", 100)
    assert exc.value.reason == "player_exit_3"
    assert exc.value.detail == "boom ?[31msecret?" and all(" " <= c <= "~" for c in exc.value.detail)


async def test_decoder_crash_is_reported_as_decoder(media: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + b"\x00" * 50)
    with pytest.raises(PlaybackError) as exc:
        await AlsaPlayer("null").play(bad, "audio/mpeg", 50)
    assert exc.value.reason.startswith(("decoder_exit_", "player_exit_"))


async def test_hung_player_is_killed_with_its_group(media: dict[str, Path], tmp_path: Path) -> None:
    aplay = fake_aplay(tmp_path, "sleep 1000")
    player = AlsaPlayer("null", aplay=aplay, hang_factor=0.1, hang_slack_s=0.1)  # 1 s tone: hung after 0.2 s
    with pytest.raises(PlaybackError) as exc:
        await player.play(media["wav"], "audio/wav", 100)
    assert exc.value.reason == "hang"
    assert gone(tmp_path / "pid")


async def test_hard_timeout(media: dict[str, Path], tmp_path: Path) -> None:
    aplay = fake_aplay(tmp_path, "exec sleep 1000")
    with pytest.raises(PlaybackError) as exc:
        await AlsaPlayer("null", aplay=aplay).play(media["wav"], "audio/wav", 100, timeout_s=0.2)
    assert exc.value.reason == "timeout" and gone(tmp_path / "pid")


async def test_cancel_event_stops_playback_and_kills_the_pipeline(media: dict[str, Path], tmp_path: Path) -> None:
    aplay = fake_aplay(tmp_path, "cat > /dev/null; sleep 1000")  # behind ffmpeg: a decoder | player pipe
    cancel = asyncio.Event()
    player = AlsaPlayer("null", aplay=aplay)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(player.play(media["ogg"], "audio/ogg", 50, cancel), name="test.play")
        await started(tmp_path / "pid")
        cancel.set()
    assert task.result().stopped and gone(tmp_path / "pid")


async def test_task_cancellation_also_kills_the_child(media: dict[str, Path], tmp_path: Path) -> None:
    aplay = fake_aplay(tmp_path, "exec sleep 1000")
    task = asyncio.ensure_future(AlsaPlayer("null", aplay=aplay).play(media["wav"], "audio/wav", 100))
    await started(tmp_path / "pid")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the kernel reaps the killed child
    assert gone(tmp_path / "pid")


async def test_missing_player_binary(media: dict[str, Path]) -> None:
    with pytest.raises(PlaybackError) as exc:
        await AlsaPlayer("null", aplay="/nonexistent/aplay").play(media["wav"], "audio/wav", 100)
    assert exc.value.reason == "player_missing"


def test_helpers() -> None:
    assert mixer_ctl("plughw:1,0") == "hw:1" and mixer_ctl("hw:CARD=Headphones,DEV=0") == "hw:Headphones"
    assert mixer_ctl("default") == "default"
    assert sanitize(b"line1\nlast \xff line\n\n") == "last ? line"
    assert canonical_mime("audio/OPUS") == "audio/ogg"
    with pytest.raises(MediaError):
        canonical_mime("video/mp4")
    assert wav_duration(chime_wav()) == pytest.approx(0.7)
    assert sniff(chime_wav()) == "audio/wav" and sniff(b"OggS....") == "audio/ogg" and sniff(b"\xff\xfb\x90") == \
        "audio/mpeg"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decode_audio_checks_hash_size_and_type(media: dict[str, Path]) -> None:
    data = media["mp3"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    got = decode_audio("audio/mpeg", digest.upper(), b64(data), 1 << 20)
    assert got.data == data and got.ext == "mp3"
    cases = [
        (("audio/mpeg", "0" * 64, b64(data), 1 << 20), "hash_mismatch"),
        (("audio/mpeg", digest, b64(data), len(data) - 1), "audio_too_large"),
        (("audio/mpeg", digest, b64(data) * 100, 1000), "audio_too_large"),  # refused before decoding
        (("audio/ogg", digest, b64(data), 1 << 20), "audio_type"),  # says Ogg, is MP3
        (("audio/flac", digest, b64(data), 1 << 20), "audio_type"),
        (("audio/mpeg", digest, "not*base64!", 1 << 20), "bad_audio"),
    ]
    for args, reason in cases:
        with pytest.raises(MediaError) as exc:
            decode_audio(*args)
        assert exc.value.reason == reason, args


async def test_espeak_speaks_mandarin_into_a_wav(tmp_path: Path) -> None:
    tts = EspeakTts("cmn")
    assert isinstance(tts, Tts)
    out = await tts.synth("明天上午九点停水,请提前储水。", tmp_path / "notice.wav")
    duration = wav_duration(out.read_bytes())
    assert duration is not None and duration > 1.0
    assert not (tmp_path / "notice.wav.part").exists()
    result = await AlsaPlayer("null").play(out, "audio/wav", 100)
    assert result.expected_s == pytest.approx(duration)


async def test_tts_errors(tmp_path: Path) -> None:
    with pytest.raises(TtsError):
        await EspeakTts("cmn").synth("   ", tmp_path / "x.wav")
    with pytest.raises(TtsError):
        await EspeakTts("no-such-voice").synth("hello", tmp_path / "x.wav")
    with pytest.raises(TtsError):
        await EspeakTts(binary="/nonexistent/espeak-ng").synth("hello", tmp_path / "x.wav")
    assert os.listdir(tmp_path) == []


async def test_silent_tts_twin(tmp_path: Path) -> None:
    out = await SilentTts().synth("四个字儿", tmp_path / "s.wav")
    assert wav_duration(out.read_bytes()) == pytest.approx(1.0)


# -- the twin player follows the same contract -------------------------------------------------------

async def test_twin_plays_for_the_real_duration_scaled(media: dict[str, Path]) -> None:
    twin = TwinPlayer(speed=20)
    assert isinstance(twin, AudioPlayer)
    for kind, mime in (("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("ogg", "audio/ogg")):
        result = await twin.play(media[kind], mime, 55)
        assert result.expected_s == pytest.approx(1.0, abs=0.1) and not result.stopped
    assert twin.events() == [("play", "tone.wav", 55), ("end", "tone.wav", 55), ("play", "tone.mp3", 55),
                             ("end", "tone.mp3", 55), ("play", "tone.ogg", 55), ("end", "tone.ogg", 55)]
    with pytest.raises(MediaError):
        await twin.play(media["wav"], "text/plain", 50)


async def test_twin_faults_crash_hang_cancel(media: dict[str, Path]) -> None:
    twin = TwinPlayer(speed=20, hang_factor=0.1, hang_slack_s=0.05)  # hung after 0.0075 s
    twin.fail_next("crash")
    with pytest.raises(PlaybackError) as exc:
        await twin.play(media["wav"], "audio/wav", 50)
    assert exc.value.reason == "player_exit_1"
    twin.fail_next("hang")
    with pytest.raises(PlaybackError) as exc:
        await twin.play(media["wav"], "audio/wav", 50)
    assert exc.value.reason == "hang"
    cancel = asyncio.Event()
    cancel.set()
    assert (await TwinPlayer(speed=1).play(media["wav"], "audio/wav", 50, cancel)).stopped
    assert twin.events() == [("play", "tone.wav", 50), ("crash", "tone.wav", 50),
                             ("play", "tone.wav", 50), ("killed", "tone.wav", 50)]
