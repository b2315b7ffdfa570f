"""The claim protocol: register -> claim -> (write) -> commit | abort -> recover.

Each step is one short transaction. The batch row is the write intent: while it is WRITING, its
files may exist in the lake; COMMITTED makes them part of the dataset (LIVE in the `lake_files`
manifest); ABORTING fences a stale writer out (its commit fails) while the files are deleted;
ABORTED hands the keys back. Rebuilds and compactions (see `swap`) commit through the same steps.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from datalog_platform.core.ledger import bulk
from datalog_platform.core.ledger.batch_size import claimable, most_failed, retry_limit, within_budget
from datalog_platform.core.ledger.engine import chunks
from datalog_platform.core.ledger.schema import (
    ABORTED,
    ABORTING,
    CLAIMED,
    COMMITTED,
    FAILED,
    INGEST,
    LIVE,
    PENDING,
    QUARANTINED,
    RETIRED,
    SUCCESS,
    WRITING,
    LakeFile,
    batches,
    keys,
    lake_files,
)
from datalog_platform.core.names import is_device_id

_RAW_KEY = re.compile(r"(?P<device>[^/]+)/(?P<hour>\d{10})/[^/]+\.json(\.gz)?")


class StaleBatchError(RuntimeError):
    """The batch is no longer WRITING: its lease was taken over, so this writer must not commit."""


class _Listable(Protocol):
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[Any]: ...

    def delete(self, keys: Iterable[str]) -> int: ...


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class RawKey:
    device_id: str
    hour: datetime


def parse_raw_key(key: str) -> RawKey | None:
    """`{device_id}/{YYYYMMDDHH}/{name}.json[.gz]` -> device and UTC hour; anything else, or a
    device id outside its safe set (`names`), -> None."""
    match = _RAW_KEY.fullmatch(key)
    if not match or not is_device_id(match["device"]):
        return None
    digits = match["hour"]
    try:  # what strptime("%Y%m%d%H") accepts of 10 digits, at a tenth of its cost (a page is 1,000 keys)
        hour = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:]))
    except ValueError:
        return None
    return RawKey(device_id=match["device"], hour=hour)


def local_date(hour: datetime, tz_offset_hours: int) -> str:
    return (hour + timedelta(hours=tz_offset_hours)).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# Claim


@dataclass(frozen=True)
class ClaimedKey:
    key_id: int
    key: str
    size: int


@dataclass(frozen=True)
class Batch:
    batch_id: str
    run_id: str | None
    part_date: str
    dstrct_code: str
    keys: tuple[ClaimedKey, ...]
    kind: str = INGEST

    @property
    def bytes(self) -> int:
        return sum(k.size for k in self.keys)


def claimed_batch(
    batch_id: str, run_id: str | None, part_date: str, region: str, claimed: list[Any], kind: str = INGEST
) -> Batch:
    """The Batch of a claim from its (key_id, key, size) rows, its keys in key id order (sorted by
    the id alone: comparing whole result rows costs milliseconds a batch)."""
    return Batch(
        batch_id=batch_id,
        run_id=run_id,
        part_date=part_date,
        dstrct_code=region,
        keys=tuple(sorted((ClaimedKey(int(i), k, int(s)) for i, k, s in claimed), key=lambda c: c.key_id)),
        kind=kind,
    )


MSSQL_CLAIM_SQL = (
    "UPDATE TOP (:limit) keys WITH (ROWLOCK, UPDLOCK, READPAST) "
    "SET status = :claimed, batch_id = :batch_id "
    "OUTPUT inserted.key_id, inserted.[key], inserted.size "
    "WHERE status = :pending AND dstrct_code = :dstrct_code AND part_date = :part_date AND attempts = :attempts"
)


def claim_statement(
    dialect_name: str, batch_id: str, part_date: str, region: str, limit: int, attempts: int = 0
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
        .returning(keys.c.key_id, keys.c.key, keys.c.size)
    )


def insert_batch(
    conn: sa.Connection, kind: str, part_date: str, region: str, run_id: str | None, lease_seconds: int
) -> str:
    """A new WRITING batch of `kind` with no keys yet, in the caller's transaction; returns its id."""
    batch_id = str(uuid.uuid4())
    now = utcnow()
    conn.execute(
        sa.insert(batches).values(
            batch_id=batch_id,
            run_id=run_id,
            part_date=part_date,
            dstrct_code=region,
            status=WRITING,
            kind=kind,
            lease_until=now + timedelta(seconds=lease_seconds),
            keys=0,
            created_at=now,
        )
    )
    return batch_id


