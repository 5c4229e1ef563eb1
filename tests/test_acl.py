"""The county broker's ACL (docs/county/, county/acl.py) loaded into a real mosquitto over mutual TLS.

One compromised box must not touch any other: it may publish only under its own `box/{id}/up/...` and
`state`, never on any `cmd` topic (not even its own), and read only its own and its groups' `cmd` topics.
With MQTT 5 a refused publish comes back as a PUBACK with reason 0x87, which the agent's link counts and
keeps the row for (a misprovisioned box loses nothing and shows up in its heartbeat).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse_config
from agent.protocol.envelope import MsgClass
from county.acl import AclSourceError, Fleet, load_fleet, main, parse_fleet, render
from tests.pki import CountyBroker, Issued, TestCA, tls_collector, tls_context
from tests.support import Collector, agent_config_dict, wait_until
from tests.test_link import agent_core

FLEET = {"consoles": ["county-console"],
         "boxes": {"box-1": ["town-a"], "box-2": ["town-a", "town-b"], "box-3": []}}
NOT_AUTHORIZED = 0x87


# ---------------------------------------------------------------------------------------- the generator
def test_render_patterns_console_and_per_box_groups() -> None:
    text = render(parse_fleet(FLEET))
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[:3] == ["pattern write vc/v1/box/%u/up/#", "pattern write vc/v1/box/%u/state",
                         "pattern read vc/v1/box/%u/cmd"]
    assert "pattern write vc/v1/box/%u/#" not in text, "a box must not be able to write its own cmd topic"
    console = lines[lines.index("user county-console") + 1:lines.index("user box-1")]
    assert console == ["topic write vc/v1/box/+/cmd", "topic write vc/v1/group/+/cmd", "topic write vc/v1/live/+/audio",
                       "topic read vc/v1/box/+/up/#", "topic read vc/v1/box/+/state"]
    assert lines[lines.index("user box-2") + 1:lines.index("user box-3")] == [
        "topic read vc/v1/group/town-a/cmd", "topic read vc/v1/group/town-b/cmd"]
    assert text == render(parse_fleet(FLEET)), "deterministic: a diff shows exactly what changed"


@pytest.mark.parametrize("raw", [
    {"boxes": {"box-1\n": []}},                        # a newline would start a new ACL line
    {"boxes": {"box-1\nuser county-console": []}},
    {"boxes": {"box/#": []}},
    {"boxes": {"+": []}},
    {"boxes": {"": []}},
    {"boxes": {"b" * 65: []}},
    {"boxes": {"box-1": ["town-a\ntopic write #"]}},
    {"boxes": {"box-1": ["#"]}},
    {"boxes": {"box-1": "town-a"}},
    {"boxes": {"county-console": []}},                 # a box must never get console rights
    {"consoles": "county-console"},
    {"consoles": ["ops console"]},
    {"prefix": "vc/#"},
    {"prefix": ""},
    {"prefix": "vc//v1"},
    {"boxes": []},
    {"box": {}},                                       # unknown key: a typo must not give an empty ACL
])
def test_bad_sources_are_refused_with_a_typed_error(raw: dict[str, Any]) -> None:
    with pytest.raises(AclSourceError):
        parse_fleet(raw)


def test_cli_writes_the_file_and_exits_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "boxes.toml", tmp_path / "acl"
    src.write_text('consoles = ["county-console"]\n[boxes]\nbox-1 = ["town-a"]\n')
    assert main([str(src), "-o", str(out)]) == 0
    assert out.read_text() == render(Fleet("vc/v1", ("county-console",), {"box-1": ("town-a",)}))
    src.write_text('[boxes]\n"box 1" = []\n')
    assert main([str(src), "-o", str(out)]) == 2
    assert "box 1" in capsys.readouterr().err
    assert "user box-1" in out.read_text(), "a bad source leaves the installed ACL alone"
    assert main([str(tmp_path / "missing.toml")]) == 2


# ---------------------------------------------------------------------------------------- in a broker
class Box:
    """A raw MQTT 5 client holding one certificate: what a compromised box could send."""

    def __init__(self, broker: CountyBroker, identity: Issued, client_id: str) -> None:
        self.acks: dict[int, Any] = {}
        self.subacks: list[Any] = []
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[Any] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(tls_context(broker.ca, identity))
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append(rcs)
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(rc)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("box did not connect")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            self.acks[mid] = reason

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        """Publish QoS 1 and return the PUBACK reason code value."""
        info = self.client.publish(topic, payload, qos=1)
        return wait_until(lambda: self.acks.get(info.mid), 10).value

    def subscribe(self, *topics: str) -> list[int]:
        before = len(self.subacks)
        self.client.subscribe([(t, 1) for t in topics])
        wait_until(lambda: len(self.subacks) > before, 10)
        return [rc.value for rc in self.subacks[-1]]

    def stop(self) -> None:
        self.client.disconnect()  # first, so the network thread ends at once
        self.client.loop_stop()


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def county(tmp_path: Path, pki: TestCA) -> Iterator[CountyBroker]:
    (tmp_path / "broker").mkdir()
    broker = CountyBroker(tmp_path / "broker", pki, render(parse_fleet(FLEET))).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def console(county: CountyBroker, pki: TestCA) -> Iterator[Collector]:
    c = tls_collector(county, pki.client("county-console"), ["vc/v1/#"])
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def box1(county: CountyBroker, pki: TestCA) -> Iterator[Box]:
    b = Box(county, pki.client("box-1"), "box-1")
    try:
        yield b
    finally:
        b.stop()


def test_a_box_publishes_only_under_its_own_uplink_and_state(box1: Box, console: Collector) -> None:
    denied = {
        "vc/v1/box/box-2/up/alarm/sos": "another box's uplink (forged alarm)",
        "vc/v1/box/box-2/state": "another box's state",
        "vc/v1/box/box-1/cmd": "its own cmd topic",
        "vc/v1/box/box-2/cmd": "another box's cmd topic",
        "vc/v1/group/town-a/cmd": "its own group's cmd topic",
        "vc/v1/group/town-b/cmd": "another group's cmd topic",
        "vc/v1/box/box-1": "outside up/ and state",
        "elsewhere/box-1": "outside the prefix",
    }
    for topic, what in denied.items():
        assert box1.publish(topic, what.encode()) == NOT_AUTHORIZED, f"{what} ({topic}) must be denied"
    assert box1.publish("vc/v1/box/box-1/up/alarm/sos", b"mine") == 0
    assert box1.publish("vc/v1/box/box-1/state", b"online") == 0
    # mosquitto routes one client's messages in order: once the marker is in, nothing denied is on its way
    assert box1.publish("vc/v1/box/box-1/up/event/marker", b"last") == 0
    console.wait_for(lambda ms: any(m.topic.endswith("/marker") for m in ms))
    got = [m.topic for m in console.snapshot()]
    assert got == ["vc/v1/box/box-1/up/alarm/sos", "vc/v1/box/box-1/state", "vc/v1/box/box-1/up/event/marker"]


def test_a_box_reads_only_its_own_and_its_groups_cmd_topics(box1: Box, console: Collector) -> None:
    # it may ask for anything; what it is not allowed to read never reaches it
    box1.subscribe("vc/v1/box/box-1/cmd", "vc/v1/group/town-a/cmd")
    box1.subscribe("vc/v1/box/box-2/cmd", "vc/v1/group/town-b/cmd", "vc/v1/#", "#")
    sent = ["vc/v1/box/box-2/cmd", "vc/v1/group/town-b/cmd", "vc/v1/box/box-3/cmd",
            "vc/v1/box/box-1/cmd", "vc/v1/group/town-a/cmd"]
    for topic in sent:
        console.publish(topic, f"for {topic}".encode())
    wait_until(lambda: {t for t, _ in box1.messages} >= {"vc/v1/box/box-1/cmd", "vc/v1/group/town-a/cmd"})
    assert {t for t, _ in box1.messages} == {"vc/v1/box/box-1/cmd", "vc/v1/group/town-a/cmd"}, box1.messages


def test_a_box_cannot_take_over_another_boxs_session(county: CountyBroker, pki: TestCA, console: Collector) -> None:
    """use_username_as_clientid: the client id is the certificate's CN, whatever the client asked for."""
    box2 = Box(county, pki.client("box-2"), "box-2")
    try:
        box2.subscribe("vc/v1/box/box-2/cmd")
        intruder = Box(county, pki.client("box-1"), "box-2")  # box-1's certificate, box-2's client id
        try:
            intruder.subscribe("vc/v1/box/box-2/cmd")
            console.publish("vc/v1/box/box-2/cmd", b"for box-2")
            wait_until(lambda: box2.messages or box2.disconnects, 10)
            assert not box2.disconnects, "box-2 was kicked off by a client claiming its id"
            assert box2.messages == [("vc/v1/box/box-2/cmd", b"for box-2")]
            assert not intruder.messages
        finally:
            intruder.stop()
    finally:
        box2.stop()


