"""Freshness on one clock: from a raw object's arrival to the commit that makes its rows readable.

The ledger does not keep an object's `LastModified`; a key arrives when discovery (a listing, an S3
event, a rebuild's listing) registers it, its `discovered_at`. A batch's rows become readable when
its commit marks its keys SUCCESS and lists its files in the manifest, the batch's `committed_at`.
Both are naive UTC from the clocks of the processes that wrote them.

- A committed batch: its lag is its commit time minus the newest and the oldest of its keys'
  `discovered_at` (the ingest materializations report both).
- A partition's keys not committed yet (PENDING, or CLAIMED by a batch still writing): their lag
  so far is now minus the oldest `discovered_at` (the `freshness` check compares it with its limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import CLAIMED, COMMITTED, INGEST, PENDING, REBUILD, batches, keys

WAITING = (PENDING, CLAIMED)


@dataclass(frozen=True)
class BatchLag:
    committed_at: datetime
    newest_discovered_at: datetime
    oldest_discovered_at: datetime

    @property
    def newest_seconds(self) -> float:
        """Commit time minus the newest key's discovery: how long the latest arrival waited."""
        return round((self.committed_at - self.newest_discovered_at).total_seconds(), 3)

    @property
    def oldest_seconds(self) -> float:
        """Commit time minus the oldest key's discovery: how long the earliest arrival waited."""
        return round((self.committed_at - self.oldest_discovered_at).total_seconds(), 3)

    def metadata(self) -> dict[str, float]:
        return {"lag_newest_seconds": self.newest_seconds, "lag_oldest_seconds": self.oldest_seconds}


def batch_lag(engine: sa.Engine, batch_id: str) -> BatchLag | None:
    """The lag of a committed batch (None if it did not commit or holds no key)."""
    stmt = (
        sa.select(batches.c.committed_at, sa.func.max(keys.c.discovered_at), sa.func.min(keys.c.discovered_at))
        .join(keys, keys.c.batch_id == batches.c.batch_id)
        .where(batches.c.batch_id == batch_id, batches.c.status == COMMITTED)
        .group_by(batches.c.committed_at)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None or row[0] is None:
        return None
    return BatchLag(committed_at=row[0], newest_discovered_at=row[1], oldest_discovered_at=row[2])


@dataclass(frozen=True)
class Waiting:
    """The keys of a partition that are not committed yet."""

    keys: int
    oldest_discovered_at: datetime | None

    def lag_seconds(self, now: datetime) -> float:
        """Now minus the oldest waiting key's discovery; 0 when none waits."""
        if self.oldest_discovered_at is None:
            return 0.0
        return round(max((now - self.oldest_discovered_at).total_seconds(), 0.0), 1)


def waiting(engine: sa.Engine, part_date: str, region: str) -> Waiting:
    """PENDING and CLAIMED keys of one date x region partition: how many, and the oldest discovery."""
    stmt = sa.select(sa.func.count(), sa.func.min(keys.c.discovered_at)).where(
        keys.c.part_date == part_date, keys.c.dstrct_code == region, keys.c.status.in_(WAITING)
    )
    with engine.connect() as conn:
        count, oldest = conn.execute(stmt).one()
    return Waiting(keys=int(count), oldest_discovered_at=oldest)


def last_commit(engine: sa.Engine, part_date: str, region: str) -> BatchLag | None:
    """The lag of the partition's most recently committed batch (None before its first commit)."""
    stmt = (
        sa.select(batches.c.batch_id)
        .where(
            batches.c.part_date == part_date,
            batches.c.dstrct_code == region,
            batches.c.status == COMMITTED,
            sa.or_(batches.c.kind.in_((INGEST, REBUILD)), batches.c.kind.is_(None)),  # NULL: an older ingest
        )
        .order_by(batches.c.committed_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        batch_id = conn.execute(stmt).scalar()
    return batch_lag(engine, batch_id) if batch_id is not None else None
