"""`wait_within`: asyncio.wait_for without its lost cancellations; stdlib only, for drivers/, agent/ and county/.

On Python 3.11 `asyncio.wait_for` drops a cancellation of the caller that lands in the loop step in which the
awaited thing completes: it returns (or raises) the inner outcome, and the caller goes on as if never
cancelled (CPython gh-86296, bpo-42130; fixed in 3.12, where wait_for is built on asyncio.timeout). On a
stop path that is a SIGTERM lost: the relay stays on and the process runs until systemd kills it.
`asyncio.timeout` is no way out on 3.11.0-3.11.2 (Debian bookworm ships 3.11.2): it can turn its own expiry
into a CancelledError while the task is being cancelled (gh-102780), i.e. inside cleanup.

`asyncio.wait` never swallows a cancellation of its caller and never cancels what it waits for, so it is
the one primitive used here. Rule (docs/reliability.md): no `asyncio.wait_for` in agent/, drivers/, county/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned inner task's outcome as seen: no 'exception was never retrieved' at ERROR."""
    if not task.cancelled():
        task.exception()


async def wait_within(aw: Awaitable[T], seconds: float | None) -> T:
    """The outcome of `aw` if it ends within `seconds` (None: no limit), else TimeoutError.

    As wait_for: on expiry `aw` is cancelled and waited for (a Future or Task passed in is cancelled too;
    shield it, or use asyncio.wait directly, to keep it). Unlike 3.11's wait_for, a cancellation of the
    caller always propagates as CancelledError, even when `aw` completes in the same loop step (its outcome
    is then dropped), and `aw` is cancelled without waiting for it: the caller's stop goes on at once.
    """
    inner: asyncio.Future[T] = asyncio.ensure_future(aw)
    inner.add_done_callback(_retrieve)  # an outcome dropped on cancellation is not logged as never retrieved
    try:
        done, _ = await asyncio.wait({inner}, timeout=seconds)
    except BaseException:
        inner.cancel()
        raise
    if done:
        return inner.result()
    inner.cancel()
    await asyncio.wait({inner})  # a cancellation of the caller here propagates; inner is already cancelled
    if inner.cancelled():
        raise TimeoutError
    return inner.result()  # it ignored the cancel and ended anyway: its outcome, as wait_for does
