"""Keys in the ledger outside any batch: devices and routing, registration of raw objects, the
backlog of pending keys, reporting, and the operator's requeue. Each step a short transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from datalog_platform.core.ledger import bulk, versions
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.engine import CHUNK, chunks
from datalog_platform.core.ledger.raw_keys import RawKey, local_date, parse_raw_key
from datalog_platform.core.ledger.schema import (
    FAILED,
    HELD,
    MISSING,
    PENDING,
    QUARANTINED,
    SUCCESS,
    UNROUTED,
    counts_maintained,
    devices,
    key_counts,
    keys,
)
from datalog_platform.core.store import ObjectInfo

# A registration that lost a race to a concurrent registrar looks again this often.
_REGISTER_ATTEMPTS = 3


# ---------------------------------------------------------------------------------------------
# Registry and discovery


def upsert_devices(engine: sa.Engine, rows: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Insert new devices and update changed regions; returns (inserted, updated)."""
    wanted = dict(rows)
    inserted = updated = 0
    now = utcnow()
    with engine.begin() as conn:
        for chunk in chunks(sorted(wanted)):
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
    ignored: int  # objects that are not raw log keys
    bytes: int
    new_versions: int = 0  # known keys seen in a new version (`versions`)
    rewritten: int = 0  # of those, keys whose rows the lake holds: handled by the rewrite policy
    reappeared: int = 0  # MISSING keys seen again


