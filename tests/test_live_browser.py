"""实时喊话 end to end in headless Chromium: the page's microphone is Chromium's fake capture device playing a
click-train WAV made here; the page encodes it with WebCodecs (Opus) and sends it over the WebSocket of the
real `village county serve`; the server signs it onto the real mosquitto; a real box (link, router, engine,
live player, libopus) plays it into the loudspeaker twin. Checked: the clicks come out with the input's
rhythm, the relay goes off -> on -> off; killing the browser mid-session ends the box's session after the
silence timeout with the relay off."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sim.live_audio import click_train, find_clicks, write_wav
from tests.browser import CHROMEDRIVER, CHROMIUM, KID, Console, console_fixture, login, need_browser, wait  # noqa: F401
from tests.live_support import Box, County, box_config, need_opus, running
from tests.support import Collector

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("opus")]


@pytest.fixture
def opus() -> None:
    need_opus()

# Chromium loops the capture file: a 1.8 s file with clicks at these times, then silence
CLICKS = [0.3, 0.9, 1.4]
WAV_S = 1.8


def live_browser(wav: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768",
                "--lang=zh-CN", "--no-first-run", "--disable-extensions", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("live") / "clicks.wav", click_train(CLICKS, WAV_S))


@pytest.fixture
def driver(wav: Path) -> Iterator[Any]:
    need_browser()
    d = live_browser(wav)
    try:
        yield d
    finally:
        try:
            d.quit()
        except Exception:  # already killed by the test
            pass


def box_for(console: Console, tmp_path: Path, silence_s: float = 1.5) -> Box:
    key = serialization.load_pem_private_key((console.dir / "county.key").read_bytes(), None)
    pub = tmp_path / "county.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return Box(box_config(tmp_path, console.broker.url, pub, box="a1", kid=KID), silence_s=silence_s)


def start_speaking(driver: Any, console: Console, query: str = "") -> str:
    from selenium.webdriver.common.by import By

    login(driver, console, "operator")
    driver.get(console.url + "/live" + query)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, 'input[data-target="a1"]'))
    driver.find_element(By.CSS_SELECTOR, 'input[data-target="a1"]').click()
    wait(driver, lambda d: d.find_element(By.ID, "live-start").is_enabled())
    driver.find_element(By.ID, "live-start").click()
    return str(wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live-id")))


@pytest.mark.parametrize("capture", ["track", "worklet", "mediarecorder"])
async def test_speech_from_the_page_plays_on_the_box(console: Console, driver: Any, collector_console: Collector,
                                                     tmp_path: Path, capture: str) -> None:
    """`track`: MediaStreamTrackProcessor (Chromium); `worklet`: the AudioWorklet path other browsers take;
    `mediarecorder`: no AudioEncoder at all, MediaRecorder's WebM/Opus slices demuxed by the server."""
    from selenium.webdriver.common.by import By

    box = box_for(console, tmp_path)
    county = County(collector_console, None, box="a1")  # type: ignore[arg-type]
    async with running(box, collector_console):
        query = f"?capture={capture}" if capture != "track" else ""
        cmd = await asyncio.to_thread(start_speaking, driver, console, query)
        await county.wait(cmd, "started", within=30)
        # let one pass of the file through (its clicks end at 1.4 s), then 结束
        if capture == "mediarecorder":  # slices of a container stream, not frames: the audio time sent
            await asyncio.to_thread(wait, driver, lambda d: int(
                d.find_element(By.TAG_NAME, "body").get_attribute("data-live-sent-ms") or 0) >= WAV_S * 1000 + 500, 30)
        else:
            await asyncio.to_thread(wait, driver, lambda d: int(
                d.find_element(By.TAG_NAME, "body").get_attribute("data-live-frames") or 0) >= int(WAV_S * 50) + 25,
                30)
        used = await asyncio.to_thread(
            lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-live-capture"))
        container = await asyncio.to_thread(
            lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-live-container"))
        await asyncio.to_thread(lambda: driver.find_element(By.ID, "live-end").click())
        finished = await county.wait(cmd, "finished", within=30)
        await asyncio.to_thread(collector_console.wait_for, lambda _: not box.relay.is_on)
    got = find_clicks(box.speaker.pcm())
    print("clicks out:", got, "receipt:", finished)
    assert used == capture
    assert container == ("webm" if capture == "mediarecorder" else None)  # Chromium records WebM, not Ogg
    assert finished["end"] == "ended" and finished["packets"]["received"] > 0
    # the input's rhythm: find the click pattern (the fake device loops the file) in what the box played
    # (plus 20 ms for each frame the jitter buffer skipped or stretched while adapting: the receipt says)
    slack = 0.06 + 0.02 * (finished["skipped"] + finished["stretched"])
    gaps_in = [round(b - a, 2) for a, b in itertools.pairwise(CLICKS)]
    gaps_out = [b - a for a, b in itertools.pairwise(got)]
    assert any(all(abs(gaps_out[i + k] - g) <= slack for k, g in enumerate(gaps_in))
               for i in range(len(gaps_out) - len(gaps_in) + 1)), (gaps_in, gaps_out, finished)
    assert box.relay.events() == ["off", "on", "off"]


async def test_browser_killed_mid_session_the_box_ends_after_silence(console: Console, driver: Any,
                                                                     collector_console: Collector,
                                                                     tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    box = box_for(console, tmp_path, silence_s=1.5)
    county = County(collector_console, None, box="a1")  # type: ignore[arg-type]
    async with running(box, collector_console):
        cmd = await asyncio.to_thread(start_speaking, driver, console)
        await county.wait(cmd, "started", within=30)
        await asyncio.to_thread(wait, driver, lambda d: int(
            d.find_element(By.TAG_NAME, "body").get_attribute("data-live-frames") or 0) >= 50, 30)
        # the browser dies (its processes, then chromedriver, by pid): no 结束, no goodbye on the socket
        import psutil

        driver_proc = psutil.Process(driver.service.process.pid)
        for child in driver_proc.children(recursive=True):
            child.kill()
        driver_proc.kill()
        finished = await county.wait(cmd, "finished", within=30)
        await asyncio.to_thread(collector_console.wait_for, lambda _: not box.relay.is_on)
    assert finished["end"] == "silence"
    assert box.relay.events() == ["off", "on", "off"]


@pytest.fixture
def collector_console(console: Console) -> Iterator[Collector]:
    c = Collector(console.broker.url).start()
    try:
        yield c
    finally:
        c.stop()
