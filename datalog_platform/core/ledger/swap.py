"""Rebuilds and compactions: replace files of the lake in one ledger transaction.

A rebuild reprocesses every key of a (date, region) partition; a compaction rewrites the small
files of one hive directory into few. Both write their new files first, while the files they
replace stay LIVE; their commit makes the new files LIVE and the replaced ones RETIRED in one
transaction, and only then are the retired files deleted (`protocol.delete_retired`).

A file is replaced by at most one writer: a claim marks the files it will replace with
`retire_by`, and only unmarked files can be marked. A rebuild needs every LIVE file of its
partition, so it stops if another writer holds one; a compaction takes whatever is unmarked.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from datalog_platform.core.ledger.claims import CLAIMED_COLUMNS, Batch, claimed_batch
from datalog_platform.core.ledger.holds import hold_partition, mark_files
from datalog_platform.core.ledger.protocol import insert_batch
from datalog_platform.core.ledger.schema import (
    CLAIMED,
    COMPACT,
    FAILED,
    HELD,
    LIVE,
    MISSING,
    PENDING,
    QUARANTINED,
    REBUILD,
    SUCCESS,
    LakeFile,
    batches,
    keys,
    lake_files,
)

# Every key a rebuild reprocesses: all of the partition but keys another batch holds and UNROUTED.
REBUILT_STATUSES = (PENDING, FAILED, SUCCESS, QUARANTINED, MISSING, HELD)


def claim_rebuild(
    engine: sa.Engine, part_date: str, region: str, run_id: str | None, lease_seconds: int
) -> Batch | None:
    """Lease every key of (part_date, region) that no other batch holds to a new REBUILD batch,
    and mark every LIVE file of the partition's ingest datasets to be replaced by it. None if the
    partition has no keys; PartitionBusyError if another writer holds some of its files.

    Keys already ingested remember their status and batch (`prior_status`, `prior_batch_id`), so
    that an abort gives them back exactly as they were. The claim has no size limit: the files it
    replaces hold the rows of all those keys.
    """
    with engine.connect() as conn, conn.begin() as tx:
        batch_id = insert_batch(conn, REBUILD, part_date, region, run_id, lease_seconds)
        hold_partition(conn, batch_id, part_date, region)
        claimed = conn.execute(
            sa.update(keys)
            .where(
                keys.c.part_date == part_date,
                keys.c.dstrct_code == region,
                keys.c.status.in_(REBUILT_STATUSES),
            )
            .values(status=CLAIMED, batch_id=batch_id, prior_status=keys.c.status, prior_batch_id=keys.c.batch_id)
            .returning(*CLAIMED_COLUMNS)
        ).all()
        if not claimed:
            tx.rollback()
            return None
        conn.execute(sa.update(batches).where(batches.c.batch_id == batch_id).values(keys=len(claimed)))
    return claimed_batch(batch_id, run_id, part_date, region, claimed, REBUILD, holds=True)


@dataclass(frozen=True)
class Directory:
    """The LIVE files of one hive directory that came from one partition's keys."""

    dataset: str
    hiveperiod: str
    dstrct_code: str
    part_date: str
    files: int


@dataclass(frozen=True)
class Compaction:
    batch_id: str
    directory: Directory
    files: tuple[LakeFile, ...]


def crowded_directories(engine: sa.Engine, min_files: int) -> list[Directory]:
    """Directories with more than `min_files` LIVE files from one source partition that no
    rebuild or compaction holds, most files first."""
    count = sa.func.count()
    stmt = (
        sa.select(
            lake_files.c.dataset, lake_files.c.hiveperiod, lake_files.c.dstrct_code, lake_files.c.part_date, count
        )
        .where(lake_files.c.state == LIVE, lake_files.c.retire_by.is_(None))
        .group_by(lake_files.c.dataset, lake_files.c.hiveperiod, lake_files.c.dstrct_code, lake_files.c.part_date)
        .having(count > min_files)
        .order_by(count.desc(), lake_files.c.dataset, lake_files.c.hiveperiod, lake_files.c.dstrct_code)
    )
    with engine.connect() as conn:
        return [Directory(*row[:4], files=int(row[4])) for row in conn.execute(stmt).all()]


