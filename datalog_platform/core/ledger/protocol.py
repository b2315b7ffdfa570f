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
    UNROUTED,
    WRITING,
    LakeFile,
    batches,
    devices,
    keys,
    lake_files,
)

_RAW_KEY = re.compile(r"(?P<device>[^/]+)/(?P<hour>\d{10})/[^/]+\.json(\.gz)?")
_CHUNK = 500
_REGISTER_ATTEMPTS = 3


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
    """`{device_id}/{YYYYMMDDHH}/{name}.json[.gz]` -> device and UTC hour; anything else -> None."""
    match = _RAW_KEY.fullmatch(key)
    if not match:
        return None
    try:
        hour = datetime.strptime(match["hour"], "%Y%m%d%H")
    except ValueError:
        return None
    return RawKey(device_id=match["device"], hour=hour)


def local_date(hour: datetime, tz_offset_hours: int) -> str:
    return (hour + timedelta(hours=tz_offset_hours)).strftime("%Y-%m-%d")


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------
# Registry and discovery


def upsert_devices(engine: sa.Engine, rows: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Insert new devices and update changed regions; returns (inserted, updated)."""
    wanted = dict(rows)
    inserted = updated = 0
    now = utcnow()
    with engine.begin() as conn:
        for chunk in _chunks(sorted(wanted)):
            existing = dict(
                conn.execute(
                    sa.select(devices.c.device_id, devices.c.dstrct_code).where(devices.c.device_id.in_(chunk))
                ).all()
            )
            new = [{"device_id": d, "dstrct_code": wanted[d], "updated_at": now} for d in chunk if d not in existing]
            if new:
                conn.execute(sa.insert(devices), new)
                inserted += len(new)
            changed = [
                {"b_device_id": d, "b_dstrct_code": wanted[d], "b_now": now}
                for d in chunk
                if d in existing and existing[d] != wanted[d]
            ]
            if changed:
                conn.execute(
                    sa.update(devices)
                    .where(devices.c.device_id == sa.bindparam("b_device_id"))
                    .values(dstrct_code=sa.bindparam("b_dstrct_code"), updated_at=sa.bindparam("b_now")),
                    changed,
                )
                updated += len(changed)
    return inserted, updated


@dataclass(frozen=True)
class RegisterResult:
    seen: int
    registered: int
    unrouted: int
    ignored: int
    bytes: int


def register_keys(engine: sa.Engine, objects: Iterable[Any], tz_offset_hours: int) -> RegisterResult:
    """Record new raw objects in the ledger (idempotent): PENDING if the device is known, else UNROUTED.

    `objects` are ObjectInfo-like (key, size, etag); keys that are not raw log keys are ignored.
    """
    seen = registered = unrouted = ignored = total_bytes = 0
    with engine.connect() as conn:
        regions = dict(conn.execute(sa.select(devices.c.device_id, devices.c.dstrct_code)).all())
    batch: list[tuple[Any, RawKey]] = []

    def insert_new(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
        names = [obj.key for obj, _ in batch]
        known = set(conn.execute(sa.select(keys.c.key).where(keys.c.key.in_(names))).scalars())
        new_rows = []
        for obj, raw in batch:
            if obj.key in known:
                continue
            known.add(obj.key)
            region = regions.get(raw.device_id)
            new_rows.append(
                {
                    "key": obj.key,
                    "etag": obj.etag,
                    "size": obj.size,
                    "device_id": raw.device_id,
                    "key_hour": raw.hour,
                    "dstrct_code": region,
                    "part_date": local_date(raw.hour, tz_offset_hours),
                    "status": PENDING if region else UNROUTED,
                    "attempts": 0,
                    "discovered_at": now,
                }
            )
        if new_rows:
            conn.execute(sa.insert(keys), new_rows)
        return new_rows

    def flush() -> None:
        nonlocal registered, unrouted, total_bytes
        if not batch:
            return
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                with engine.begin() as conn:
                    new_rows = insert_new(conn, utcnow())
                break
            except sa.exc.IntegrityError:
                # another registrar inserted some of these keys first: look again
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        registered += len(new_rows)
        unrouted += sum(1 for row in new_rows if row["status"] == UNROUTED)
        total_bytes += sum(row["size"] for row in new_rows)
        batch.clear()

    for obj in objects:
        seen += 1
        raw = parse_raw_key(obj.key)
        if raw is None:
            ignored += 1
            continue
        batch.append((obj, raw))
        if len(batch) >= _CHUNK:
            flush()
    flush()
    return RegisterResult(seen, registered, unrouted, ignored, total_bytes)


def route_unrouted(engine: sa.Engine) -> int:
    """Give UNROUTED keys whose device is now in the registry its region, and make them PENDING."""
    region = sa.select(devices.c.dstrct_code).where(devices.c.device_id == keys.c.device_id).scalar_subquery()
    known = sa.exists().where(devices.c.device_id == keys.c.device_id)
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(keys).where(keys.c.status == UNROUTED, known).values(dstrct_code=region, status=PENDING)
        )
    return result.rowcount


@dataclass(frozen=True)
class PartitionBacklog:
    part_date: str
    dstrct_code: str
    keys: int
    # Identifies the pending work (see `backlog_fingerprint`); equal work, equal fingerprint.
    fingerprint: str = ""


def backlog_fingerprint(pending: int, max_key_id: int, attempts: int) -> str:
    """The same PENDING keys give the same text; a new key raises the count and the highest key id,
    and keys handed back by an aborted batch raise the sum of attempts."""
    return f"n{pending}-k{max_key_id}-a{attempts}"


def pending_partitions(engine: sa.Engine) -> list[PartitionBacklog]:
    """Every (part_date, region) with PENDING keys: how many, and the fingerprint of that backlog."""
    stmt = (
        sa.select(
            keys.c.part_date,
            keys.c.dstrct_code,
            sa.func.count(),
            sa.func.max(keys.c.key_id),
            sa.func.coalesce(sa.func.sum(keys.c.attempts), 0),
        )
        .where(keys.c.status == PENDING)
        .group_by(keys.c.part_date, keys.c.dstrct_code)
        .order_by(keys.c.part_date, keys.c.dstrct_code)
    )
    with engine.connect() as conn:
        return [
            PartitionBacklog(d, r, int(n), backlog_fingerprint(int(n), int(top), int(attempts)))
            for d, r, n, top, attempts in conn.execute(stmt).all()
        ]


def partition_fingerprints(engine: sa.Engine) -> dict[tuple[str, str], str]:
    """(part_date, region) -> fingerprint of its PENDING keys, for sensor run keys."""
    return {(p.part_date, p.dstrct_code): p.fingerprint for p in pending_partitions(engine)}


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


MSSQL_CLAIM_SQL = (
    "UPDATE TOP (:limit) keys WITH (ROWLOCK, UPDLOCK, READPAST) "
    "SET status = :claimed, batch_id = :batch_id "
    "OUTPUT inserted.key_id, inserted.[key], inserted.size "
    "WHERE status = :pending AND dstrct_code = :dstrct_code AND part_date = :part_date"
)


def claim_statement(dialect_name: str, batch_id: str, part_date: str, region: str, limit: int) -> Any:
    """The one statement that leases up to `limit` PENDING keys of a partition to `batch_id`.

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
        )
    candidates = (
        sa.select(keys.c.key_id)
        .where(keys.c.status == PENDING, keys.c.dstrct_code == region, keys.c.part_date == part_date)
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
) -> Batch | None:
    """Lease up to `limit` PENDING keys of (part_date, region) to a new WRITING batch, or None."""
    with engine.connect() as conn, conn.begin() as tx:
        batch_id = insert_batch(conn, INGEST, part_date, region, run_id, lease_seconds)
        stmt = claim_statement(engine.dialect.name, batch_id, part_date, region, limit)
        claimed = sorted(conn.execute(stmt).all())
        if not claimed:
            tx.rollback()
            return None
        conn.execute(sa.update(batches).where(batches.c.batch_id == batch_id).values(keys=len(claimed)))
    return Batch(
        batch_id=batch_id,
        run_id=run_id,
        part_date=part_date,
        dstrct_code=region,
        keys=tuple(ClaimedKey(int(i), k, int(s)) for i, k, s in claimed),
    )


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


