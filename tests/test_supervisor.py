"""The supervisor: one TaskGroup, a crash exits 1 with its traceback, a stop exits 0 with cleanup done."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from agent.supervisor import EXIT_CRASH, EXIT_OK, EXIT_STOP_OVERRAN, Supervisor


class Steady:
    """A service that serves until cancelled and records its cleanup."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cleaned = False

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned = True


class Crashing:
    name = "crashing"

    async def run(self, ready: Callable[[], None]) -> None:
        ready()
        await asyncio.sleep(0)
        raise RuntimeError("driver exploded")


async def test_a_crash_stops_everything_and_exits_1_with_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    steady = Steady("steady")
    with caplog.at_level(logging.CRITICAL, "agent.supervisor"):
        code = await Supervisor([steady, Crashing()]).run()
    assert code == EXIT_CRASH
    assert steady.cleaned, "the other services were cancelled and ran their finally"
    record = next(r for r in caplog.records if r.levelno == logging.CRITICAL)
    assert record.exc_info and "driver exploded" in str(record.exc_info[1])
    assert "Traceback" in caplog.text


async def test_stop_cancels_services_cleanly_and_exits_0() -> None:
    services = [Steady("a"), Steady("b")]
    sup = Supervisor(services)
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(sup.all_ready.wait(), 5)
    sup.request_stop()
    assert await asyncio.wait_for(task, 5) == EXIT_OK
    assert all(s.cleaned for s in services)


def run_child(body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent("""
        import asyncio, logging, os, signal, sys, time
        from agent.supervisor import Supervisor
        logging.basicConfig(level=logging.INFO)
        """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_sigterm_exits_0_after_cleanup() -> None:
    result = run_child("""
        class S:
            name = "s"
            async def run(self, ready):
                ready()
                try:
                    await asyncio.Event().wait()
                finally:
                    print("cleanup done", flush=True)
        async def main():
            sup = Supervisor([S()], shutdown_budget_s=5)
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
            return await sup.run()
        sys.exit(asyncio.run(main()))
    """)
    assert result.returncode == 0, result.stderr
    assert "cleanup done" in result.stdout and "SIGTERM received" in result.stderr


def test_a_cleanup_that_hangs_cannot_keep_the_process_alive() -> None:
    result = run_child("""
        class Stuck:
            name = "stuck"
            async def run(self, ready):
                ready()
                try:
                    await asyncio.Event().wait()
                finally:
                    time.sleep(60)  # a driver call that never returns, blocking the loop
        async def main():
            sup = Supervisor([Stuck()], shutdown_budget_s=0.5)
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
            return await sup.run()
        sys.exit(asyncio.run(main()))
    """)
    assert result.returncode == EXIT_STOP_OVERRAN
    assert "cleanup overran" in result.stderr
