"""Holds on lake files: a writer that will replace files marks them first, and no two writers
mark the same file.

A rebuild, a compaction, a re-ingest of keys seen in a new version, or an analytics derive writes
its new files while the ones they replace stay LIVE; its commit retires them in one transaction.
The mark (`lake_files.retire_by`) is taken in the writer's claim and makes a second writer of the
same files wait or stop (`PartitionBusyError`).
"""

from __future__ import annotations

import sqlalchemy as sa

from datalog_platform.core.ledger.records import INGEST_DATASETS
from datalog_platform.core.ledger.schema import LIVE, lake_files


class PartitionBusyError(RuntimeError):
    """Another rebuild, compaction or re-ingest holds files of the partition; try again when it has ended."""


def mark_files(conn: sa.Connection, batch_id: str, *where: sa.ColumnElement[bool]) -> None:
    """Mark the LIVE files matching `where` that no writer holds yet to be replaced by `batch_id`."""
    conn.execute(
        sa.update(lake_files)
        .where(*where, lake_files.c.state == LIVE, lake_files.c.retire_by.is_(None))
        .values(retire_by=batch_id)
    )


def hold_files(conn: sa.Connection, batch_id: str, what: str, *where: sa.ColumnElement[bool]) -> None:
    """Mark every LIVE file matching `where` to be replaced by `batch_id`, in the caller's
    transaction; PartitionBusyError (which rolls the transaction back) if another rebuild,
    compaction, re-ingest or derive already holds some of them."""
    mark_files(conn, batch_id, *where)
    holders = sorted(
        conn.execute(
            sa.select(lake_files.c.retire_by)
            .where(*where, lake_files.c.state == LIVE, lake_files.c.retire_by != batch_id)
            .distinct()
        ).scalars()
    )
    if holders:
        raise PartitionBusyError(
            f"{what} has files held by batch(es) {', '.join(holders)} (a rebuild, compaction, re-ingest or derive "
            "in progress); run it again when they have ended"
        )


def hold_partition(conn: sa.Connection, batch_id: str, part_date: str, region: str) -> None:
    """`hold_files` of every LIVE file of the ingest datasets written from the partition's keys:
    the files that may hold rows of its keys."""
    where = (
        lake_files.c.part_date == part_date,
        lake_files.c.dstrct_code == region,
        lake_files.c.dataset.in_(INGEST_DATASETS),
    )
    hold_files(conn, batch_id, f"partition {part_date} / {region}", *where)
