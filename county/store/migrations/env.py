"""Alembic environment of the county schema (loaded by alembic, not imported).

Programmatic use (Database.migrate): the open sync connection is in config.attributes["connection"] and
its transaction belongs to the caller. By hand (`python -m county.store.migrations`): `-x url=...`
(a sync URL: sqlite:///PATH or postgresql+psycopg://...), default sqlite:///alembic-scratch.db.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from county.store.tables import metadata

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,      # SQLite cannot ALTER most things: batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///alembic-scratch.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
