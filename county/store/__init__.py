"""The county server's storage: the schema (tables.py), the database and its migrations (db.py,
migrations/), retention (retention.py). The only place SQL lives."""

from county.store.db import Database, DatabaseUnavailable, DatabaseUrlError, SchemaError, insert_ignore, upsert

__all__ = ["Database", "DatabaseUnavailable", "DatabaseUrlError", "SchemaError", "insert_ignore", "upsert"]
