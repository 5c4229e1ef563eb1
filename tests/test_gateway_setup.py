"""The gateway's setup commands (profile `[gateway_firmware]`) over real links to the gateway twin.

GatewayReader writes them at every connect, beside the frame reading, and reports one SetupResult per pass.
The twin answers like an AT gateway (`\\r\\nOK\\r\\n`), or with an error line, or not at all.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from agent.profile import GatewayFirmwareProfile
from drivers.wristband.events import BandAlarm, BandReport
from drivers.wristband.reader import GatewayReader
from drivers.wristband.setup import SetupResult, SetupScript, SetupSession, printable_reply
from drivers.wristband.transport import open_gateway
from drivers.wristband.watch import WatchDecoder
from sim.wristband import GatewayTwin, SimWearer
from tests.test_gateway_transport import FAST, PATH, Consumer, until

Link = Literal["pty", "tcp"]
COMMANDS = ("AT", "ATE0", "AT+FILTER=0", "AT+HBT=60")  # what firmware_cfg/pi4-relayhat.toml ships


def script(*, expect: str = "OK", reply_timeout_s: float = 30.0, commands: tuple[str, ...] = COMMANDS) -> SetupScript:
    fw = GatewayFirmwareProfile(commands=commands, expect=expect, reply_timeout_s=reply_timeout_s)
    return SetupScript(tuple(zip(fw.commands, fw.frames(), strict=True)), fw.expect, fw.reply_timeout_s)


class Results:
    def __init__(self) -> None:
        self.items: list[SetupResult] = []

    def __call__(self, result: SetupResult) -> None:
        self.items.append(result)


@pytest.mark.parametrize("link", ["pty", "tcp"])
async def test_the_twin_gets_the_commands_in_order_at_connect_and_again_after_a_replug(link: Link) -> None:
    async with GatewayTwin("watch", [SimWearer("8800000015", PATH)], link=link, answer_default="OK") as twin:
        results = Results()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST, name="gw1",
                               setup=script(), on_setup=results)
        async with Consumer(reader):
            assert await twin.wait_commands(4) == list(COMMANDS)
            await until(lambda: len(results.items) == 1)
            (first,) = results.items
            assert first.ok and [r.outcome for r in first.results] == ["ok"] * 4
            assert [r.reply for r in first.results] == ["OK"] * 4

            await twin.unplug()
            await until(lambda: not reader.up)
            await twin.replug()
            assert await twin.wait_commands(8) == list(COMMANDS) * 2  # a replugged gateway lost its settings
            await until(lambda: len(results.items) == 2)
            assert results.items[1].ok and reader.stats.setups == 2 and reader.stats.setup_failures == 0


@pytest.mark.parametrize("link", ["pty", "tcp"])
async def test_an_error_reply_is_reported_the_rest_still_written_and_frames_still_read(link: Link) -> None:
    band = SimWearer("8800000015", PATH)
    async with GatewayTwin("watch", [band], link=link, answer_default="OK",
                           answers={"AT+FILTER=0": "+CME ERROR: 4"}) as twin:
        results = Results()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST, name="gw1",
                               setup=script(), on_setup=results)
        async with Consumer(reader) as c:
            await until(lambda: len(results.items) == 1)
            (result,) = results.items
            assert not result.ok
            assert [(r.index, r.command, r.outcome, r.reply) for r in result.failed] == [
                (2, "AT+FILTER=0", "error", "+CME ERROR: 4")]
            assert twin.commands == list(COMMANDS)  # the one after the refused command was still written
            assert reader.stats.setup_failures == 1 and reader.up
            twin.press_sos(band.device)
            await twin.send(twin.frame_for(band))
            (sos,) = await c.take(1)
            assert isinstance(sos, BandReport) and sos.alarms == {BandAlarm.SOS}


@pytest.mark.parametrize("link", ["pty", "tcp"])
async def test_frames_are_read_and_acked_while_the_gateway_has_not_answered_yet(link: Link) -> None:
    """The twin stays silent on AT+HBT=60 (reply_timeout_s 30 s): an SOS meanwhile is read and acked."""
    band = SimWearer("8800000015", PATH)
    async with GatewayTwin("watch", [band], link=link, answer_default="OK", answers={"AT+HBT=60": None}) as twin:
        results = Results()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST, name="gw1",
                               setup=script(reply_timeout_s=30.0), on_setup=results)
        async with Consumer(reader) as c:
            assert await twin.wait_commands(4) == list(COMMANDS)  # the last one is waiting for its reply
            twin.press_sos(band.device)
            await twin.send(twin.frame_for(band))
            (sos,) = await c.take(1)
            assert isinstance(sos, BandReport) and sos.alarms == {BandAlarm.SOS}
            await until(lambda: b"[3G*8800000015*0002*AL]" in twin.reply_frames())
            assert results.items == [] and reader.last_setup is None  # setup still waiting, reading was not


async def test_no_reply_at_all_is_a_timeout_per_command() -> None:
    async with GatewayTwin("watch", [SimWearer("8800000015", PATH)], link="pty") as twin:  # answers nothing
        results = Results()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST, name="gw1",
                               setup=script(reply_timeout_s=0.05, commands=("AT", "ATE0")), on_setup=results)
        async with Consumer(reader):
            await until(lambda: len(results.items) == 1)
        assert [(r.command, r.outcome, r.reply) for r in results.items[0].results] == [
            ("AT", "timeout", None), ("ATE0", "timeout", None)]
        assert twin.commands == ["AT", "ATE0"]


async def test_expect_empty_writes_everything_without_waiting() -> None:
    async with GatewayTwin("watch", [SimWearer("8800000015", PATH)], link="tcp") as twin:  # answers nothing
        results = Results()
        reader = GatewayReader(open_gateway(twin.url), WatchDecoder(), backoff=FAST, name="gw1",
                               setup=script(expect=""), on_setup=results)
        async with Consumer(reader):
            await until(lambda: len(results.items) == 1)
            assert await twin.wait_commands(4) == list(COMMANDS)
        assert results.items[0].ok and {r.outcome for r in results.items[0].results} == {"sent"}


async def test_replies_are_matched_per_command_across_any_chunking_and_escaped() -> None:
    written: list[bytes] = []
    session = SetupSession(script(commands=("AT", "ATE0", "AT+X")), _record(written))
    task = asyncio.create_task(session.run())
    await until(lambda: len(written) == 1)
    for piece in (b"\r", b"\nO", b"K\r\n"):  # "OK" split over three reads
        session.feed(piece)
    await until(lambda: len(written) == 2)
    session.feed(b"ATE0\r\n[3G*8800000015*0009*LK,0,0,100]\r\nERROR\x1b[2J\\n\r\n")  # echo and a frame: not replies
    await until(lambda: len(written) == 3)
    session.feed(b"\r\nOK\r\n")
    result = await task
    assert [(r.outcome, r.reply) for r in result.results] == [
        ("ok", "OK"), ("error", "ERROR\\x1b[2J\\x5cn"), ("ok", "OK")]
    assert written == [b"AT\r\n", b"ATE0\r\n", b"AT+X\r\n"]
    assert printable_reply(b"E" * 100).endswith("...[20 more bytes]")


def _record(written: list[bytes]):  # type: ignore[no-untyped-def]
    async def write(data: bytes) -> None:
        written.append(data)
    return write