def claim_batch(
    engine: sa.Engine,
    part_date: str,
    region: str,
    limit: int,
    run_id: str | None,
    lease_seconds: int,
    max_attempts: int = 3,
    max_bytes: int | None = None,
) -> Batch | None:
    """Lease PENDING keys of (part_date, region) to a new WRITING batch, or None if there are none.

    Keys that failed before come first, those that failed most first, in batches of
    `retry_limit`; then up to `limit` keys that never failed. With `max_bytes`, a batch also
    stops before its raw objects exceed that many bytes (`within_budget`).
    """
    with engine.connect() as conn, conn.begin() as tx:
        attempts = most_failed(conn, part_date, region)
        size = retry_limit(limit, attempts, max_attempts)
        if max_bytes is not None and size > 1:
            size = within_budget(conn, part_date, region, attempts, size, max_bytes)
        batch_id = insert_batch(conn, INGEST, part_date, region, run_id, lease_seconds)
        stmt = claim_statement(engine.dialect.name, batch_id, part_date, region, size, attempts)
        claimed = conn.execute(stmt).all()
        if not claimed:
            tx.rollback()
            return None
        conn.execute(sa.update(batches).where(batches.c.batch_id == batch_id).values(keys=len(claimed)))
    return claimed_batch(batch_id, run_id, part_date, region, claimed)


def renew_lease(engine: sa.Engine, batch_id: str, lease_seconds: int) -> bool:
    """Push the lease forward; False if the batch is no longer ours to write."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(batches)
            .where(batches.c.batch_id == batch_id, batches.c.status == WRITING)
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        )
    return result.rowcount == 1


def record_intent(engine: sa.Engine, batch_id: str, target_dirs: Iterable[str]) -> None:
    """Record where the batch is about to write, so an abort can find every file it may leave."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(batches)
            .where(batches.c.batch_id == batch_id, batches.c.status == WRITING)
            .values(target_dirs=json.dumps(sorted(set(target_dirs))))
        )
    if result.rowcount != 1:
        raise StaleBatchError(f"batch {batch_id} is no longer WRITING; not writing its files")


# ---------------------------------------------------------------------------------------------
# Commit


@dataclass(frozen=True)
class KeyOutcome:
    key_id: int
    status: str  # SUCCESS or QUARANTINED
    rows: int = 0
    quarantined_lines: int = 0
    duplicate_rows: int = 0
    error: str | None = None


# Keys per outcome statement: six parameters a key stay under MSSQL's 2,100 a statement.
OUTCOME_CHUNK = 300


def commit_statement() -> sa.Update:
    """The batch -> COMMITTED, guarded by WRITING."""
    return (
        sa.update(batches)
        .where(batches.c.batch_id == sa.bindparam("b_batch_id"), batches.c.status == WRITING)
        .values(
            status=COMMITTED,
            files=sa.bindparam("b_files"),
            rows=sa.bindparam("b_rows"),
            quarantined_lines=sa.bindparam("b_quarantined"),
            committed_at=sa.bindparam("b_now"),
        )
    )


def outcomes_statement(batch_id: str, outcomes: list[KeyOutcome], now: datetime) -> sa.Update:
    """Keys -> their final status, guarded by the batch id: one statement joined to a VALUES list
    of the outcomes, not one statement a key (each of which also fires the count triggers)."""
    given = sa.values(
        sa.column("key_id", sa.BigInteger),
        sa.column("status", sa.String),
        sa.column("rows", sa.BigInteger),
        sa.column("quarantined", sa.BigInteger),
        sa.column("duplicates", sa.BigInteger),
        sa.column("error", sa.String),
        name="outcomes",
    ).data([(o.key_id, o.status, o.rows, o.quarantined_lines, o.duplicate_rows, o.error) for o in outcomes])
    given = given.cte("outcomes")  # SQLite names a VALUES list's columns only in a CTE
    return (
        sa.update(keys)
        .where(keys.c.key_id == given.c.key_id, keys.c.batch_id == batch_id, keys.c.status == CLAIMED)
        .values(**bulk.outcome_values(given.c, now))
    )


