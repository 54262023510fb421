"""The hub's sqlite connections commit without an fsync each (WAL, synchronous=NORMAL)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import create_engine, text

from hubdeploy.hub.db import fast_sqlite_commits


def test_sqlite_connections_use_wal_and_normal_sync(tmp_path):
    fast_sqlite_commits()
    fast_sqlite_commits()  # twice is once
    path = tmp_path / "jupyterhub.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as con:
        con.execute(text("create table t (x integer)"))
        con.execute(text("insert into t values (1)"))
    with engine.connect() as con:
        assert con.execute(text("pragma journal_mode")).scalar() == "wal"
        assert con.execute(text("pragma synchronous")).scalar() == 1  # NORMAL
    engine.dispose()
    # The mode is the file's: any other reader (a backup's online copy) sees the data.
    plain = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert plain.execute("select x from t").fetchall() == [(1,)]
        assert plain.execute("pragma journal_mode").fetchone() == ("wal",)
    finally:
        plain.close()
