"""The link between agent and broker: an asyncio TCP proxy that drops and delays, and watches the uplink.

`LinkProxy` listens on 127.0.0.1 and forwards every connection to the broker. Faults:
- `drop(seconds)`: every open connection is aborted and new ones are closed at once until the time is up
  (a cut cable / dead 4G modem: the agent sees resets and refused sessions).
- `delay(seconds)`: every chunk waits that long before it is forwarded, both ways (a congested uplink).

While forwarding it decodes the agent's PUBLISHes and the broker's PUBACKs (`MqttStream`, below) into a
`Ledger`: what the agent published, on which connection, with which content, and which envelope ids the
broker acknowledged and when. The checker uses it to tell a loss in the agent (never PUBACKed, no longer in
the outbox) from the broker's own window (PUBACKed, then the broker was SIGKILLed before it saved).

(sim/netem.py, the simulator's proxy, was being written at the same time; this one exists for the ledger,
which a generic netem proxy does not keep.)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

CHUNK = 65536

# ---- just enough MQTT framing to watch a QoS 1 uplink pass (sans-I/O) --------------------------------------
# Written by hand on purpose: the proxy must see exactly what crosses the wire (PUBLISH with its packet id and
# DUP flag, the broker's PUBACK for that id) without terminating the connection, and no client library parses a
# byte stream it is not itself speaking. CONNECT (for the protocol level: MQTT 5 puts properties before the
# payload), PUBLISH and PUBACK are decoded; every other packet is skipped by its length.

CONNECT, PUBLISH, PUBACK = 1, 3, 4
MAX_PACKET = 16 * 1024 * 1024  # far above anything the agent sends; a bigger length means a broken stream


class WireError(Exception):
    """The byte stream is not MQTT (bad remaining length)."""


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    qos: int
    dup: bool
    packet_id: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Connect:
    level: int  # 4 = MQTT 3.1.1, 5 = MQTT 5


Packet = Publish | Puback | Connect


def _varint(buf: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """(value, next index) of an MQTT variable byte integer at i, or None when buf ends first."""
    value, shift = 0, 0
    for n in range(4):
        if i + n >= len(buf):
            return None
        b = buf[i + n]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + n + 1
        shift += 7
    raise WireError("remaining length longer than 4 bytes")


class MqttStream:
    """One direction of one connection: `feed(bytes)` returns the packets it completed."""

    def __init__(self, level: int = 4) -> None:
        self.level = level  # learned from CONNECT on the client side; set by the caller for the broker side
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        while len(self._buf) >= 2:
            head = _varint(self._buf, 1)
            if head is None:
                break
            length, start = head
            if length > MAX_PACKET:
                raise WireError(f"packet of {length} bytes")
            if len(self._buf) < start + length:
                break
            first, body = self._buf[0], bytes(self._buf[start:start + length])
            del self._buf[:start + length]
            packet = self._decode(first, body)
            if packet is not None:
                out.append(packet)
        return out

    def _decode(self, first: int, body: bytes) -> Packet | None:
        ptype = first >> 4
        if ptype == CONNECT and len(body) >= 7:
            name_len = int.from_bytes(body[0:2], "big")
            self.level = body[2 + name_len]
            return Connect(self.level)
        if ptype == PUBACK and len(body) >= 2:
            return Puback(int.from_bytes(body[0:2], "big"))
        if ptype != PUBLISH or len(body) < 2:
            return None
        qos, dup = (first >> 1) & 3, bool(first & 8)
        tlen = int.from_bytes(body[0:2], "big")
        topic = body[2:2 + tlen].decode("utf-8", "replace")
        i, packet_id = 2 + tlen, None
        if qos:
            packet_id = int.from_bytes(body[i:i + 2], "big")
            i += 2
        if self.level >= 5:
            props = _varint(body, i)
            if props is None:
                raise WireError("PUBLISH properties cut short")
            i = props[1] + props[0]
        return Publish(topic, qos, dup, packet_id, body[i:])


# ---- the proxy ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    t: float  # monotonic, when the proxy forwarded it to the broker
    conn: int
    id: str
    cls: str
    seq: int
    dup: bool


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)
    body: dict[str, bytes] = field(default_factory=dict)  # id -> the first content seen
    reused: list[str] = field(default_factory=list)  # ids published again with other content
    acked: dict[str, float] = field(default_factory=dict)  # id -> when its first PUBACK reached the agent
    other: int = 0  # PUBLISHes that were not envelopes (the online state, the will is not on the wire)
    wire_errors: int = 0

    def published(self, t: float, conn: int, pub: Publish) -> str | None:
        if "/up/" not in pub.topic:
            self.other += 1
            return None
        try:
            env = json.loads(pub.payload)
            msg_id, cls, seq = str(env["id"]), str(env["class"]), int(env["seq"])
        except (ValueError, KeyError, TypeError):
            self.other += 1
            return None
        first = self.body.setdefault(msg_id, pub.payload)
        if first != pub.payload:
            self.reused.append(msg_id)
        self.sent.append(Sent(t, conn, msg_id, cls, seq, pub.dup))
        return msg_id


class LinkProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.ledger = Ledger()
        self.connections = 0
        self._down_until = 0.0
        self._delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def drop(self, seconds: float) -> None:
        self._down_until = time.monotonic() + seconds
        self._abort_all()

    def heal(self) -> None:
        self._down_until = 0.0
        self._delay_s = 0.0

    def delay(self, seconds: float) -> None:
        self._delay_s = seconds

    def _abort_all(self) -> None:
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    async def _handle(self, agent_r: asyncio.StreamReader, agent_w: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            agent_w.transport.abort()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the broker is down: the agent sees the connection close, as with a dead broker
            agent_w.transport.abort()
            return
        self.connections += 1
        conn = self.connections
        self._open |= {agent_w, broker_w}
        up, down = MqttStream(), MqttStream()
        inflight: dict[int, str] = {}  # packet id -> envelope id, this connection
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(agent_r, broker_w, lambda d: self._up(d, conn, up, down, inflight)),
                               name="soak.proxy.up")
                tg.create_task(self._pump(broker_r, agent_w, lambda d: self._down(d, down, inflight)),
                               name="soak.proxy.down")
        except* (OSError, WireError):
            pass
        finally:
            for w in (agent_w, broker_w):
                self._open.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: object) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
                seen(data)  # type: ignore[operator]
        finally:  # one side ended: end the other too, as a real cut does (its pump then ends on EOF/reset)
            writer.transport.abort()

    def _up(self, data: bytes, conn: int, up: MqttStream, down: MqttStream, inflight: dict[int, str]) -> None:
        try:
            packets = up.feed(data)
        except WireError:
            self.ledger.wire_errors += 1
            return
        now = time.monotonic()
        for p in packets:
            if isinstance(p, Connect):
                down.level = p.level
            elif isinstance(p, Publish) and p.qos == 1 and p.packet_id is not None:
                msg_id = self.ledger.published(now, conn, p)
                if msg_id is not None:
                    inflight[p.packet_id] = msg_id

    def _down(self, data: bytes, down: MqttStream, inflight: dict[int, str]) -> None:
        try:
            packets = down.feed(data)
        except WireError:
            self.ledger.wire_errors += 1
            return
        now = time.monotonic()
        for p in packets:
            if isinstance(p, Puback) and (msg_id := inflight.pop(p.packet_id, None)) is not None:
                self.ledger.acked.setdefault(msg_id, now)