async def test_link_keeps_and_counts_what_the_broker_refuses(tmp_path: Path, county: CountyBroker, pki: TestCA,
                                                             console: Collector) -> None:
    """A cloned SD card: config says box-2, the certificate says box-1. Every uplink is refused with 0x87;
    the link keeps each row in the outbox (nothing is lost, nothing is mis-delivered) and counts them."""
    identity = pki.client("box-1")
    (tmp_path / "state").mkdir()
    config = parse_config(agent_config_dict(tmp_path / "state", county.url, box="box-2", mqtt={
        "url": county.url, "ca": str(pki.pem), "cert": str(identity.cert), "key": str(identity.key),
        "protocol": "5"}))
    async with agent_core(config) as (outbox, link):
        for i in range(5):
            await outbox.send(MsgClass.ALARM, "sos", {"i": i})
        await asyncio.to_thread(wait_until, lambda: link.refused >= 5, 20)
        assert link.state.value == "connected"
        assert outbox.depth()[MsgClass.ALARM] == 5, "refused rows stay in the outbox for the next connection"
        assert link.published == 0
    assert not [m for m in console.snapshot() if "/up/" in m.topic]


def test_the_shipped_example_acl_is_what_the_generator_makes() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "county"
    assert (docs / "acl").read_text() == render(load_fleet(docs / "boxes.example.toml")), \
        "regenerate: python -m county.acl docs/county/boxes.example.toml -o docs/county/acl"
