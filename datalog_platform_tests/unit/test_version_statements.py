"""The ledger statements of object versions, for MSSQL too: rendered by SQLAlchemy's MSSQL dialect
(there is no SQL Server here) and run through MSSQL's own code paths on a real SQLite ledger.

Covers the claim (its OUTPUT clause returns each key's version and the version the lake holds), a
new version recorded while a batch reads the key (the history row and the key's update), and a
commit with every kind of outcome (written in the version claimed, written while a newer one was
recorded, gone, kept by a rebuild, crashed the reader, changed during the read), the new table and
the upgrade's ALTER. Every statement carries its values as bound parameters, within MSSQL's 2,100
a statement; the ledger ends as the protocol says.

Real parts: a SQLite ledger file, SQLAlchemy's MSSQL dialect.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from datalog_platform.core.ledger import claims, outcomes, protocol, registration, versions
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.schema import (
    CLAIMED,
    FAILED,
    MISSING,
    PENDING,
    QUARANTINED,
    SUCCESS,
    key_versions,
    keys,
)
from datalog_platform.core.store import ObjectInfo

DAY = "2026-11-01"
REGION = "RG"
NAMES = [f"dev'1/2026110100/{name}.json" for name in ("written", "newer", "gone", "crashed", "changed", "unreadable")]
ERROR = 'it\'s "gone"; DROP TABLE keys'


class RenderedForMssql:
    """A connection that renders each statement with the MSSQL dialect before running it on the real
    one. Its `dialect` is MSSQL's, so the code it is given takes MSSQL's paths."""

    dialect = mssql.dialect()

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.rendered: list[Any] = []

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        self.rendered.append(statement.compile(dialect=self.dialect))
        return self.conn.execute(statement, parameters)


def assert_bound(compiled: Any, *values: str) -> None:
    sql = str(compiled)
    for value in values:
        assert value not in sql, sql
    assert len(compiled.params) < 2100


def test_the_claim_returns_versions_on_mssql() -> None:
    stmt = claims.claim_statement("mssql", "b-1", DAY, REGION, 1000).compile(dialect=mssql.dialect())
    assert "OUTPUT inserted.key_id, inserted.[key], inserted.size, inserted.etag, inserted.mtime_ns" in str(stmt)
    assert "inserted.version, inserted.lake_version" in str(stmt)
    assert_bound(stmt, "b-1", DAY, REGION, CLAIMED, PENDING)


def test_version_statements_run_through_mssqls_paths(sqlite_engine: sa.Engine) -> None:
    engine = sqlite_engine
    registration.upsert_devices(engine, [("dev'1", REGION)])
    registration.register_keys(engine, [ObjectInfo(n, 10, "e1") for n in NAMES], 8, versions.REINGEST)
    batch = protocol.claim_batch(engine, DAY, REGION, 100, None, 60)
    assert batch is not None
    ids = {k.key: k.key_id for k in batch.keys}
    newer = NAMES[1]
    now = datetime(2026, 11, 1, 1)
    with engine.begin() as real:
        conn = RenderedForMssql(real)
        (row,) = real.execute(sa.select(*versions.KNOWN_COLUMNS).where(keys.c.key == newer)).all()
        versions.replace_versions(conn, [(row, ObjectInfo(newer, 20, "e2"))], versions.REINGEST, now)  # type: ignore[arg-type]
        settled = [
            KeyOutcome(ids[NAMES[0]], SUCCESS, rows=5),
            KeyOutcome(ids[newer], SUCCESS, rows=6),
            KeyOutcome(ids[NAMES[2]], MISSING, error=ERROR),
            KeyOutcome(ids[NAMES[3]], FAILED, error=ERROR),
            KeyOutcome(ids[NAMES[4]], outcomes.CHANGED, seen=ObjectInfo(NAMES[4], 30, "e3")),
            KeyOutcome(ids[NAMES[5]], QUARANTINED, error=ERROR),
        ]
        outcomes.record_outcomes(conn, batch.batch_id, settled, versions.REINGEST, now)  # type: ignore[arg-type]
    assert len(conn.rendered) >= 8
    for compiled in conn.rendered:
        assert_bound(compiled, ERROR, NAMES[0], batch.batch_id, "e2")

    with engine.connect() as db:
        got = {
            r.key: (r.status, r.version, r.lake_version, r.attempts, r.rows) for r in db.execute(sa.select(keys)).all()
        }
        history = db.execute(sa.select(key_versions.c.key_id, key_versions.c.version, key_versions.c.batch_id)).all()
    assert got == {
        NAMES[0]: (SUCCESS, 1, 1, 0, 5),
        newer: (PENDING, 2, 1, 0, 6),  # version 1 written, version 2 waits
        NAMES[2]: (MISSING, 1, None, 0, None),
        NAMES[3]: (FAILED, 1, None, 1, None),
        NAMES[4]: (PENDING, 2, None, 0, None),
        NAMES[5]: (QUARANTINED, 1, 1, 0, 0),
    }
    assert sorted(history) == sorted([(ids[newer], 1, batch.batch_id), (ids[NAMES[4]], 1, None)])


def test_the_new_table_and_the_upgrade_render_for_mssql() -> None:
    ddl = str(sa.schema.CreateTable(key_versions).compile(dialect=mssql.dialect()))
    assert "CREATE TABLE key_versions" in ddl and "PRIMARY KEY (key_id, version)" in ddl
    version = keys.c.version
    assert f"{version.type.compile(mssql.dialect())} NOT NULL DEFAULT {version.server_default.arg.text}" == (
        "INTEGER NOT NULL DEFAULT 1"
    )
