"""What can be ingested now: the partitions with PENDING keys inside the date partitions' range.

Shared by the pending-keys sensor, the hourly schedule and `datalog ingest`. Plain logic over a
ledger engine and two ISO dates; no Dagster here.
"""

from __future__ import annotations

import sqlalchemy as sa

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.registration import PartitionBacklog


def ingestible_backlog(engine: sa.Engine, first_date: str, last_date: str) -> tuple[list[PartitionBacklog], int]:
    """(partitions with PENDING keys whose part_date is within [first_date, last_date], ordered by
    date and region, each with its fingerprint; the number of PENDING keys outside that range).

    Keys outside the range have no date partition to run in (older than the partitions' start date,
    or dated in the future); they wait and are reported rather than silently dropped.
    """
    pending = registration.pending_partitions(engine)
    in_range = [p for p in pending if first_date <= p.part_date <= last_date]
    out_of_range_keys = sum(p.keys for p in pending) - sum(p.keys for p in in_range)
    return in_range, out_of_range_keys
