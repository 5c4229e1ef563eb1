"""A TCP proxy between the agent and the broker that the simulator controls: the village's 4G link.

A real mechanism, not a call into the agent: the agent connects to 127.0.0.1:proxy_port believing it is the
county broker, and every byte goes through here. The simulator can:

- `down()`: the link drops, as a 4G outage does: packets vanish. Open connections go silent (bytes are held,
  nothing is closed), new connections get no answer (their CONNECT waits, like a SYN retransmitted into the
  void). When `up()` comes, held bytes flow again: a connection the agent gave up on meanwhile ends in an
  EOF/reset, as TCP would; a short outage inside the keepalive is survived, as TCP would.
- `down(mode="reset")`: a router that answers: every open connection is reset, new ones are accepted and
  closed at once, until `up()`.
- `latency_ms` (+ `jitter_ms`): each chunk is delivered that long after it arrived, in order per direction.
- `loss`: TCP never loses bytes, it retransmits; so a lost segment shows up as a stall of `rto_ms` (doubling
  while losses repeat), which is what the application sees. Each chunk is "lost" with probability `loss`.
- `stall(seconds)`: nothing moves either way for a while, connections stay open (a cell handover, a
  congested tower); the agent's keepalive decides whether that is a dead link.

Random choices come from one `random.Random(seed)`. Counters in `stats` show what the proxy really did.
Network namespaces with tc-netem would need root; this needs nothing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Literal

CHUNK_BYTES = 65536


@dataclass
class NetemStats:
    connections: int = 0  # accepted while up and forwarded
    refused: int = 0  # accepted while down (reset mode) and closed at once
    held: int = 0  # accepted while down (blackhole mode) and left unanswered until up()
    resets: int = 0  # connections cut by down()
    bytes_up: int = 0  # agent -> broker
    bytes_down: int = 0  # broker -> agent
    losses: int = 0  # chunks that paid a retransmission stall
    delayed_chunks: int = 0


class NetemProxy:
    """`async with NetemProxy(upstream_host, upstream_port) as p:` then point the agent at `p.url`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0, seed: int = 1,
                 latency_ms: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0, rto_ms: float = 200.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.loss = loss
        self.rto_ms = rto_ms
        self.rng = random.Random(seed)
        self.stats = NetemStats()
        self.is_up = True
        self.down_mode: Literal["blackhole", "reset"] = "blackhole"
        self._link = asyncio.Event()
        self._link.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # asyncio.start_server's per-connection tasks
        self._resume = asyncio.Event()
        self._resume.set()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def __aenter__(self) -> NetemProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cut_all()
        handlers = list(self._handlers)
        for t in handlers:  # connections still held by a blackhole, or mid-connect upstream
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    # ---- controls --------------------------------------------------------------------------------

    async def down(self, mode: Literal["blackhole", "reset"] = "blackhole") -> None:
        """The link drops until up(): packets vanish (blackhole), or connections are reset (reset)."""
        self.is_up = False
        self.down_mode = mode
        self._link.clear()
        if mode == "reset":
            n = len(self._pairs)
            await self._cut_all()
            self.stats.resets += n

    def up(self) -> None:
        self.is_up = True
        self._link.set()

    def set_shape(self, *, latency_ms: float | None = None, jitter_ms: float | None = None,
                  loss: float | None = None) -> None:
        if latency_ms is not None:
            self.latency_ms = max(0.0, latency_ms)
        if jitter_ms is not None:
            self.jitter_ms = max(0.0, jitter_ms)
        if loss is not None:
            if not 0.0 <= loss < 1.0:
                raise ValueError(f"loss must be in [0, 1), got {loss}")
            self.loss = loss

    async def stall(self, seconds: float) -> None:
        """Hold every byte for `seconds` (connections stay open); returns when traffic moves again."""
        self._resume.clear()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._resume.set()

    # ---- the forwarding ----------------------------------------------------------------------------

    async def _cut_all(self) -> None:
        pairs = list(self._pairs)
        for p in pairs:
            p.abort()
        for p in pairs:
            await p.done.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            if self.down_mode == "reset":
                self.stats.refused += 1
                writer.transport.abort()
                return
            self.stats.held += 1
            await self._link.wait()  # unanswered; if the client gave up meanwhile, the pumps see its EOF
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.refused += 1
            writer.transport.abort()
            return
        if not self.is_up and self.down_mode == "reset":  # reset while we were connecting upstream
            up_writer.transport.abort()
            writer.transport.abort()
            self.stats.refused += 1
            return
        self.stats.connections += 1
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            async with asyncio.TaskGroup() as tg:
                pair.pumps = [tg.create_task(self._pump(reader, up_writer, "up", pair), name="netem.up"),
                              tg.create_task(self._pump(up_reader, writer, "down", pair), name="netem.down")]
        except* (OSError, asyncio.IncompleteReadError):
            pass  # a reset connection is what this class is for
        finally:
            pair.abort()
            self._pairs.discard(pair)
            pair.done.set()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str, pair: _Pair) -> None:
        # Chunks go into a queue stamped with their delivery time, so latency delays without reordering and
        # without stopping the reading side (as a long link holds bytes in flight).
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await self._resume.wait()
                await self._link.wait()
                dst.write(data)
                await dst.drain()
            dst.write_eof() if dst.can_write_eof() else dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(deliver(), name=f"netem.{way}.deliver")
            try:
                last_due = 0.0
                while data := await src.read(CHUNK_BYTES):
                    await self._resume.wait()
                    await self._link.wait()
                    delay = self._delay_s()
                    due = max(loop.time() + delay, last_due)  # in order, like a TCP stream
                    last_due = due
                    if delay > 0:
                        self.stats.delayed_chunks += 1
                    if way == "up":
                        self.stats.bytes_up += len(data)
                    else:
                        self.stats.bytes_down += len(data)
                    queue.put_nowait((due, data))
            finally:
                queue.put_nowait(None)

    def _delay_s(self) -> float:
        delay = self.latency_ms
        if self.jitter_ms:
            delay += self.rng.uniform(0, self.jitter_ms)
        rto, lost = self.rto_ms, 0
        while self.loss and self.rng.random() < self.loss and lost < 6:
            delay += rto
            rto *= 2
            lost += 1
        self.stats.losses += lost
        return delay / 1000.0


class _Pair:
    """Both sockets of one proxied connection, so down() can reset them together."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.done = asyncio.Event()
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            w.transport.abort()  # idempotent, also on a transport that is already closed
        for t in self.pumps:  # a pump parked by a blackhole (waiting for up()) sees no I/O error: cancel it
            t.cancel()