def claim_compaction(
    engine: sa.Engine, directory: Directory, run_id: str | None, lease_seconds: int
) -> Compaction | None:
    """Mark the directory's unheld LIVE files (of its source partition) to be replaced by a new
    COMPACT batch; None if fewer than two are left to merge."""
    where = (
        lake_files.c.dataset == directory.dataset,
        lake_files.c.hiveperiod == directory.hiveperiod,
        lake_files.c.dstrct_code == directory.dstrct_code,
        lake_files.c.part_date == directory.part_date,
    )
    with engine.connect() as conn, conn.begin() as tx:
        batch_id = insert_batch(conn, COMPACT, directory.part_date, directory.dstrct_code, run_id, lease_seconds)
        mark_files(conn, batch_id, *where)
        marked = conn.execute(
            sa.select(lake_files.c.path, lake_files.c.rows, lake_files.c.bytes)
            .where(*where, lake_files.c.retire_by == batch_id)
            .order_by(lake_files.c.path)
        ).all()
        if len(marked) < 2:
            tx.rollback()
            return None
    return Compaction(batch_id, directory, tuple(LakeFile(p, r, b) for p, r, b in marked))


def live_files(
    engine: sa.Engine,
    dataset: str,
    hiveperiod: str | None = None,
    region: str | None = None,
    part_date: str | None = None,
) -> list[LakeFile]:
    """The dataset's LIVE files (of one date and region, and rows of one source partition's keys,
    if given): what a reader should read."""
    stmt = sa.select(lake_files.c.path, lake_files.c.rows, lake_files.c.bytes).where(
        lake_files.c.dataset == dataset, lake_files.c.state == LIVE
    )
    if hiveperiod is not None:
        stmt = stmt.where(lake_files.c.hiveperiod == hiveperiod)
    if region is not None:
        stmt = stmt.where(lake_files.c.dstrct_code == region)
    if part_date is not None:
        stmt = stmt.where(lake_files.c.part_date == part_date)
    with engine.connect() as conn:
        return [LakeFile(p, r, b) for p, r, b in conn.execute(stmt.order_by(lake_files.c.path)).all()]


def held_files(engine: sa.Engine, batch_id: str) -> list[LakeFile]:
    """The LIVE files that `batch_id` holds (will replace, or release, at its commit)."""
    stmt = sa.select(lake_files.c.path, lake_files.c.rows, lake_files.c.bytes).where(
        lake_files.c.retire_by == batch_id, lake_files.c.state == LIVE
    )
    with engine.connect() as conn:
        return [LakeFile(p, r, b) for p, r, b in conn.execute(stmt.order_by(lake_files.c.path)).all()]


def files_staying(engine: sa.Engine, dirs: list[str], batch_id: str) -> list[LakeFile]:
    """The LIVE files of lake directories (`dataset/hiveperiod=D/dstrct_code=R`) that `batch_id`
    will not replace: what its rows must not duplicate."""
    if not dirs:
        return []
    f = lake_files.c
    where = []
    for d in dirs:
        dataset, day, region = d.split("/")
        where.append(
            sa.and_(
                f.dataset == dataset, f.hiveperiod == day.split("=", 1)[1], f.dstrct_code == region.split("=", 1)[1]
            )
        )
    stmt = sa.select(f.path, f.rows, f.bytes).where(
        sa.or_(*where), f.state == LIVE, sa.or_(f.retire_by.is_(None), f.retire_by != batch_id)
    )
    with engine.connect() as conn:
        return [LakeFile(p, r, b) for p, r, b in conn.execute(stmt.order_by(f.path)).all()]
