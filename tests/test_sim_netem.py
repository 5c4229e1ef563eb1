"""The link proxy alone: it really forwards, delays, stalls and drops (an echo server behind it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sim.netem import NetemProxy

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes = b"ping") -> float:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        t0 = loop.time()
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        return loop.time() - t0
    finally:
        writer.close()


async def test_forwards_bytes_both_ways_and_counts_them() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port) as proxy:
        await roundtrip(proxy.port, b"x" * 100_000)
        assert proxy.stats.connections == 1
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == 100_000


async def test_latency_delays_each_way() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port, latency_ms=150) as proxy:
        rtt = await roundtrip(proxy.port)
        assert rtt >= 0.3  # 150 ms up + 150 ms down: a lower bound, never an upper one
        assert proxy.stats.delayed_chunks >= 2


async def test_loss_costs_retransmission_stalls_but_no_bytes() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port, loss=0.5, rto_ms=20, seed=3) as proxy:
        for _ in range(10):
            await roundtrip(proxy.port)
        assert proxy.stats.losses > 0  # seeded: some chunks paid a stall, and every byte still came back


async def test_down_reset_mode_resets_open_connections_and_refuses_new_ones_until_up() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        await proxy.down(mode="reset")
        assert await asyncio.wait_for(reader.read(10), 5) == b""  # the open connection died
        writer.close()
        assert proxy.stats.resets == 1 and proxy.open_connections == 0

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)  # the modem answers...
        assert await asyncio.wait_for(reader.read(10), 5) == b""  # ...and nothing beyond it does
        writer.close()
        assert proxy.stats.refused == 1

        proxy.up()
        await roundtrip(proxy.port)
        assert proxy.stats.connections == 2


async def test_stall_holds_bytes_without_closing() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.TaskGroup() as tg:
            stall = tg.create_task(proxy.stall(0.3))
            read = tg.create_task(reader.readexactly(4))
            await asyncio.sleep(0)
            writer.write(b"held")
            await asyncio.sleep(0.1)
            assert not read.done()  # held while stalled (whatever the machine's speed: it cannot arrive)
            await stall
        assert read.result() == b"held"
        writer.close()
        assert proxy.stats.resets == 0


async def test_down_blackhole_holds_everything_until_up_then_flows() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.down()
        async with asyncio.TaskGroup() as tg:
            old = tg.create_task(reader.readexactly(3))
            writer.write(b"old")
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # the SYN is answered locally...
            new = tg.create_task(r2.readexactly(3))
            w2.write(b"new")
            await asyncio.sleep(0.2)
            assert not old.done() and not new.done()  # ...and nothing comes back while down
            assert proxy.stats.held == 1 and proxy.stats.resets == 0
            proxy.up()
        assert old.result() == b"old" and new.result() == b"new"  # a short outage is survived, as TCP does
        writer.close()
        w2.close()


async def test_a_connection_abandoned_during_blackhole_ends_at_up() -> None:
    async with echo_server() as port, NetemProxy("127.0.0.1", port) as proxy:
        await proxy.down()
        _r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.transport.abort()  # the client's connect timed out; it gave up
        await asyncio.sleep(0.05)
        proxy.up()
        for _ in range(100):
            if proxy.stats.connections == 1 and proxy.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert proxy.stats.connections == 1 and proxy.open_connections == 0
