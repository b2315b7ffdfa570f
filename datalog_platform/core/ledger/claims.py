"""What a claim leases: the keys of a batch with the versions they were claimed in, and the one
statement that leases them on each dialect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from datalog_platform.core.ledger.batch_size import claimable
from datalog_platform.core.ledger.schema import CLAIMED, INGEST, PENDING, keys
from datalog_platform.core.store import Version


@dataclass(frozen=True)
class ClaimedKey:
    key_id: int
    key: str
    size: int
    etag: str | None = None
    mtime_ns: int | None = None
    version: int = 1  # the number of the version claimed (`versions`)
    lake_version: int | None = None  # the version whose rows the lake holds; None: none

    @property
    def object_version(self) -> Version:
        """The version of the object the ledger had when the key was claimed."""
        return Version(self.size, self.etag, self.mtime_ns)


# What a claim returns of each key, in ClaimedKey's order.
CLAIMED_COLUMNS = (
    keys.c.key_id,
    keys.c.key,
    keys.c.size,
    keys.c.etag,
    keys.c.mtime_ns,
    keys.c.version,
    keys.c.lake_version,
)


@dataclass(frozen=True)
class Batch:
    batch_id: str
    run_id: str | None
    part_date: str
    dstrct_code: str
    keys: tuple[ClaimedKey, ...]
    kind: str = INGEST
    # The batch holds the LIVE files of its partition's ingest datasets (`hold_partition`): it
    # replaces the rows the lake holds of its keys (a rebuild, or keys seen in a new version).
    holds: bool = False

    @property
    def bytes(self) -> int:
        return sum(k.size for k in self.keys)


def claimed_batch(
    batch_id: str,
    run_id: str | None,
    part_date: str,
    region: str,
    claimed: list[Any],
    kind: str = INGEST,
    holds: bool = False,
) -> Batch:
    """The Batch of a claim from its CLAIMED_COLUMNS rows, its keys in key id order (sorted by
    the id alone: comparing whole result rows costs milliseconds a batch)."""
    return Batch(
        batch_id=batch_id,
        run_id=run_id,
        part_date=part_date,
        dstrct_code=region,
        keys=tuple(sorted((ClaimedKey(*row) for row in claimed), key=lambda c: c.key_id)),
        kind=kind,
        holds=holds,
    )


MSSQL_CLAIM_SQL = (
    "UPDATE TOP (:limit) keys WITH (ROWLOCK, UPDLOCK, READPAST) "
    "SET status = :claimed, batch_id = :batch_id "
    "OUTPUT inserted.key_id, inserted.[key], inserted.size, inserted.etag, inserted.mtime_ns, inserted.version, "
    "inserted.lake_version "
    "WHERE status = :pending AND dstrct_code = :dstrct_code AND part_date = :part_date AND attempts = :attempts"
)


def claim_statement(
    dialect_name: str,
    batch_id: str,
    part_date: str,
    region: str,
    limit: int,
    attempts: int = 0,
) -> Any:
    """The one statement that leases up to `limit` PENDING keys of a partition that failed
    `attempts` times so far to `batch_id`.

    SQLAlchemy renders `with_for_update(skip_locked=True)` as nothing on MSSQL, so the MSSQL
    locking hints are written out; PostgreSQL gets `FOR UPDATE SKIP LOCKED`; SQLite serialises
    writers, so the plain statement is already exclusive there.
    """
    if dialect_name == "mssql":
        return sa.text(MSSQL_CLAIM_SQL).bindparams(
            limit=limit,
            claimed=CLAIMED,
            batch_id=batch_id,
            pending=PENDING,
            dstrct_code=region,
            part_date=part_date,
            attempts=attempts,
        )
    candidates = (
        sa.select(keys.c.key_id)
        .where(*claimable(part_date, region, attempts))
        .order_by(keys.c.key_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (
        sa.update(keys)
        .where(keys.c.key_id.in_(candidates.scalar_subquery()))
        .values(status=CLAIMED, batch_id=batch_id)
        .returning(*CLAIMED_COLUMNS)
    )
