"""Fuzzing the local-file loaders (hypothesis, bounded): agent config, hardware profiles, the county ACL source.

A technician's typo must give the one-line typed error naming the file and key (ConfigError, ProfileError,
AclSourceError), never a traceback: not for a wrong type anywhere, a path too long for the filesystem,
TOML nested past the recursion limit, bytes that are not UTF-8, or a box id with a trailing newline
(which would have gone into topic names and ACL lines).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load_config, masked, parse_config
from agent.profile import HardwareProfile, ProfileError, load_profile
from county.acl import AclSourceError, parse_fleet, render
from tests.support import toml_dumps

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

toml_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                | st.text(max_size=30) | st.sampled_from(["", "/dev/null", "/etc/passwd", "a" * 5000, "x\x00y",
                                                         "mqtt://h:1", "mqtts://[::1]:8883", "box-1\n", "sim"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)

BASE: dict[str, Any] = {
    "box": {"id": "lhk-menglou-001", "groups": ["town-menglou"], "profile": "sim", "state_dir": "/tmp/x",
            "heartbeat_s": 60},
    "mqtt": {"url": ["mqtt://127.0.0.1:1883"], "topic_prefix": "vc/v1", "keepalive_s": 30},
    "trust": {"keys": {}},
    "outbox": {"max_bytes": 1000000},
    "broadcast": {},
    "wearables": {},
    "gateway": [{"id": "gw1", "url": "socket://127.0.0.1:9000", "codec": "watch"}],
    "wearer": [{"id": "W1", "device": "8800000015"}],
    "cameras": {"interval_s": 60},
    "camera": [{"id": "cam1", "rtsp": "rtsp://192.168.1.64:554/x"}],
}


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid BASE with a few values replaced, removed, or unknown keys added, anywhere in the tree."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(doc)[1:]))
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[where[-1]] = draw(toml_values)
        elif action == "remove" and isinstance(parent, dict):
            parent.pop(where[-1], None)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(toml_values)
    return doc


@FUZZ
@given(mutated_configs())
def test_parse_config_raises_only_config_error(doc: dict[str, Any]) -> None:
    try:
        config = parse_config(doc, "village.toml")
    except ConfigError as exc:
        assert str(exc).startswith("village.toml: ") and "\n" not in exc.key
        return
    assert isinstance(config, Config)
    masked(config)  # what `village agent check` prints must work for whatever was accepted


@pytest.mark.parametrize("value", ["box-1\n", "box-1\r\n", "\nbox-1", "box 1", "box/1", "+", "#", ""])
def test_a_box_id_goes_into_topics_so_it_must_be_exact(value: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["box"]["id"] = value
    with pytest.raises(ConfigError, match=r"box\.id"):
        parse_config(doc)
    doc = copy.deepcopy(BASE)
    doc["box"]["groups"] = [value]
    with pytest.raises(ConfigError, match=r"box\.groups"):
        parse_config(doc)


@pytest.mark.parametrize("path", ["a" * 5000, "/".join(["x"] * 3000), "x\x00y"])
def test_impossible_paths_are_config_errors(path: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["mqtt"]["ca"] = path
    with pytest.raises(ConfigError, match=r"mqtt\.ca"):
        parse_config(doc)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.integers(1, 50_000).map(lambda n: b"a = " + b"[" * n),
                 st.integers(1, 50_000).map(lambda n: b"a = " + b"{b = " * n),
                 st.sampled_from([b"\xef\xbb\xbf[box]\nid = 'b'\n", b"[box]\nid = \"\xff\"\n", b"[[box]]\n"])))
def test_load_config_raises_only_config_error(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.file == str(path)


PROFILE_BASE = 'description = "fuzz"\nkind = "sim"\n'


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(["relay", "audio", "serial", "ble", "status_led", "gateway_firmware",
                                                  "kind", "extends", "name", "bogus"]), toml_values, max_size=4)
                 .map(lambda d: toml_dumps(d).encode()),
                 st.integers(1, 50_000).map(lambda n: b"x = " + b"[" * n)))
def test_profile_loader_raises_only_profile_error(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    d = tmp_path_factory.getbasetemp() / "profiles"
    d.mkdir(exist_ok=True)
    path = d / "fuzz.toml"
    path.write_bytes(text)
    try:
        assert isinstance(load_profile(str(path)), HardwareProfile)
    except ProfileError:
        pass


@pytest.mark.parametrize("name", ["a" * 5000, "x\x00y", "../../etc/passwd"])
def test_impossible_profile_names_are_profile_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(ProfileError):
        load_profile(name)
    (tmp_path / "child.toml").write_text(f"extends = {name!r}\n".replace("'", '"').replace("\x00", "\\u0000"))
    with pytest.raises(ProfileError):
        load_profile(str(tmp_path / "child.toml"))


def test_profiles_that_extend_each_other_in_a_loop_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="loop"):
        load_profile(str(tmp_path / "a.toml"))


@FUZZ
@given(st.dictionaries(st.sampled_from(["prefix", "consoles", "boxes", "other"]), toml_values, max_size=3))
def test_acl_source_raises_only_acl_source_error(raw: dict[str, Any]) -> None:
    try:
        fleet = parse_fleet(raw)
    except AclSourceError:
        return
    for line in render(fleet).splitlines():  # whatever was accepted, every line has exactly its own fields
        if line and not line.startswith("#"):
            fields = line.split(" ")
            assert (fields[0], len(fields)) in {("pattern", 3), ("topic", 3), ("user", 2)}, line
    for box, groups in fleet.boxes.items():
        assert "+" not in box + "".join(groups) and "#" not in box + "".join(groups)
