"""The county server's database: one `Database` over an async SQLAlchemy engine, SQLite or PostgreSQL.

    db = await Database.open("sqlite:////var/lib/village-county/county.db")   # or postgresql://...
    async with db.begin() as conn:                                           # one write transaction
        await conn.execute(db.insert_ignore(messages), rows)                 # a resend is ignored
    async with db.connect() as conn:                                         # reads
        ...
    await db.close()

`open` maps the configured URL to its async driver, sets SQLite up for a server (WAL, foreign keys,
busy_timeout, real transactions) and brings the schema to the newest migration (county/store/migrations,
Alembic, run programmatically: see `migrate`). A database that a newer version of the server migrated
(an Alembic revision this version does not know) is refused with `SchemaError`, never migrated down.

URL forms (`[database] url` in county.toml):
- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's: three slashes, then the
  path; an absolute path so starts with a fourth); the parent directory is created when missing.
- `postgresql://user:password@host:port/dbname`, `postgresql:///dbname?host=/run/postgresql` (a unix socket
  directory), `postgres://...`; any libpq query parameter (sslmode=...) is passed to psycopg.
- `sqlite+aiosqlite://...` and `postgresql+psycopg://...` are taken as they are.

The only raw SQL of the county is here: SQLite pragmas and BEGIN, PostgreSQL's migration lock.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000


class SchemaError(RuntimeError):
    """The database's schema is not one this version can use (a newer migration, or a broken history)."""


class DatabaseUrlError(ValueError):
    """`[database] url` is not a database this server can open."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be opened: server down, wrong credentials, no such database, no permission."""


def _one_line(e: object, limit: int = 300) -> str:
    """A driver's message for one log line: control characters (untrusted text) blanked, cut to `limit`."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(e)).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def async_url(url: str) -> URL:
    """The configured URL with its async driver: sqlite+aiosqlite or postgresql+psycopg."""
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise DatabaseUrlError(f"not a database URL: {url!r} (sqlite:///PATH or postgresql://...)") from e
    backend, _, driver = u.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise DatabaseUrlError(f"sqlite+{driver}: only sqlite:// (aiosqlite) is supported")
        if not u.database or u.database == ":memory:" or u.database.startswith("file::memory:"):
            raise DatabaseUrlError(f"{url!r}: an in-memory database keeps nothing; give a file path "
                                   "(sqlite:////var/lib/village-county/county.db)")
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise DatabaseUrlError(f"{backend}+{driver}: only postgresql:// (psycopg 3) is supported")
        return u.set(drivername="postgresql+psycopg")
    raise DatabaseUrlError(f"{u.drivername}: unsupported database (sqlite:///PATH or postgresql://...)")


def insert_ignore(dialect: str, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING on `table` (any unique key), for `dialect` "sqlite"/"postgresql".

    To learn which rows were new, add `.returning(table.c.id)`: it lists only the inserted ones, on both
    dialects and with many rows at once (rowcount of an executemany is -1 on psycopg).
    """
    return _insert(dialect, table).on_conflict_do_nothing()


def upsert(dialect: str, table: Table, index_elements: Sequence[str],
           set_: Sequence[str] | Mapping[str, Any] | Callable[[Any], Mapping[str, Any]],
           where: Callable[[Any], Any] | None = None) -> Insert:
    """INSERT ... ON CONFLICT (index_elements) DO UPDATE SET ... on either dialect.

    `set_` is the columns to take from the row being inserted (`["state", "ts"]`), or a mapping of
    column -> value/expression, or a function of `excluded` (the row being inserted) returning that
    mapping: `lambda ex: {"n": table.c.n + ex.n}`. `where(excluded)` makes the update conditional, e.g.
    `lambda ex: ex.ts > table.c.ts` keeps the newest row.
    """
    return upsert_on(_insert(dialect, table), index_elements, set_, where)


def unnest_source(table: Table, columns: Sequence[str]) -> Any:
    """PostgreSQL: SELECT r.col, ... FROM unnest(:a_col::TYPE[], ...) AS r(col, ...): rows from one array per column."""
    from sqlalchemy import bindparam, select
    from sqlalchemy import func as sa_func

    arrays = [bindparam(f"a_{c}", type_=pg_dialect.ARRAY(table.c[c].type)) for c in columns]
    src = sa_func.unnest(*arrays).table_valued(*columns).render_derived(name="r")
    return select(*[src.c[c] for c in columns])


def unnest_typed(types: Mapping[str, Any], name: str = "r") -> Any:
    """PostgreSQL: the derived table `unnest(:a_col::TYPE[], ...) AS name(col, ...)` for `types` (column ->
    SQLAlchemy type); its `.c` are the columns, for an UPDATE ... FROM (`Database.execute_unnest`)."""
    from sqlalchemy import bindparam
    from sqlalchemy import func as sa_func

    arrays = [bindparam(f"a_{c}", type_=pg_dialect.ARRAY(t)) for c, t in types.items()]
    return sa_func.unnest(*arrays).table_valued(*types).render_derived(name=name)