# Keys per registration transaction. PostgreSQL inserts a page as one statement reading a JSON
# document (`bulk`), SQLite as multi-row INSERTs (SQLAlchemy's insertmanyvalues), both with ON
# CONFLICT DO NOTHING; MSSQL's statements stay under its 2,100-parameter limit.
_UPSERT_BATCH = 10 * CHUNK
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert_new_keys(
    conn: sa.Connection, rows: list[dict[str, Any]], seen: dict[str, ObjectInfo], policy: str, now: datetime
) -> tuple[list[dict[str, Any]], versions.Sightings]:
    """Insert the rows of `keys` whose key is not in the ledger yet, and record what `seen` (the
    objects by key) says of the keys it knows (`versions.record_sightings`); returns the rows
    inserted and those sightings.

    The keys already known are looked up first (a discovery tick re-lists mostly known keys, and a
    look-up is cheaper than an INSERT that conflicts, which also spends a key id); where the
    dialect has ON CONFLICT, a key a concurrent registrar inserts in between is skipped instead of
    failing the transaction. PostgreSQL sends the page as one JSON document (`bulk`)."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        known_rows = conn.execute(bulk.known_keys_statement(), {"b_keys": bulk.page(row["key"] for row in rows)})
    else:
        known_rows = conn.execute(sa.select(*versions.KNOWN_COLUMNS).where(keys.c.key.in_([r["key"] for r in rows])))
    known = known_rows.all()
    sightings = versions.record_sightings(conn, known, seen, policy, now) if known else versions.Sightings()
    known_keys = {row.key for row in known}
    new_rows = [row for row in rows if row["key"] not in known_keys]
    insert = _UPSERTS.get(conn.dialect.name)
    if not new_rows or insert is None:
        if new_rows:
            conn.execute(sa.insert(keys), new_rows)
        return new_rows, sightings
    if postgres:
        inserted_rows = conn.execute(bulk.insert_keys_statement(), {"b_page": bulk.page(new_rows)})
    else:
        stmt = insert(keys).on_conflict_do_nothing(index_elements=[keys.c.key]).returning(keys.c.key)
        inserted_rows = conn.execute(stmt, new_rows)
    inserted = set(inserted_rows.scalars())
    return [row for row in new_rows if row["key"] in inserted], sightings


def register_keys(
    engine: sa.Engine, objects: Iterable[ObjectInfo], tz_offset_hours: int, policy: str
) -> RegisterResult:
    """Record raw objects in the ledger (idempotent): a new key is PENDING if its device is known,
    else UNROUTED; a known key seen in a new version, or back after it went MISSING, is handled by
    `versions` under the rewrite `policy`. Keys that are not raw log keys are ignored.
    """
    seen = registered = unrouted = ignored = total_bytes = 0
    sightings: list[versions.Sightings] = []
    batch_size = _UPSERT_BATCH if engine.dialect.name in _UPSERTS else CHUNK
    batch: dict[str, tuple[ObjectInfo, RawKey]] = {}

    def rows_of_batch(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
        regions: dict[str, str] = {}
        for chunk in chunks(sorted({raw.device_id for _, raw in batch.values()})):
            stmt = sa.select(devices.c.device_id, devices.c.dstrct_code).where(devices.c.device_id.in_(chunk))
            regions.update(conn.execute(stmt).tuples().all())
        return [
            {
                "key": obj.key,
                "etag": obj.etag,
                "size": obj.size,
                "mtime_ns": obj.mtime_ns,
                "last_modified": obj.last_modified,
                "sequencer": obj.sequencer,
                "device_id": raw.device_id,
                "key_hour": raw.hour,
                "dstrct_code": regions.get(raw.device_id),
                "part_date": local_date(raw.hour, tz_offset_hours),
                "status": PENDING if regions.get(raw.device_id) else UNROUTED,
                "attempts": 0,
                "discovered_at": now,
            }
            for obj, raw in batch.values()
        ]

    def flush() -> None:
        nonlocal registered, unrouted, total_bytes
        if not batch:
            return
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                with engine.begin() as conn:
                    now = utcnow()
                    seen_objects = {obj.key: obj for obj, _ in batch.values()}
                    new_rows, found = insert_new_keys(conn, rows_of_batch(conn, now), seen_objects, policy, now)
                break
            except sa.exc.IntegrityError:
                # another registrar inserted some of these keys first: look again
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        sightings.append(found)
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
        batch[obj.key] = (obj, raw)
        if len(batch) >= batch_size:
            flush()
    flush()
    return RegisterResult(
        seen,
        registered,
        unrouted,
        ignored,
        total_bytes,
        new_versions=sum(s.new_versions for s in sightings),
        rewritten=sum(s.rewritten for s in sightings),
        reappeared=sum(s.reappeared for s in sightings),
    )


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


def backlog_fingerprint(pending: int, key_ids: int, attempts: int, versions: int) -> str:
    """The same PENDING keys give the same text; a new key raises the count and the sum of key ids
    (a key registered later has a higher id than those before it, so keys claimed and as many
    registered meanwhile raise the sum too), keys handed back by an aborted batch raise the sum
    of attempts, and a key seen in a new version raises the sum of versions (the same key
    rewritten again after its last ingest gives a fingerprint it never had)."""
    return f"n{pending}-s{key_ids}-a{attempts}-v{versions}"


def pending_partitions(engine: sa.Engine) -> list[PartitionBacklog]:
    """Every (part_date, region) with PENDING keys: how many, and the fingerprint of that backlog.

    Where the ledger keeps `key_counts`, all of it comes from there (one row a partition);
    elsewhere all PENDING keys are aggregated."""
    if counts_maintained(engine.dialect.name):
        c = key_counts.c
        stmt = (
            sa.select(c.part_date, c.dstrct_code, c["keys"], c.key_ids, c.attempts, c.versions)
            .where(c.status == PENDING, c["keys"] > 0)
            .order_by(c.part_date, c.dstrct_code)
        )
    else:
        stmt = (
            sa.select(
                keys.c.part_date,
                keys.c.dstrct_code,
                sa.func.count(),
                sa.func.sum(keys.c.key_id),
                sa.func.coalesce(sa.func.sum(keys.c.attempts), 0),
                sa.func.sum(keys.c.version),
            )
            .where(keys.c.status == PENDING)
            .group_by(keys.c.part_date, keys.c.dstrct_code)
            .order_by(keys.c.part_date, keys.c.dstrct_code)
        )
    with engine.connect() as conn:
        return [
            PartitionBacklog(d, r, int(n), backlog_fingerprint(int(n), int(key_ids), int(attempts), int(v)))
            for d, r, n, key_ids, attempts, v in conn.execute(stmt).all()
        ]


def partition_fingerprints(engine: sa.Engine) -> dict[tuple[str, str], str]:
    """(part_date, region) -> fingerprint of its PENDING keys, for sensor run keys."""
    return {(p.part_date, p.dstrct_code): p.fingerprint for p in pending_partitions(engine)}


# ---------------------------------------------------------------------------------------------
# Reporting


def status_counts(engine: sa.Engine) -> dict[str, Any]:
    """Keys by status, by region and status, and the rows ingested in all."""
    if counts_maintained(engine.dialect.name):
        c = key_counts.c
        stmt = sa.select(c.dstrct_code, c.status, c["keys"], c.rows).where(c["keys"] > 0)
        with engine.connect() as conn:
            counted = conn.execute(stmt).all()
        by_status: dict[str, int] = {}
        by_region: dict[str, dict[str, int]] = {}
        for region, status, count, _ in counted:
            by_status[status] = by_status.get(status, 0) + int(count)
            of_region = by_region.setdefault(region or "(unrouted)", {})
            of_region[status] = of_region.get(status, 0) + int(count)
        return {"by_status": by_status, "by_region": by_region, "rows": sum(int(r) for *_, r in counted)}
    with engine.connect() as conn:
        by_status = dict(conn.execute(sa.select(keys.c.status, sa.func.count()).group_by(keys.c.status)).all())
        by_region = {}
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

REQUEUEABLE = (FAILED, QUARANTINED, MISSING)


def requeue(engine: sa.Engine, status: str, region: str | None = None, since: str | None = None) -> int:
    """Put keys of `status` (FAILED, QUARANTINED or MISSING; optionally one region, part_date >=
    since) back to PENDING with attempts reset and the error cleared. Returns how many keys were
    requeued. A key whose rows the lake holds (of a version read before) keeps them, and their
    counts, until its next batch replaces them.

    SUCCESS is refused: its rows are in the lake and its object has not changed (rebuilding a
    partition is a backfill's job). UNROUTED is refused: routing decides those.
    """
    if status == SUCCESS:
        raise ValueError(
            "SUCCESS keys cannot be requeued: their rows are in the lake and their objects have not changed "
            "(a new version is found by discovery and ingested by itself); rebuild the partition with a "
            "backfill instead"
        )
    if status not in REQUEUEABLE:
        raise ValueError(f"only {', '.join(REQUEUEABLE)} keys can be requeued, not {status!r}")
    written = keys.c.lake_version.isnot(None)
    stmt = (
        sa.update(keys)
        .where(keys.c.status == status)
        .values(
            status=PENDING,
            attempts=0,
            error=None,
            batch_id=None,
            rows=sa.case((written, keys.c.rows)),
            quarantined_lines=sa.case((written, keys.c.quarantined_lines)),
            done_at=sa.case((written, keys.c.done_at)),
        )
    )
    with engine.begin() as conn:
        return conn.execute(_in_scope(stmt, region, since)).rowcount


def release_held(engine: sa.Engine, region: str | None = None, since: str | None = None) -> int:
    """HELD keys (new versions the `quarantine` rewrite policy held) -> PENDING: their next batch
    replaces the rows of the version read before. Optionally one region, part_date >= since."""
    stmt = sa.update(keys).where(keys.c.status == HELD).values(status=PENDING, attempts=0, error=None)
    with engine.begin() as conn:
        return conn.execute(_in_scope(stmt, region, since)).rowcount


def _in_scope(stmt: sa.Update, region: str | None, since: str | None) -> sa.Update:
    """`stmt` for the keys of one region and of part dates from `since` on, where given."""
    if region is not None:
        stmt = stmt.where(keys.c.dstrct_code == region)
    if since is not None:
        stmt = stmt.where(keys.c.part_date >= since)
    return stmt
