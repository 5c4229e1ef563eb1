"""Focused tests for what the chaos soak (bench/soak) found in the agent; each names the soak's symptom."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.outbox import OutboxRefused
from agent.protocol.envelope import Envelope, MsgClass
from tests.test_outbox import make, running

A, T = MsgClass.ALARM, MsgClass.TELEMETRY


async def test_full_store_refusals_and_evictions_stay_counted_across_a_restart(tmp_path: Path) -> None:
    # soak: disk_full then agent_kill; the heartbeat after the restart no longer showed the telemetry refused
    # (and evicted to make room) while the disk was full: those counts lived only in memory.
    path = tmp_path / "o.db"
    async with running(make(path, max_bytes=10**9, max_file_bytes=64 * 1024)) as ob:
        results = []
        for _burst in range(8):
            futures = [ob.send_nowait(T, "t", {"i": i, "pad": "x" * 200}) for i in range(100)]
            results += await asyncio.gather(*futures, return_exceptions=True)
        assert any(isinstance(r, OutboxRefused) for r in results)
        for row in await ob.next_batch(1_000_000):  # the link drains: room again
            ob.ack(row.seq)
        assert isinstance(await asyncio.wait_for(ob.send(A, "sos", {}), 10), Envelope)
        counted = ob.counters
    assert counted.get("refused.telemetry", 0) > 0
    async with running(make(path, max_bytes=10**9, max_file_bytes=64 * 1024)) as ob:
        assert ob.counters == counted
