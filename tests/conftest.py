from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Collector, Mosquitto

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO.parent / "shared" / "testdata" / "peers"


@pytest.fixture
def peers() -> Path:
    if not PEERS.is_dir():
        pytest.fail(f"peer test data not found at {PEERS} (shared/ must sit beside the repo)")
    return PEERS


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    c = Collector(broker.url).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> object:
    """Fail a test that leaves asyncio tasks running (aioesphomeapi's conftest does the same)."""
    yield
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    me = asyncio.current_task(loop)
    left = [t for t in asyncio.all_tasks(loop) if t is not me and not t.done()]
    if left:
        for t in left:
            t.cancel()
        pytest.fail(f"test left tasks running: {[t.get_name() for t in left]}")
