"""How many keys one batch claims: fewer after failures, and no more raw bytes than a budget."""

from __future__ import annotations

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import PENDING, counts_maintained, key_counts, keys


def claimable(part_date: str, region: str, attempts: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The keys a claim of (part_date, region) may take: PENDING, failed `attempts` times so far."""
    return (
        keys.c.status == PENDING,
        keys.c.dstrct_code == region,
        keys.c.part_date == part_date,
        keys.c.attempts == attempts,
    )


def most_failed(conn: sa.Connection, part_date: str, region: str) -> int:
    """The most failures a PENDING key of the partition has had (0: none has failed).

    Where the ledger keeps `key_counts`, a partition whose PENDING keys have no failures at all (the
    usual case) is answered from its summary row, without reading each of its PENDING keys."""
    if counts_maintained(conn.dialect.name):
        failures = conn.execute(
            sa.select(key_counts.c.attempts).where(
                key_counts.c.part_date == part_date,
                key_counts.c.dstrct_code == region,
                key_counts.c.status == PENDING,
            )
        ).scalar_one_or_none()
        if not failures:
            return 0
    return (
        conn.execute(
            sa.select(sa.func.max(keys.c.attempts)).where(
                keys.c.status == PENDING,
                keys.c.dstrct_code == region,
                keys.c.part_date == part_date,
                keys.c.attempts > 0,
            )
        ).scalar_one_or_none()
        or 0
    )


def retry_limit(limit: int, attempts: int, max_attempts: int) -> int:
    """How many keys that failed `attempts` times one batch takes: fewer with every failure, and
    one alone before the last attempt, so a key that breaks its batch every time (a poisonous or
    oversize file) ends FAILED by itself while the keys it shared batches with go through.

    The sizes fall geometrically from `limit` to 1 (1,000 -> 32 -> 1 with three attempts): a
    batch that failed for a passing reason is retried in a few dozen batches, not one per key.
    """
    if attempts <= 0:
        return limit
    if attempts >= max_attempts - 1:
        return 1
    return max(1, round(limit ** ((max_attempts - 1 - attempts) / (max_attempts - 1))))


def within_budget(conn: sa.Connection, part_date: str, region: str, attempts: int, limit: int, max_bytes: int) -> int:
    """How many of the next `limit` claimable keys fit in `max_bytes` together; at least one, so a
    file larger than the budget is a batch of its own. Read without locks: under concurrent
    claims of one partition the keys claimed may differ, so the budget is held about, not exactly."""
    nextkeys = (
        sa.select(keys.c.key_id, keys.c.size)
        .where(*claimable(part_date, region, attempts))
        .order_by(keys.c.key_id)
        .limit(limit)
        .subquery()
    )
    running = sa.select(sa.func.sum(nextkeys.c.size).over(order_by=nextkeys.c.key_id).label("running")).subquery()
    fitting = conn.execute(sa.select(sa.func.count()).where(running.c.running <= max_bytes)).scalar_one()
    return max(1, int(fitting))
