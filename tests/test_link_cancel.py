"""A stop (SIGTERM: the supervisor cancels the link's task) is never lost, whenever it lands in a connect.

The race the agent lost in 3-6 of 40 starts: the stop lands in the very loop iteration in which a refused
connect completes. Python 3.11's `asyncio.wait_for` then returns (or raises) the completed result and drops
the cancellation (CPython gh-86296, bpo-42130), so the link went on into its backoff and the supervisor's stop
budget ended the process with code 3. Here the race is made certain by construction, not found by repeating:
the connect is real (paho against a real socket that refuses, or that accepts and closes at once), and the
cancellation is put into the loop right where the connect's outcome is delivered, either in the same step or
as the next callback (`loop.call_soon`), ahead of the task that awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import agent.link as link_mod
from agent.link import Link
from agent.outbox import Outbox
from tests.support import CANCEL_ORDERINGS, deliver_cancel
from tests.test_link import RecordingSink, config_for

pytestmark = pytest.mark.timeout(60)

# Only a failure guard: the fixed link ends within a few loop iterations of the cancel. A link that lost the
# cancel sits in a backoff of BACKOFF_S and never ends, whatever the machine's speed.
GUARD_S = 20.0
BACKOFF_S = 600.0

ORDERINGS = CANCEL_ORDERINGS
deliver = deliver_cancel


@contextlib.contextmanager
def refusing_port() -> Any:
    """A TCP port bound and not listening: every connect is refused (RST), and no one else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def closing_server() -> AsyncIterator[int]:
    """A TCP listener that accepts and closes at once: paho connects, then the peer closes before CONNACK."""

    async def close_now(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_now, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def link_running(tmp_path: Path, port: int) -> AsyncIterator[tuple[Link, asyncio.Task[None]]]:
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{port}",
                        mqtt={"backoff_min_s": BACKOFF_S, "backoff_max_s": BACKOFF_S, "protocol": "auto"})
    outbox = Outbox(config.outbox_path, config.box.id, max_bytes=config.outbox.max_bytes,
                    telemetry_ttl_s=config.outbox.telemetry_ttl_s, commit_interval_s=0.01)
    link = Link(config, outbox, RecordingSink())
    outbox_task = asyncio.create_task(outbox.run(lambda: None), name="outbox.run")
    run_task = asyncio.create_task(link.run(lambda: None), name="link.run")
    try:
        yield link, run_task
    finally:
        for t in (run_task, outbox_task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def ended_by_cancel(task: asyncio.Task[None]) -> None:
    done, _ = await asyncio.wait({task}, timeout=GUARD_S)
    assert task in done, "the link lost the cancellation and went on (into its backoff)"
    assert task.cancelled(), f"the link ended otherwise: {task.exception()!r}"


def paho_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")]


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_a_refused_connect_completes_ends_the_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordering: str) -> None:
    outcomes: list[BaseException | None] = []
    run_task: asyncio.Task[None] | None = None

    async def connect_then_stop(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        # the real blocking connect in a thread (asyncio.to_thread, as the link does), and the stop right
        # where its outcome reaches the loop
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
        except BaseException as exc:
            outcomes.append(exc)
            raise
        else:
            outcomes.append(None)
            return result
        finally:
            if len(outcomes) == 1:  # one SIGTERM
                assert run_task is not None
                deliver(ordering, run_task)

    monkeypatch.setattr(link_mod, "_in_thread", connect_then_stop)
    with refusing_port() as port:
        async with link_running(tmp_path, port) as (_link, run_task):
            await ended_by_cancel(run_task)
    assert len(outcomes) == 1 and isinstance(outcomes[0], ConnectionRefusedError), outcomes


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_a_stop_landing_as_the_broker_closes_before_connack_ends_the_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ordering: str) -> None:
    closes: list[str] = []
    run_task: asyncio.Task[None] | None = None
    disconnected = link_mod._Connection._disconnected

    def disconnected_then_stop(self: Any, reason: Any) -> None:
        # paho's "closed" reaches the loop (it completes the CONNACK future), and the stop right behind it
        disconnected(self, reason)
        closes.append(str(reason))
        if len(closes) == 1:
            assert run_task is not None
            deliver(ordering, run_task)

    monkeypatch.setattr(link_mod._Connection, "_disconnected", disconnected_then_stop)
    async with closing_server() as port:
        async with link_running(tmp_path, port) as (_link, run_task):
            await ended_by_cancel(run_task)
            # the abandoned attempt was closed, not left with paho's network thread running
            assert not paho_threads(), paho_threads()
    assert len(closes) == 1, closes
