"""The running feature writes the profile's `[gateway_firmware]` at every connect and reports the result on its
edges (a log line and a `gateway_setup` event); a `[[gateway]]` without `url` takes the profile's `serial.url`.

Over a real TCP socket to the gateway twin; the uplink is a recording double.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as village
from agent.clock import ManualClock
from agent.config import Config, ConfigError, parse_config
from agent.profile import GatewayFirmwareProfile, HardwareProfile, SerialProfile
from agent.schema import SchemaError
from agent.wearables.service import GatewayService, make_services
from agent.wearables.settings import resolve_gateways
from drivers.wristband.events import BandAlarm
from drivers.wristband.watch import encode_alarm, status_bits
from sim.wristband import GatewayTwin, SimWearer
from tests.test_wearables_service import context, running
from tests.wearables_support import until

COMMANDS = ("AT", "ATE0", "AT+FILTER=0", "AT+HBT=60")


def pi_profile(serial_url: str | None, commands: tuple[str, ...] = COMMANDS) -> HardwareProfile:
    return HardwareProfile(name="pi4-test", kind="pi", serial=SerialProfile(url=serial_url, baud=115200),
                           gateway_firmware=GatewayFirmwareProfile(commands=commands, reply_timeout_s=30.0))


def config(tmp_path: Path, gateway: dict[str, Any]) -> Config:
    return parse_config({
        "box": {"id": "box-test", "profile": "pi4-test", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "gateway": [{"id": "gw1", "codec": "watch", **gateway}],
        "wearer": [{"id": "W1", "device": "8800000001"}],
        "wearables": {"tick_s": 0.02},
    })


def setup_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "agent.wearables.service"]


def setup_events(uplink: Any) -> list[dict[str, Any]]:
    return [e.data for e in uplink.sent if e.kind == "gateway_setup"]


async def test_setup_at_every_connect_reported_on_edges_on_the_profile_serial_url(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.wearables.service")
    band = SimWearer("8800000001", [(22.5, 113.9)])
    async with GatewayTwin("watch", [band], link="tcp", answer_default="OK",
                           answers={"AT+FILTER=0": "ERROR"}) as twin:
        clock = ManualClock()
        ctx, uplink, _ = context(config(tmp_path, {}), clock)  # no url: the profile's serial.url
        ctx = dataclasses.replace(ctx, profile=pi_profile(twin.url))
        async with running(ctx) as services:
            gw = services[1]
            assert isinstance(gw, GatewayService) and gw.gateway.url == twin.url and gw.reader is not None
            assert await twin.wait_commands(4) == list(COMMANDS)
            await until(lambda: setup_events(uplink))
            assert setup_events(uplink) == [{
                "gateway": "gw1", "state": "failed", "commands": 4,
                "failed": [{"command": "AT+FILTER=0", "result": "error", "reply": "ERROR"}]}]
            assert setup_warnings(caplog) == [
                "gateway gw1: setup: 1 of 4 command(s) not accepted: 'AT+FILTER=0' error (reply ERROR)"]

            # frames are read as usual: an SOS is an alarm and is acked
            await twin.send(encode_alarm(band.device, ts=clock.time(), lat=22.5, lon=113.9,
                                         status=status_bits(BandAlarm.SOS)))
            await until(lambda: "sos" in uplink.kinds())
            await until(lambda: b"[3G*8800000001*0002*AL]" in twin.reply_frames())

            # a reconnect rewrites everything; the same result again is no new event nor log line
            await twin.unplug()
            await until(lambda: gw.reader is not None and not gw.reader.up)
            await twin.replug()
            assert await twin.wait_commands(8) == list(COMMANDS) * 2
            await until(lambda: gw.reader is not None and gw.reader.stats.setups == 2)
            assert len(setup_events(uplink)) == 1
            assert len(setup_warnings(caplog)) == 1

            # fixed (e.g. the gateway's firmware was updated): one `ok` event and one INFO line
            twin.answers = {}
            await twin.unplug()
            await until(lambda: gw.reader is not None and not gw.reader.up)
            await twin.replug()
            await until(lambda: len(setup_events(uplink)) == 2)
            assert setup_events(uplink)[1] == {"gateway": "gw1", "state": "ok", "commands": 4, "failed": []}
            assert "gateway gw1: setup accepted (4 command(s))" in [r.getMessage() for r in caplog.records]


async def test_a_ble_gateway_gets_no_setup_and_the_profile_without_wired_gateway_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config({
        "box": {"id": "box-test", "profile": "pi4-test", "state_dir": str(tmp_path / "state")},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "gateway": [{"id": "radio", "url": "ble:hci0", "codec": "ingics"}]})
    ctx, _, _ = context(cfg, ManualClock())
    ctx = dataclasses.replace(ctx, profile=pi_profile("/dev/ttyUSB0"))
    services = make_services(ctx)
    assert [s.setup for s in services if isinstance(s, GatewayService)] == [None]
    assert "has 4 [gateway_firmware] command(s) but no wired [[gateway]]" in caplog.text


def test_a_gateway_without_url_needs_the_profile_serial_url(tmp_path: Path) -> None:
    cfg = config(tmp_path, {})
    assert cfg.gateways[0].url is None
    with pytest.raises(SchemaError) as info:
        resolve_gateways(cfg.gateways, None, "pizero2w-ble")
    assert info.value.key == "gateway[0].url" and "pizero2w-ble" in info.value.problem
    assert "serial.url" in info.value.problem
    two = parse_config({"box": {"id": "b", "profile": "p"}, "mqtt": {"url": "mqtt://h"}, "gateway": [
        {"id": "gw1", "codec": "watch"}, {"id": "gw2", "url": "/dev/ttyUSB0", "codec": "watch"}]}).gateways
    with pytest.raises(SchemaError, match=r"gateway\[1\]\.url.*already gateway\[0\]'s device|already gateway"):
        resolve_gateways(two, "/dev/ttyUSB0", "p")
    explicit = config(tmp_path, {"url": "socket://10.0.0.5:4001"}).gateways
    assert resolve_gateways(explicit, "/dev/ttyUSB0", "p") == explicit  # an explicit url wins
    ctx, _, _ = context(cfg, ManualClock())
    ctx = dataclasses.replace(ctx, profile=pi_profile(None, ()))
    with pytest.raises(ConfigError, match=r"gateway\[0\]\.url: not set"):
        make_services(ctx)


def test_village_agent_check_fills_in_the_url_or_exits_2_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wired = tmp_path / "wired.toml"
    wired.write_text('extends = "base"\n[serial]\nurl = "/dev/ttyUSB3"\n')
    radio = tmp_path / "radio.toml"
    radio.write_text('extends = "base"\n')
    for name, profile in (("ok", wired), ("bad", radio)):
        (tmp_path / f"{name}.toml").write_text(
            f'[box]\nid = "box-test"\nprofile = "{profile}"\nstate_dir = "{tmp_path / "state"}"\n'
            '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[[gateway]]\nid = "gw1"\ncodec = "watch"\n')
    assert village(["agent", "check", "--json", "-c", str(tmp_path / "ok.toml")]) == 0
    assert '"url": "/dev/ttyUSB3"' in capsys.readouterr().out
    assert village(["agent", "check", "-c", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "gateway[0].url: not set, and hardware profile 'radio' has no serial.url" in err
