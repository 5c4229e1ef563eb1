"""Hardware profiles: the shipped ones load, merging works, and every bad file is a clear, typed error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.profile import (
    SOURCE_PROFILE_DIR,
    GatewayFirmwareProfile,
    HardwareProfile,
    ProfileError,
    encode_firmware_command,
    load_profile,
)

SHIPPED = sorted(p.stem for p in SOURCE_PROFILE_DIR.glob("*.toml"))


@pytest.fixture
def pdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "profiles"
    d.mkdir()
    monkeypatch.setenv("VILLAGE_PROFILE_DIR", str(d))
    return d


def write(d: Path, name: str, text: str) -> Path:
    path = d / f"{name}.toml"
    path.write_text(text)
    return path


def test_the_required_models_ship() -> None:
    assert {"base", "sim", "pi4-relayhat", "pizero2w-ble"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_frozen(name: str) -> None:
    p = load_profile(name)
    assert isinstance(p, HardwareProfile) and p.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.kind = "pi"  # type: ignore[misc]


def test_shipped_models_say_what_the_hardware_is() -> None:
    pi4 = load_profile("pi4-relayhat")
    assert (pi4.kind, pi4.relay.pin, pi4.relay.active_high) == ("pi", 26, False)
    assert pi4.serial.url == "/dev/ttyUSB0" and pi4.serial.baud == 115200
    assert pi4.audio.mixer == "PCM" and pi4.ble.adapter is None
    assert pi4.gateway_firmware.frames()[0] == b"AT\r\n"
    zero = load_profile("pizero2w-ble")
    assert zero.ble.adapter == "hci0" and zero.serial.url is None and zero.gateway_firmware.commands == ()
    sim = load_profile("sim")
    assert sim.kind == "sim" and sim.relay.pin == 17


def test_child_overrides_key_by_key_and_replaces_lists(pdir: Path) -> None:
    write(pdir, "parent", """
kind = "pi"
description = "parent"
[relay]
pin = 5
active_high = false
[serial]
url = "/dev/ttyACM0"
[gateway_firmware]
commands = ["A", "B"]
expect = "OK"
""")
    write(pdir, "child", """
