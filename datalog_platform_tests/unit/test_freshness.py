"""Freshness on the ledger's clock: a committed batch's lag (commit minus its keys' discovery), and
the keys of a partition not committed yet (PENDING or CLAIMED) measured from their discovery.

Real parts: the ledger's tables on SQLite and on the running PostgreSQL, the claim and commit of
the protocol.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from datalog_platform.core import freshness
from datalog_platform.core.ledger import clock, protocol
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.registration import register_keys, upsert_devices
from datalog_platform.core.ledger.schema import SUCCESS, keys
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import ObjectInfo

DAY, REGION, TZ = "2026-11-01", "R1", 8


def seed(engine: sa.Engine, ages: dict[str, int]) -> None:
    """PENDING keys of one partition, each discovered `age` seconds ago."""
    upsert_devices(engine, [("devA", REGION)])
    register_keys(engine, [ObjectInfo(f"devA/2026110102/{name}.json", 10) for name in ages], TZ, REINGEST)
    now = clock.utcnow()
    with engine.begin() as conn:
        for name, age in ages.items():
            stamp = now - timedelta(seconds=age)
            conn.execute(sa.update(keys).where(keys.c.key.endswith(f"/{name}.json")).values(discovered_at=stamp))


def test_a_committed_batch_lags_from_its_newest_and_oldest_discovery(engine: sa.Engine) -> None:
    seed(engine, {"old": 300, "new": 30})
    batch = protocol.claim_batch(engine, DAY, REGION, 10, "run-1", 600)
    assert batch is not None
    assert freshness.batch_lag(engine, batch.batch_id) is None  # not committed yet
    waiting = freshness.waiting(engine, DAY, REGION)
    assert waiting.keys == 2 and waiting.lag_seconds(clock.utcnow()) >= 300  # CLAIMED keys still wait

    outcomes = [KeyOutcome(key_id=k.key_id, status=SUCCESS, rows=1) for k in batch.keys]
    protocol.commit_batch(engine, batch.batch_id, outcomes, [], rows=2, quarantined_lines=0)
    lag = freshness.batch_lag(engine, batch.batch_id)
    assert lag is not None
    with engine.connect() as conn:
        discovered = sorted(conn.execute(sa.select(keys.c.discovered_at)).scalars())
    assert (lag.oldest_discovered_at, lag.newest_discovered_at) == (discovered[0], discovered[1])
    assert 30 <= lag.newest_seconds < 300 <= lag.oldest_seconds
    assert lag.metadata() == {"lag_newest_seconds": lag.newest_seconds, "lag_oldest_seconds": lag.oldest_seconds}
    assert freshness.last_commit(engine, DAY, REGION) == lag
    assert freshness.waiting(engine, DAY, REGION) == freshness.Waiting(keys=0, oldest_discovered_at=None)
    assert freshness.Waiting(keys=0, oldest_discovered_at=None).lag_seconds(datetime(2026, 1, 1)) == 0.0


def test_a_partition_without_commits_has_no_last_commit(engine: sa.Engine) -> None:
    seed(engine, {"only": 60})
    assert freshness.last_commit(engine, DAY, REGION) is None
    assert freshness.waiting(engine, DAY, REGION).keys == 1
