"""Read-only ledger queries: which devices are known and how fresh, the backlog, and which runs hold
which batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import (
    PENDING,
    UNROUTED,
    WRITING,
    batches,
    counts_maintained,
    device_hours,
    devices,
    key_counts,
    keys,
)


def latest_hour_by_device(engine: sa.Engine) -> dict[str, datetime]:
    """Every device with a registered key -> the newest hour among its keys.

    Where the ledger keeps summaries, `device_hours` holds exactly that. Elsewhere: a key of a
    device outside the registry is UNROUTED (it gets a region only once its device is registered,
    and devices are never removed), so the registry's devices, one index seek each, and the devices
    of UNROUTED keys are all the devices with keys."""
    if counts_maintained(engine.dialect.name):
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(device_hours.c.device_id, device_hours.c.latest_hour)).tuples().all())
    newest = sa.select(sa.func.max(keys.c.key_hour)).where(keys.c.device_id == devices.c.device_id).scalar_subquery()
    registered = sa.select(devices.c.device_id, newest)
    unrouted = (
        sa.select(keys.c.device_id, sa.func.max(keys.c.key_hour))
        .where(keys.c.status == UNROUTED)
        .group_by(keys.c.device_id)
    )
    latest: dict[str, datetime] = {}
    with engine.connect() as conn:
        for device, hour in [*conn.execute(registered).all(), *conn.execute(unrouted).all()]:
            if hour is not None and (device not in latest or hour > latest[device]):
                latest[device] = hour
    return latest


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_pending_discovered_at: datetime | None
    unrouted: int


def backlog(engine: sa.Engine) -> Backlog:
    """PENDING keys (how many, the oldest discovery time) and UNROUTED keys waiting for the registry."""
    oldest = sa.select(sa.func.min(keys.c.discovered_at)).where(keys.c.status == PENDING)
    with engine.connect() as conn:
        if counts_maintained(engine.dialect.name):
            counted = sa.select(key_counts.c.status, sa.func.sum(key_counts.c["keys"])).where(
                key_counts.c.status.in_((PENDING, UNROUTED))
            )
            found = dict(conn.execute(counted.group_by(key_counts.c.status)).all())
            pending, unrouted = found.get(PENDING, 0), found.get(UNROUTED, 0)
        else:
            pending = conn.execute(sa.select(sa.func.count()).where(keys.c.status == PENDING)).scalar_one()
            unrouted = conn.execute(sa.select(sa.func.count()).where(keys.c.status == UNROUTED)).scalar_one()
        first = conn.execute(oldest).scalar()
    return Backlog(pending=int(pending), oldest_pending_discovered_at=first, unrouted=int(unrouted))


def _routed_partitions() -> tuple[sa.ColumnElement[str], sa.ColumnElement[str], list[sa.ColumnElement[bool]]]:
    """(part_date, region, conditions) of the partitions with routed keys in `key_counts`."""
    c = key_counts.c
    return c.part_date, c.dstrct_code, [c.dstrct_code != "", c["keys"] > 0]


def regions_with_keys(engine: sa.Engine, part_date: str) -> list[str]:
    """The regions with registered keys of one local date."""
    day, region, routed = (
        _routed_partitions()
        if counts_maintained(engine.dialect.name)
        else (keys.c.part_date, keys.c.dstrct_code, [keys.c.dstrct_code.isnot(None)])
    )
    stmt = sa.select(region).where(day == part_date, *routed).distinct().order_by(region)
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def devices_of_region(engine: sa.Engine, region: str) -> list[str]:
    """The registry's devices of one region, in key order."""
    stmt = sa.select(devices.c.device_id).where(devices.c.dstrct_code == region).order_by(devices.c.device_id)
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def partitions_with_keys(engine: sa.Engine, first_date: str, last_date: str) -> list[tuple[str, str]]:
    """(date, region) of every routed key dated from `first_date` to `last_date`, in order."""
    day, region, routed = (
        _routed_partitions()
        if counts_maintained(engine.dialect.name)
        else (keys.c.part_date, keys.c.dstrct_code, [keys.c.dstrct_code.isnot(None)])
    )
    stmt = sa.select(day, region).where(day.between(first_date, last_date), *routed).distinct().order_by(day, region)
    with engine.connect() as conn:
        return [(day, region) for day, region in conn.execute(stmt).all()]


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
