"""Alembic migrations of the county schema (county/store/tables.py), run at start by Database.open.

Programmatic: `upgrade_to_head(sync_connection)` runs `alembic.command.upgrade(config, "head")` with
the open connection handed to env.py through `Config.attributes["connection"]`, inside the caller's
transaction (so a failed migration leaves nothing half done, on SQLite too: see db._setup_sqlite).
No alembic.ini: `config()` builds the Config. To write a new migration after changing tables.py:

    python -m county.store.migrations revision -m "why" --autogenerate     # against a scratch SQLite

then edit the new file in versions/ (keep it explicit: op.add_column ...; never import tables.py there),
and run tests/test_county_store.py: it fails while tables.py and the migrated schema differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

HERE = Path(__file__).resolve().parent
PG_MIGRATION_LOCK = 0x76696C6C  # pg_advisory_xact_lock key ("vill") held while migrating


def config(connection: Any | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this version knows."""
    h = ScriptDirectory.from_config(config()).get_current_head()
    assert h is not None
    return h


def current_revision(connection: Any) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Any, target: str = "head") -> str | None:
    """Bring the schema on `connection` (a sync Connection in a transaction) to `target`; return it."""
    from county.store.db import SchemaError

    if connection.dialect.name == "postgresql":
        # instances starting together: the first migrates, the others wait here and find it done
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
    current = current_revision(connection)
    script = ScriptDirectory.from_config(config())
    if current is not None:
        try:
            known = script.get_revision(current)
        except CommandError:
            known = None
        if known is None:
            raise SchemaError(
                f"the database is at schema revision {current!r}, which this version of village-edge does "
                f"not know (its newest is {script.get_current_head()!r}): a newer version migrated it. "
                "Run that newer version, or restore a backup taken before the upgrade; it is not migrated down")
    command.upgrade(config(connection), target)
    return current_revision(connection)