def commit_statements() -> tuple[sa.Update, sa.Update]:
    """(batch -> COMMITTED guarded by WRITING, key -> final status guarded by batch id)."""
    batch_stmt = (
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
    key_stmt = (
        sa.update(keys)
        .where(
            keys.c.key_id == sa.bindparam("b_key_id"),
            keys.c.batch_id == sa.bindparam("b_batch_id"),
            keys.c.status == CLAIMED,
        )
        .values(
            status=sa.bindparam("b_status"),
            rows=sa.bindparam("b_rows"),
            quarantined_lines=sa.bindparam("b_quarantined"),
            duplicate_rows=sa.bindparam("b_duplicates"),
            error=sa.bindparam("b_error"),
            done_at=sa.bindparam("b_now"),
            prior_status=None,
            prior_batch_id=None,
        )
    )
    return batch_stmt, key_stmt


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
    batch_stmt, key_stmt = commit_statements()
    with engine.begin() as conn:
        result = conn.execute(
            batch_stmt,
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
        if outcomes:
            conn.execute(
                key_stmt,
                [
                    {
                        "b_key_id": o.key_id,
                        "b_batch_id": batch_id,
                        "b_status": o.status,
                        "b_rows": o.rows,
                        "b_quarantined": o.quarantined_lines,
                        "b_duplicates": o.duplicate_rows,
                        "b_error": o.error,
                        "b_now": now,
                    }
                    for o in outcomes
                ],
            )
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
    for chunk in _chunks(paths):
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


# ---------------------------------------------------------------------------------------------
# Reporting


def status_counts(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        by_status = dict(conn.execute(sa.select(keys.c.status, sa.func.count()).group_by(keys.c.status)).all())
        by_region: dict[str, dict[str, int]] = {}
        for region, status, count in conn.execute(
            sa.select(keys.c.dstrct_code, keys.c.status, sa.func.count()).group_by(keys.c.dstrct_code, keys.c.status)
        ).all():
            by_region.setdefault(region or "(unrouted)", {})[status] = count
        rows = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(keys.c.rows), 0))).scalar()
    return {"by_status": by_status, "by_region": by_region, "rows": int(rows or 0)}