extends = "parent"
[relay]
pin = 6
[gateway_firmware]
commands = ["C"]
""")
    p = load_profile("child")
    assert p.name == "child" and p.description == "parent"
    assert (p.relay.pin, p.relay.active_high) == (6, False)  # pin overridden, polarity inherited
    assert p.gateway_firmware.commands == ("C",)  # lists are replaced, not appended
    assert p.serial.url == "/dev/ttyACM0"


def test_a_local_profile_extends_a_shipped_one_by_name(pdir: Path) -> None:
    write(pdir, "menglou-pi4", 'extends = "pi4-relayhat"\n[serial]\nurl = "/dev/ttyACM0"\n')
    p = load_profile("menglou-pi4")
    assert p.relay.pin == 26 and p.serial.url == "/dev/ttyACM0"


def test_a_profile_named_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, "box", 'extends = "sim"\n[relay]\npin = 4\n')
    assert load_profile(str(path)).relay.pin == 4


@pytest.mark.parametrize(("text", "key", "words"), [
    ('colour = "red"', "colour", "unknown key"),
    ('[relay]\npin = 5\npolarity = "low"', "relay.polarity", "unknown key"),
    ('[speaker]\nohms = 8', "speaker", "unknown key"),
    ('[relay]\npin = "17"', "relay.pin", "integer"),
    ("[relay]\nactive_high = 1", "relay.active_high", "true or false"),
    ("[relay]\npin = 40", "relay.pin", "0..27"),
    ('kind = "arduino"', "kind", "must be one of"),
    ("[serial]\nbaud = 12345", "serial.baud", "must be one of"),
    ('[serial]\nurl = "COM3"', "serial.url", "pyserial URL"),
    ('[ble]\nadapter = "bt0"', "ble.adapter", "hci0"),
    ("[status_led]\npin = 17", "status_led.pin", "relay pin"),
    ('[serial]\nurl = "/dev/ttyUSB0"\n[gateway_firmware]\ncommands = ["AT\\r"]', "gateway_firmware.commands",
     "printable ASCII"),
    ('[serial]\nurl = "/dev/ttyUSB0"\n[gateway_firmware]\ncommands = ["hex:7e0"]', "gateway_firmware.commands",
     "hex digits"),
    ('[gateway_firmware]\nline_ending = "crlf2"', "gateway_firmware.line_ending", "must be one of"),
    ("[gateway_firmware]\nreply_timeout_s = -1", "gateway_firmware.reply_timeout_s", ">= 0"),
    ('name = "other"', "name", "file name"),
    ("extends = 3", "extends", "profile name"),
])
def test_bad_profiles_are_errors_naming_file_and_key(pdir: Path, text: str, key: str, words: str) -> None:
    path = write(pdir, "bad", 'extends = "sim"\n' + text if not text.startswith("extends") else text)
    with pytest.raises(ProfileError) as info:
        load_profile("bad")
    assert info.value.key == key
    assert words in info.value.problem
    assert info.value.file == str(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_extends_loop_is_an_error(pdir: Path) -> None:
    write(pdir, "a", 'extends = "b"\n')
    write(pdir, "b", 'extends = "c"\n')
    write(pdir, "c", 'extends = "a"\n')
    with pytest.raises(ProfileError) as info:
        load_profile("a")
    assert info.value.key == "extends" and "loop" in info.value.problem and "a -> b -> c -> a" in info.value.problem


def test_extending_itself_is_a_loop(pdir: Path) -> None:
    write(pdir, "self", 'extends = "self"\n')
    with pytest.raises(ProfileError, match="loop"):
        load_profile("self")


def test_missing_parent_names_the_child(pdir: Path) -> None:
    child = write(pdir, "orphan", 'extends = "no-such-model"\n')
    with pytest.raises(ProfileError) as info:
        load_profile("orphan")
    assert (info.value.file, info.value.key) == (str(child), "extends")
    assert "no-such-model" in info.value.problem


def test_missing_parent_by_path(pdir: Path) -> None:
    write(pdir, "orphan", 'extends = "../nowhere/base.toml"\n')
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("orphan")


def test_unknown_profile_and_broken_toml(pdir: Path) -> None:
    with pytest.raises(ProfileError, match="no profile named 'nope'"):
        load_profile("nope")
    write(pdir, "broken", "[relay\npin = 1\n")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("broken")


def test_gateway_firmware_frames_follow_the_documented_format() -> None:
    fw = GatewayFirmwareProfile(commands=("AT+X=1", "hex:7e 01 02 7e", "ATE0"), line_ending="lf")
    assert fw.frames() == (b"AT+X=1\n", b"\x7e\x01\x02\x7e", b"ATE0\n")
    assert GatewayFirmwareProfile(commands=("AT",), line_ending="none").frames() == (b"AT",)
    with pytest.raises(ValueError, match="longer than"):
        encode_firmware_command("A" * 257)
    with pytest.raises(ValueError):
        encode_firmware_command("")


def test_firmware_commands_need_no_serial_url(pdir: Path) -> None:
    """The commands go to every wired [[gateway]] (docs/wearables.md), whose url the config may name itself."""
    write(pdir, "radioless", 'extends = "base"\n[gateway_firmware]\ncommands = ["AT"]\n')
    p = load_profile("radioless")
    assert p.serial.url is None and p.gateway_firmware.frames() == (b"AT\r\n",)


def test_a_profile_without_kind_is_an_error_never_a_twin_box(pdir: Path) -> None:
    """`kind` used to default to "sim": a technician's profile that forgot it (and did not extend base)
    drove gpiozero's MockFactory instead of the relay, and made the sim-only test switches live."""
    write(pdir, "local-pi4", "[relay]\npin = 26\nactive_high = false\n")
    with pytest.raises(ProfileError) as err:
        load_profile("local-pi4")
    assert err.value.key == "kind" and "missing (required)" in str(err.value) and '"pi"' in str(err.value)
    write(pdir, "local-pi4b", 'extends = "base"\n[relay]\npin = 26\n')  # base says kind = "pi"
    assert load_profile("local-pi4b").kind == "pi"
    write(pdir, "odd", 'kind = "mock"\n')
    with pytest.raises(ProfileError, match="kind"):
        load_profile("odd")


def test_only_the_sim_profile_is_a_sim_box() -> None:
    assert {name: load_profile(name).kind for name in SHIPPED} == {
        name: "sim" if name == "sim" else "pi" for name in SHIPPED}