def commit_batch(
    engine: sa.Engine,
    batch_id: str,
    outcomes: list[KeyOutcome],
    files: list[LakeFile],
    rows: int,
    quarantined_lines: int,
) -> None:
    """In one transaction: keys to their final status, the batch COMMITTED, its files LIVE in the
    manifest and the files it replaces (marked with `retire_by` when it was claimed) RETIRED."""
    now = utcnow()
    with engine.begin() as conn:
        result = conn.execute(
            commit_statement(),
            {
                "b_batch_id": batch_id,
                "b_files": json.dumps([f.path for f in files]),
                "b_rows": rows,
                "b_quarantined": quarantined_lines,
                "b_now": now,
            },
        )
        if result.rowcount != 1:
            raise StaleBatchError(f"batch {batch_id} is no longer WRITING; its lease was taken over")
        if conn.dialect.name == "postgresql":  # the whole batch in one statement
            conn.execute(bulk.outcomes_statement(), bulk.outcomes_page(batch_id, outcomes, now))
        elif conn.dialect.name == "sqlite" and outcomes:  # one statement the driver runs for each key
            conn.execute(bulk.outcome_statement(), bulk.outcome_rows(batch_id, outcomes, now))
        else:
            for chunk in chunks(outcomes, OUTCOME_CHUNK):
                conn.execute(outcomes_statement(batch_id, chunk, now))
        part_date, region = conn.execute(
            sa.select(batches.c.part_date, batches.c.dstrct_code).where(batches.c.batch_id == batch_id)
        ).one()
        if files:
            conn.execute(
                sa.insert(lake_files),
                [
                    {
                        "path": f.path,
                        "batch_id": batch_id,
                        "dataset": f.dataset,
                        "hiveperiod": f.hiveperiod,
                        "dstrct_code": region,
                        "part_date": part_date,
                        "rows": f.rows,
                        "bytes": f.bytes,
                        "state": LIVE,
                        "committed_at": now,
                    }
                    for f in files
                ],
            )
        conn.execute(
            sa.update(lake_files)
            .where(lake_files.c.retire_by == batch_id, lake_files.c.state == LIVE)
            .values(state=RETIRED, retired_at=now)
        )


def delete_retired(engine: sa.Engine, lake: _Listable, batch_id: str | None = None) -> int:
    """Delete the files of RETIRED manifest rows (those one batch retired, or all) and then the
    rows; a crash in between leaves rows whose deletion is simply repeated. Returns the count."""
    stmt = sa.select(lake_files.c.path).where(lake_files.c.state == RETIRED)
    if batch_id is not None:
        stmt = stmt.where(lake_files.c.retire_by == batch_id)
    with engine.connect() as conn:
        paths = list(conn.execute(stmt).scalars())
    for chunk in chunks(paths):
        lake.delete(chunk)
        with engine.begin() as conn:
            conn.execute(sa.delete(lake_files).where(lake_files.c.path.in_(chunk), lake_files.c.state == RETIRED))
    return len(paths)


# ---------------------------------------------------------------------------------------------
# Abort and recovery


def batch_file_prefixes(batch_id: str, target_dirs: Iterable[str]) -> list[str]:
    return [f"{d.rstrip('/')}/part-{batch_id}-" for d in target_dirs]