def known_regions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(devices.c.dstrct_code).distinct()).scalars())


# ---------------------------------------------------------------------------------------------
# Operator actions

REQUEUEABLE = (FAILED, QUARANTINED)


def requeue(engine: sa.Engine, status: str, region: str | None = None, since: str | None = None) -> int:
    """Put keys of `status` (FAILED or QUARANTINED; optionally one region, part_date >= since) back
    to PENDING with attempts reset and the error cleared. Returns how many keys were requeued.

    SUCCESS is refused: its rows are in the lake, so ingesting the key again would duplicate them
    (rebuilding a partition is a backfill's job). UNROUTED is refused: routing decides those.
    """
    if status == SUCCESS:
        raise ValueError(
            "SUCCESS keys cannot be requeued: their rows are already in the lake and ingesting them "
            "again would duplicate those rows; rebuild the partition with a backfill instead"
        )
    if status not in REQUEUEABLE:
        raise ValueError(f"only {' or '.join(REQUEUEABLE)} keys can be requeued, not {status!r}")
    stmt = (
        sa.update(keys)
        .where(keys.c.status == status)
        .values(
            status=PENDING,
            attempts=0,
            error=None,
            batch_id=None,
            rows=None,
            quarantined_lines=None,
            done_at=None,
        )
    )
    if region is not None:
        stmt = stmt.where(keys.c.dstrct_code == region)
    if since is not None:
        stmt = stmt.where(keys.c.part_date >= since)
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount
