from __future__ import annotations

import asyncio
import gc
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import PgCluster, PgMissing
from tests.support import Collector, Mosquitto

REPO = Path(__file__).resolve().parent.parent
# the team's shared test data sits beside the repo (../shared); VILLAGE_SHARED_DIR points elsewhere
SHARED = Path(os.environ.get("VILLAGE_SHARED_DIR") or REPO.parent / "shared")
PEERS = SHARED / "testdata" / "peers"
# the CLI's words are English in the tests whatever the machine's locale (LANG=zh_CN.UTF-8 would switch them:
# agent/i18n.py); the tests of the Chinese side pass --lang zh or set VILLAGE_LANG themselves
os.environ["VILLAGE_LANG"] = "en"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The soak first under pytest-xdist: each worker collects, and (./scripts/test: --dist loadfile
    --no-loadscope-reorder) files are handed out in that order; a 2.5-minute test taken last would run alone at
    the end. In one process the order stays as it is (a quick failure with -x comes before the soak)."""
    if hasattr(config, "workerinput"):  # a pytest-xdist worker
        items.sort(key=lambda item: 0 if item.get_closest_marker("soak") else 1)  # stable: the rest keep theirs


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def shared_testdata(path: Path) -> Path:
    """`path` (a directory of ../shared test data), or skip the test saying why; in CI (CI=true) fail instead.

    A user's clone of the project alone has no ../shared: its tests skip. CI must have it: a missing
    directory there is a broken checkout, not a reason to pass.
    """
    if path.is_dir():
        return path
    why = (f"shared test data not found at {path} (a clone of the project alone has no ../shared; "
           "put the shared repo beside it or set VILLAGE_SHARED_DIR)")
    if in_ci():
        pytest.fail(f"{why}; CI=true needs it", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def peers() -> Path:
    """The public peer samples (CAP alerts, Traccar watch frames) in ../shared/testdata/peers."""
    return shared_testdata(PEERS)


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster for the whole session (tests/pgcluster.py), started on first use.

    No PostgreSQL binaries: the tests that need it skip saying why; in CI (CI=true) they fail instead.
    """
    try:
        cluster = PgCluster.create()
    except PgMissing as e:
        if in_ci():
            pytest.fail(f"{e}; CI=true needs it", pytrace=False)
        pytest.skip(str(e))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty county database, once on SQLite and once on PostgreSQL.

    sqlite: sqlite:////TMP/county.db (a new file per test); postgresql: a database created for this test
    in the session's cluster (postgresql://county@127.0.0.1:PORT/tN), dropped after it.
    `county.store.Database.open(db_url)` migrates it.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'county.db'}"
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = f"t{os.getpid()}_{next(_databases)}"
    url = cluster.create_database(name)
    try:
        yield url
    finally:
        cluster.drop_database(name)


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> object:
    """Fail a test that leaves asyncio tasks running (aioesphomeapi's conftest does the same)."""
    yield
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    me = asyncio.current_task(loop)
    # an async generator dropped unfinished (httpx's line iterators) is closed by a task the loop makes when it
    # is collected: give those their steps first, they end at once
    gc.collect()
    closing = [t for t in asyncio.all_tasks(loop)
               if t is not me and not t.done() and type(t.get_coro()).__name__ == "async_generator_athrow"]
    if closing:
        await asyncio.wait(closing, timeout=30)
    left = [t for t in asyncio.all_tasks(loop) if t is not me and not t.done()]
    if left:
        for t in left:
            t.cancel()
        pytest.fail(f"test left tasks running: {[(t.get_name(), t.get_coro()) for t in left]}")
