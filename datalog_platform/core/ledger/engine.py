"""SQLAlchemy engines for the ledger (and the warehouse): MSSQL, PostgreSQL or SQLite, one per URL
and process."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import create_schema

# Rows per statement and values per IN list: well under MSSQL's 2,100 parameters a statement.
CHUNK = 500


def chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.cache
def ledger_engine(url: str) -> sa.Engine:
    """The ledger's engine, one per URL and process, its schema created on first use."""
    engine = database_engine(url)
    create_schema(engine)
    return engine


@functools.cache
def database_engine(url: str) -> sa.Engine:
    """One engine per URL and process.

    SQLite gets WAL (readers never block the writer) and a long busy timeout, since concurrent
    claimers queue on its single writer lock.
    """
    if url.startswith("sqlite"):
        database = sa.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    return engine