def upsert_on(stmt: Any, index_elements: Sequence[str],
              set_: Sequence[str] | Mapping[str, Any] | Callable[[Any], Mapping[str, Any]],
              where: Callable[[Any], Any] | None = None) -> Any:
    """`upsert` on a given dialect insert (`stmt`: e.g. an INSERT ... SELECT)."""
    excluded = stmt.excluded
    if callable(set_):
        values = dict(set_(excluded))
    elif isinstance(set_, Mapping):
        values = dict(set_)
    else:
        values = {name: excluded[name] for name in set_}
    if not values:
        raise ValueError("upsert needs at least one column to update (use insert_ignore otherwise)")
    return stmt.on_conflict_do_update(index_elements=list(index_elements), set_=values,
                                      where=where(excluded) if where is not None else None)


def _insert(dialect: str, table: Table) -> Any:
    if dialect == "sqlite":
        return sqlite_dialect.insert(table)
    if dialect == "postgresql":
        return pg_dialect.insert(table)
    raise ValueError(f"no insert for dialect {dialect!r}")


_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _migration_locks.get(loop)
    if lock is None:
        lock = _migration_locks[loop] = asyncio.Lock()
    return lock


def _make_parent(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)


def _setup_sqlite(engine: AsyncEngine) -> None:
    """Pragmas on every new connection, and real transactions (sqlalchemy docs "sqlite_transactions").

    Python's sqlite3 (before 3.16) only BEGINs before DML: DDL would autocommit (migrations could stop
    halfway) and a read-then-write transaction would take the write lock late. So the driver's own
    transaction handling is switched off and SQLAlchemy's begin emits BEGIN itself: IMMEDIATE for
    `Database.begin()` (the write lock at once, waiting up to busy_timeout, never a mid-transaction
    SQLITE_BUSY), DEFERRED for reads.
    """
    sync = engine.sync_engine

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a crash of the process
        cur.close()

    @event.listens_for(sync, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("village_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The county's database: an async engine, its dialect, and the two dialect-aware insert helpers."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name  # "sqlite" | "postgresql"
        self._bulk: dict[str, Any] = {}  # write_rows' statements: SQLAlchemy's (SQLite) or SQL text (PostgreSQL)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> Database:
        """Open `url` (see the module doc), and unless `migrate=False` bring its schema to the newest."""
        u = async_url(url)
        shown = u.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {"echo": echo}
        if u.drivername.startswith("sqlite"):
            assert u.database is not None
            try:
                await asyncio.to_thread(_make_parent, u.database)
            except OSError as e:
                raise DatabaseUnavailable(f"cannot open {shown}: cannot create its directory: "
                                          f"{e.strerror or e}") from e
            engine = create_async_engine(u, **kwargs)
            _setup_sqlite(engine)
        else:
            engine = create_async_engine(u, pool_pre_ping=True, **kwargs)
        db = cls(engine)
        try:
            if migrate:
                await db.migrate()
            else:
                async with db.connect():
                    pass
        except (OperationalError, InterfaceError, OSError) as e:
            await engine.dispose()
            raise DatabaseUnavailable(f"cannot open {shown}: {_one_line(getattr(e, 'orig', None) or e)}") from e
        except BaseException:
            await engine.dispose()
            raise
        return db

    @property
    def url(self) -> str:
        """The URL without its password (for logs and errors)."""
        return self.engine.url.render_as_string(hide_password=True)

    async def migrate(self) -> str | None:
        """Upgrade to the newest migration in one transaction; returns the revision now in force.

        Runs Alembic programmatically (alembic.command.upgrade over this engine's connection, handed to
        migrations/env.py via Config.attributes). On PostgreSQL the transaction first takes an advisory
        lock, so several instances starting at once migrate one after the other (the later ones find
        nothing to do). A database at a revision this version does not know raises SchemaError.
        """
        from county.store import migrations

        # alembic's `context`/`op` are process globals: two migrations interleaving in one process (their
        # IO switches greenlets) would trample each other, so this process migrates one database at a time
        async with _migration_lock(), self.begin() as conn:
            return await conn.run_sync(migrations.upgrade_to_head)

    async def revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated)."""
        from county.store import migrations

        async with self.connect() as conn:
            return await conn.run_sync(migrations.current_revision)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed when the block ends, rolled back on an exception.

        On SQLite it starts with BEGIN IMMEDIATE (takes the write lock at once, waiting busy_timeout).
        """
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                await conn.execution_options(village_write=True)
            async with conn.begin():
                yield conn

    def connect(self) -> AsyncConnection:
        """A connection for reads (`async with db.connect() as conn`; it autobegins).

        Write in `begin()` instead: on SQLite its BEGIN IMMEDIATE takes the write lock first, where a read
        transaction turned writer can fail halfway with "database is locked".
        """
        return self.engine.connect()

    def insert_ignore(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING (see the module function)."""
        return insert_ignore(self.dialect, table)

    async def write_rows(self, conn: AsyncConnection, name: str, table: Table, columns: Sequence[str],
                         rows: Sequence[Mapping[str, Any]], build: Callable[[Any], Any] | None = None, *,
                         returning: bool = False) -> list[Any]:
        """Many rows of `columns` into `table` in `conn`'s transaction, by one statement `build(insert)` adds
        ON CONFLICT / RETURNING to (`name` caches it); the RETURNING rows if `returning`.

        SQLite: `build(insert(table))` compiled once and run as the driver's executemany of tuples (sqlite3's,
        in C; SQLAlchemy's per-row parameter handling was most of the cost of such a statement); with
        `returning`, or a statement with parameters of its own, through SQLAlchemy. PostgreSQL: `build(INSERT INTO table
        (columns) SELECT ... FROM unnest(:a_col::TYPE[], ...))` run once with one array per column, sent in
        binary. Why: SQLAlchemy's executemany on PostgreSQL is either one round of the pipeline per row or,
        with RETURNING, a multi-row VALUES whose text changes with the number of rows, which psycopg parses
        anew each time (it caches only short texts) while escaping text arrays element by element; that
        was most of ingest's cost there. The statement here has one text for any number of rows (parsed
        once, prepared by the server). It runs on a psycopg cursor of `conn`'s own connection (the same
        transaction): SQLAlchemy has no way to ask for binary parameters (psycopg's `%(name)b`).
        Rows with the same conflict key must be merged first (ON CONFLICT DO UPDATE takes a row once).
        """
        if not rows:
            return []
        stmt = self._bulk.get(name)
        if self.dialect != "postgresql":
            if stmt is None:
                base = _insert(self.dialect, table)
                built = build(base) if build is not None else base
                compiled = built.compile(dialect=self.engine.dialect, column_keys=list(columns))
                order = tuple(compiled.positiontup or ())
                plain = not returning and set(order) <= set(columns) and not compiled.binds.keys() - set(order)
                stmt = self._bulk[name] = (str(compiled), order) if plain else built
            if isinstance(stmt, tuple):
                sql, order = stmt
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                await driver.executemany(sql, [tuple(r[c] for c in order) for r in rows])
                return []
            res = await conn.execute(stmt, list(rows))
            return list(res.all()) if returning else []
        if stmt is None:
            base = _insert("postgresql", table).from_select(list(columns), unnest_source(table, columns))
            sql = str((build(base) if build is not None else base).compile(dialect=self.engine.dialect))
            for c in columns:  # %b: this parameter in binary (psycopg's placeholder); the names are ours
                sql = sql.replace(f"%(a_{c})s", f"%(a_{c})b")
            stmt = self._bulk[name] = sql
        params = {f"a_{c}": [r[c] for r in rows] for c in columns}
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with driver.cursor() as cur:
            await cur.execute(stmt, params)
            return list(await cur.fetchall()) if returning else []

    async def execute_unnest(self, conn: AsyncConnection, name: str, build: Callable[[], Any],
                             columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        """PostgreSQL only: `build()` (a statement over `unnest_typed` of `columns`; cached as `name`) run once
        with one binary array per column, as write_rows does for inserts."""
        if not rows:
            return
        sql = self._bulk.get(name)
        if sql is None:
            sql = str(build().compile(dialect=self.engine.dialect))
            for c in columns:
                sql = sql.replace(f"%(a_{c})s", f"%(a_{c})b")
            self._bulk[name] = sql
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with driver.cursor() as cur:
            await cur.execute(sql, {f"a_{c}": [r[c] for r in rows] for c in columns})

    async def insert_new(self, conn: AsyncConnection, name: str, table: Table, columns: Sequence[str], key: str,
                         rows: Sequence[Mapping[str, Any]]) -> set[Any]:
        """INSERT ... ON CONFLICT DO NOTHING of `rows` (distinct `key`s); the keys that were new.

        PostgreSQL: write_rows with RETURNING. SQLite: the keys already stored are read first, then the rows
        go in by the driver's executemany (still ON CONFLICT DO NOTHING); sound because `Database.begin()`
        holds SQLite's write lock from its BEGIN IMMEDIATE, so no other writer can store one in between.
        """
        if not rows:
            return set()
        if self.dialect == "postgresql":
            got = await self.write_rows(conn, name, table, columns, rows,
                                        lambda ins: ins.on_conflict_do_nothing().returning(table.c[key]),
                                        returning=True)
            return {r[0] for r in got}
        from sqlalchemy import select

        keys = [r[key] for r in rows]
        present: set[Any] = set()
        for i in range(0, len(keys), 5000):
            q = select(table.c[key]).where(table.c[key].in_(keys[i:i + 5000]))
            present.update(r[0] for r in (await conn.execute(q)).all())
        await self.write_rows(conn, name, table, columns, rows, lambda ins: ins.on_conflict_do_nothing())
        return set(keys) - present

    def upsert(self, table: Table, index_elements: Sequence[str],
               set_: Sequence[str] | Mapping[str, Any] | Callable[[Any], Mapping[str, Any]],
               where: Callable[[Any], Any] | None = None) -> Insert:
        """INSERT ... ON CONFLICT DO UPDATE (see the module function)."""
        return upsert(self.dialect, table, index_elements, set_, where)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
