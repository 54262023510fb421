"""The hub's sqlite database: commits that do not stop the hub.

JupyterHub commits on its event loop, and every request waits while a commit runs.
sqlite's defaults (a rollback journal, ``synchronous=FULL``) fsync the journal and the
database at each commit; on a busy disk that took up to seconds in the spawn storm
benchmark (JupyterHub logged "Event loop was unresponsive for at least 6.12s"), and a
storm commits several times per start. In WAL mode with ``synchronous=NORMAL`` a commit
appends to the write-ahead log without an fsync; the log is synced when it is
checkpointed into the database. The database stays consistent through a crash or a power
loss; a power loss (not a crash of the hub: the OS still has the data) may lose the last
transactions. WAL needs the database on a local file system: the hub's data volume is.

Backups must use sqlite's backup API (which reads the log too), never a copy of the
database file alone.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def _set_pragmas(dbapi_connection, connection_record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return  # PostgreSQL: its own durability settings apply
    cursor = dbapi_connection.cursor()
    try:
        for pragma in PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def fast_sqlite_commits() -> None:
    """Every sqlite connection the hub opens from now on uses WAL and synchronous=NORMAL."""
    if not event.contains(Engine, "connect", _set_pragmas):
        event.listen(Engine, "connect", _set_pragmas)
