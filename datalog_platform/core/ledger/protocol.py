"""The claim protocol: register -> claim -> (write) -> commit | abort -> recover.

Each step is one short transaction. The batch row is the write intent: while it is WRITING, its
files may exist in the lake; COMMITTED makes them part of the dataset (LIVE in the `lake_files`
manifest); ABORTING fences a stale writer out (its commit fails) while the files are deleted;
ABORTED hands the keys back. Rebuilds and compactions (see `swap`) commit through the same steps.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from datalog_platform.core.ledger import versions
from datalog_platform.core.ledger.batch_size import most_failed, retry_limit, within_budget
from datalog_platform.core.ledger.claims import Batch, claim_statement, claimed_batch
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.engine import chunks
from datalog_platform.core.ledger.holds import PartitionBusyError, hold_partition
from datalog_platform.core.ledger.outcomes import KeyOutcome, record_outcomes, reread_duplicates
from datalog_platform.core.ledger.schema import (
    ABORTED,
    ABORTING,
    CLAIMED,
    COMMITTED,
    FAILED,
    INGEST,
    LIVE,
    PENDING,
    RETIRED,
    WRITING,
    LakeFile,
    batches,
    keys,
    lake_files,
)


class StaleBatchError(RuntimeError):
    """The batch is no longer WRITING: its lease was taken over, so this writer must not commit."""


class _Listable(Protocol):
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[Any]: ...

    def delete(self, keys: Iterable[str]) -> int: ...


# ---------------------------------------------------------------------------------------------
# Claim


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


# A claim that must hold its partition's files waits this long for another holder to finish.
HOLD_WAIT_SECONDS = 30.0


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
    stops before its raw objects exceed that many bytes (`within_budget`). A batch with a key
    whose rows the lake holds (a new version) holds the partition's files in the same
    transaction; while another writer holds them it waits up to HOLD_WAIT_SECONDS, then raises
    PartitionBusyError.
    """
    waited = 0.0
    while True:
        try:
            return _claim(engine, part_date, region, limit, run_id, lease_seconds, max_attempts, max_bytes)
        except PartitionBusyError:
            if waited >= HOLD_WAIT_SECONDS:
                raise
            time.sleep(1.0)
            waited += 1.0


def _claim(
    engine: sa.Engine,
    part_date: str,
    region: str,
    limit: int,
    run_id: str | None,
    lease_seconds: int,
    max_attempts: int,
    max_bytes: int | None,
) -> Batch | None:
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
        holds = any(row.lake_version is not None for row in claimed)
        if holds:
            hold_partition(conn, batch_id, part_date, region)
        conn.execute(sa.update(batches).where(batches.c.batch_id == batch_id).values(keys=len(claimed)))
    return claimed_batch(batch_id, run_id, part_date, region, claimed, holds=holds)


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


def commit_batch(
    engine: sa.Engine,
    batch_id: str,
    outcomes: list[KeyOutcome],
    files: list[LakeFile],
    rows: int,
    quarantined_lines: int,
    retired: list[str] | None = None,
    policy: str = versions.REINGEST,
    reread_days: list[str] | None = None,
) -> None:
    """In one transaction: keys to their outcome, the batch COMMITTED, its files LIVE in the
    manifest and the files it replaces RETIRED: those of `retired`, or, when it is None, every
    file it holds (marked with `retire_by` when it was claimed); the rest it holds are released.

    A key written in the version it was claimed in (SUCCESS, QUARANTINED) is settled by one
    statement for the batch; a key whose object a discovery saw in a newer version meanwhile, and
    every other outcome, one by one (`_settle`): a newer version waits for its own batch under
    the rewrite `policy`. Keys that dropped duplicates of records on `reread_days`, which the
    batch's new versions no longer hold, go back to PENDING (`outcomes.reread_duplicates`)."""
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
        record_outcomes(conn, batch_id, outcomes, policy, now)
        part_date, region = conn.execute(
            sa.select(batches.c.part_date, batches.c.dstrct_code).where(batches.c.batch_id == batch_id)
        ).one()
        reread_duplicates(conn, batch_id, region, reread_days or [])
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
        held = (lake_files.c.retire_by == batch_id, lake_files.c.state == LIVE)
        if retired is not None:
            for chunk in chunks(retired):
                conn.execute(
                    sa.update(lake_files)
                    .where(*held, lake_files.c.path.in_(chunk))
                    .values(state=RETIRED, retired_at=now)
                )
            conn.execute(sa.update(lake_files).where(*held).values(retire_by=None))
        else:
            conn.execute(sa.update(lake_files).where(*held).values(state=RETIRED, retired_at=now))


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


def _delete_files(lake: _Listable, batch_id: str, target_dirs: str | None) -> None:
    for prefix in batch_file_prefixes(batch_id, json.loads(target_dirs or "[]")):
        lake.delete([obj.key for obj in lake.list(prefix)])


def delete_batch_files(engine: sa.Engine, lake: _Listable, batch_id: str) -> None:
    """Delete every file the batch may have written so far (its write intent's directories), as
    its writer does before it writes them again."""
    with engine.connect() as conn:
        target_dirs = conn.execute(sa.select(batches.c.target_dirs).where(batches.c.batch_id == batch_id)).scalar()
    _delete_files(lake, batch_id, target_dirs)


def release_statement(max_attempts: int, error: str, charge_attempt: bool = True) -> sa.Update:
    """Keys of an aborted batch: back to PENDING with attempts + 1, FAILED once attempts run out;
    without `charge_attempt` (a transient failure: a lost connection, a full disk, throttling)
    back to PENDING as they were. Keys a rebuild held that were not waiting to be ingested
    (SUCCESS, QUARANTINED, MISSING, HELD) get their status and batch back unchanged."""
    restored = keys.c.prior_status.notin_((PENDING, FAILED))
    charged = keys.c.attempts + 1 if charge_attempt else keys.c.attempts
    return (
        sa.update(keys)
        .where(keys.c.batch_id == sa.bindparam("b_batch_id"), keys.c.status == CLAIMED)
        .values(
            status=sa.case((restored, keys.c.prior_status), (charged >= max_attempts, FAILED), else_=PENDING),
            attempts=sa.case((restored, keys.c.attempts), else_=charged),
            error=sa.case((restored, keys.c.error), else_=error),
            batch_id=sa.case((restored, keys.c.prior_batch_id), else_=keys.c.batch_id),
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
    charge_attempt: bool = True,
) -> bool:
    """Fence the batch, delete every file it may have written, then hand its keys back (see
    `release_statement`; `charge_attempt` False for a transient failure).

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
    _delete_files(lake, batch_id, row.target_dirs)
    if row.status == ABORTED:
        return False
    with engine.begin() as conn:
        conn.execute(release_statement(max_attempts, error[:4000], charge_attempt), {"b_batch_id": batch_id})
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
