"""Keys in the ledger outside any batch: devices and routing, registration of raw objects, the
backlog of pending keys, reporting, and the operator's requeue. Each step a short transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from datalog_platform.core.ledger import bulk
from datalog_platform.core.ledger.engine import CHUNK, chunks
from datalog_platform.core.ledger.protocol import RawKey, local_date, parse_raw_key, utcnow
from datalog_platform.core.ledger.schema import (
    FAILED,
    PENDING,
    QUARANTINED,
    SUCCESS,
    UNROUTED,
    counts_maintained,
    devices,
    key_counts,
    keys,
)

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
    ignored: int
    bytes: int


# Keys per registration transaction. PostgreSQL inserts a page as one statement reading a JSON
# document (`bulk`), SQLite as multi-row INSERTs (SQLAlchemy's insertmanyvalues), both with ON
# CONFLICT DO NOTHING; MSSQL's statements stay under its 2,100-parameter limit.
_UPSERT_BATCH = 10 * CHUNK
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert_new_keys(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows of `keys` whose key is not in the ledger yet; returns those inserted.

    The keys already known are looked up first (a discovery tick re-lists mostly known keys, and a
    look-up is cheaper than an INSERT that conflicts, which also spends a key id); where the
    dialect has ON CONFLICT, a key a concurrent registrar inserts in between is skipped instead of
    failing the transaction. PostgreSQL sends the page as one JSON document (`bulk`)."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        known_rows = conn.execute(bulk.known_keys_statement(), {"b_keys": bulk.page(row["key"] for row in rows)})
    else:
        known_rows = conn.execute(sa.select(keys.c.key).where(keys.c.key.in_([r["key"] for r in rows])))
    known = set(known_rows.scalars())
    new_rows = [row for row in rows if row["key"] not in known]
    insert = _UPSERTS.get(conn.dialect.name)
    if not new_rows or insert is None:
        if new_rows:
            conn.execute(sa.insert(keys), new_rows)
        return new_rows
    if postgres:
        inserted_rows = conn.execute(bulk.insert_keys_statement(), {"b_page": bulk.page(new_rows)})
    else:
        stmt = insert(keys).on_conflict_do_nothing(index_elements=[keys.c.key]).returning(keys.c.key)
        inserted_rows = conn.execute(stmt, new_rows)
    inserted = set(inserted_rows.scalars())
    return [row for row in new_rows if row["key"] in inserted]


def register_keys(engine: sa.Engine, objects: Iterable[Any], tz_offset_hours: int) -> RegisterResult:
    """Record new raw objects in the ledger (idempotent): PENDING if the device is known, else UNROUTED.

    `objects` are ObjectInfo-like (key, size, etag); keys that are not raw log keys are ignored.
    """
    seen = registered = unrouted = ignored = total_bytes = 0
    batch_size = _UPSERT_BATCH if engine.dialect.name in _UPSERTS else CHUNK
    batch: dict[str, tuple[Any, RawKey]] = {}

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
                    new_rows = insert_new_keys(conn, rows_of_batch(conn, utcnow()))
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
        batch.setdefault(obj.key, (obj, raw))
        if len(batch) >= batch_size:
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


def backlog_fingerprint(pending: int, key_ids: int, attempts: int) -> str:
    """The same PENDING keys give the same text; a new key raises the count and the sum of key ids
    (a key registered later has a higher id than those before it, so keys claimed and as many
    registered meanwhile raise the sum too), and keys handed back by an aborted batch raise the sum
    of attempts."""
    return f"n{pending}-s{key_ids}-a{attempts}"


def pending_partitions(engine: sa.Engine) -> list[PartitionBacklog]:
    """Every (part_date, region) with PENDING keys: how many, and the fingerprint of that backlog.

    Where the ledger keeps `key_counts`, all of it comes from there (one row a partition);
    elsewhere all PENDING keys are aggregated."""
    if counts_maintained(engine.dialect.name):
        c = key_counts.c
        stmt = (
            sa.select(c.part_date, c.dstrct_code, c["keys"], c.key_ids, c.attempts)
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
            )
            .where(keys.c.status == PENDING)
            .group_by(keys.c.part_date, keys.c.dstrct_code)
            .order_by(keys.c.part_date, keys.c.dstrct_code)
        )
    with engine.connect() as conn:
        return [
            PartitionBacklog(d, r, int(n), backlog_fingerprint(int(n), int(key_ids), int(attempts)))
            for d, r, n, key_ids, attempts in conn.execute(stmt).all()
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