def release_statement(max_attempts: int, error: str) -> sa.Update:
    """Keys of an aborted batch: back to PENDING with attempts + 1, FAILED once attempts run out.
    Keys a rebuild held that were already ingested get their status and batch back unchanged."""
    ingested = keys.c.prior_status.in_((SUCCESS, QUARANTINED))
    return (
        sa.update(keys)
        .where(keys.c.batch_id == sa.bindparam("b_batch_id"), keys.c.status == CLAIMED)
        .values(
            status=sa.case(
                (ingested, keys.c.prior_status), (keys.c.attempts + 1 >= max_attempts, FAILED), else_=PENDING
            ),
            attempts=sa.case((ingested, keys.c.attempts), else_=keys.c.attempts + 1),
            error=sa.case((ingested, keys.c.error), else_=error),
            batch_id=sa.case((ingested, keys.c.prior_batch_id), else_=keys.c.batch_id),
            prior_status=None,
            prior_batch_id=None,
        )
    )


def abort_batch(
    engine: sa.Engine,
    lake: _Listable,
    batch_id: str,
    error: str,
    max_attempts: int,
    expired_before: datetime | None = None,
) -> bool:
    """Fence the batch, delete every file it may have written, then hand its keys back.

    With `expired_before`, only a WRITING batch whose lease ended before then is taken over (the
    recovery of crashed writers); without it the caller owns the batch (its own failed write).
    A batch found ABORTING (an abort that was itself interrupted) is finished. A batch found
    ABORTED only has its files deleted again: a stale writer may have gone on writing after its
    batch was taken over (the recoverer found no files yet), and files of an aborted batch are never
    part of the dataset. Returns True if this call aborted the batch.
    """
    with engine.begin() as conn:
        fence = sa.update(batches).where(batches.c.batch_id == batch_id, batches.c.status == WRITING)
        if expired_before is not None:
            fence = fence.where(batches.c.lease_until < expired_before)
        conn.execute(fence.values(status=ABORTING, error=error[:4000]))
        row = conn.execute(
            sa.select(batches.c.status, batches.c.target_dirs).where(batches.c.batch_id == batch_id)
        ).one_or_none()
    if row is None or row.status not in (ABORTING, ABORTED):
        return False
    for prefix in batch_file_prefixes(batch_id, json.loads(row.target_dirs or "[]")):
        lake.delete([obj.key for obj in lake.list(prefix)])
    if row.status == ABORTED:
        return False
    with engine.begin() as conn:
        conn.execute(release_statement(max_attempts, error[:4000]), {"b_batch_id": batch_id})
        conn.execute(
            sa.update(lake_files)
            .where(lake_files.c.retire_by == batch_id, lake_files.c.state == LIVE)
            .values(retire_by=None)
        )
        conn.execute(
            sa.update(batches)
            .where(batches.c.batch_id == batch_id, batches.c.status == ABORTING)
            .values(status=ABORTED)
        )
    return True


def runs_of_batches(engine: sa.Engine, batch_ids: list[str]) -> set[str]:
    """The run ids that claimed these batches."""
    if not batch_ids:
        return set()
    with engine.connect() as conn:
        found = conn.execute(sa.select(batches.c.run_id).where(batches.c.batch_id.in_(batch_ids))).scalars()
        return {run_id for run_id in found if run_id}


def writing_batches_of_run(engine: sa.Engine, run_id: str) -> list[str]:
    """Batches the run claimed that are still WRITING (the run stopped before commit or abort)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(batches.c.batch_id)
                .where(batches.c.run_id == run_id, batches.c.status == WRITING)
                .order_by(batches.c.created_at, batches.c.batch_id)
            ).scalars()
        )


def recover_expired(engine: sa.Engine, lake: _Listable, max_attempts: int) -> list[str]:
    """Abort batches whose writer stopped renewing its lease (a crashed process), finish aborts
    that were interrupted, and delete retired files a committer stopped before deleting. Returns
    the batch ids recovered."""
    now = utcnow()
    with engine.connect() as conn:
        stale = (
            conn.execute(
                sa.select(batches.c.batch_id).where(
                    sa.or_(
                        sa.and_(batches.c.status == WRITING, batches.c.lease_until < now),
                        batches.c.status == ABORTING,
                    )
                )
            )
            .scalars()
            .all()
        )
    recovered = [
        batch_id
        for batch_id in stale
        if abort_batch(engine, lake, batch_id, "lease expired: writer stopped", max_attempts, now)
    ]
    delete_retired(engine, lake)
    return recovered
