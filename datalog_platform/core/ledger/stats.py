"""Read-only ledger queries for discovery: which devices are known and how fresh, and the backlog."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import PENDING, UNROUTED, devices, keys


def latest_hour_by_device(engine: sa.Engine) -> dict[str, datetime]:
    """Every device with a registered key -> the newest hour among its keys."""
    stmt = sa.select(keys.c.device_id, sa.func.max(keys.c.key_hour)).group_by(keys.c.device_id)
    with engine.connect() as conn:
        return {device: hour for device, hour in conn.execute(stmt).all()}


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_pending_discovered_at: datetime | None
    unrouted: int


def backlog(engine: sa.Engine) -> Backlog:
    """PENDING keys (how many, the oldest discovery time) and UNROUTED keys waiting for the registry."""
    with engine.connect() as conn:
        pending, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(keys.c.discovered_at)).where(keys.c.status == PENDING)
        ).one()
        unrouted = conn.execute(sa.select(sa.func.count()).where(keys.c.status == UNROUTED)).scalar_one()
    return Backlog(pending=int(pending), oldest_pending_discovered_at=oldest, unrouted=int(unrouted))


def regions_with_keys(engine: sa.Engine, part_date: str) -> list[str]:
    """The regions with registered keys of one local date."""
    stmt = (
        sa.select(keys.c.dstrct_code)
        .where(keys.c.part_date == part_date, keys.c.dstrct_code.isnot(None))
        .distinct()
        .order_by(keys.c.dstrct_code)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def devices_of_region(engine: sa.Engine, region: str) -> list[str]:
    """The registry's devices of one region, in key order."""
    stmt = sa.select(devices.c.device_id).where(devices.c.dstrct_code == region).order_by(devices.c.device_id)
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def partitions_with_keys(engine: sa.Engine, first_date: str, last_date: str) -> list[tuple[str, str]]:
    """(date, region) of every routed key dated from `first_date` to `last_date`, in order."""
    stmt = (
        sa.select(keys.c.part_date, keys.c.dstrct_code)
        .where(keys.c.dstrct_code.isnot(None), keys.c.part_date.between(first_date, last_date))
        .distinct()
        .order_by(keys.c.part_date, keys.c.dstrct_code)
    )
    with engine.connect() as conn:
        return [(day, region) for day, region in conn.execute(stmt).all()]
