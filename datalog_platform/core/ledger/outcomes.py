"""What a batch's commit records of each of its keys: the version it wrote, or why it wrote none.

A key written in the version it was claimed in (SUCCESS, QUARANTINED) is recorded by one
statement for the whole batch, guarded by that version (PostgreSQL reads the batch as one JSON
document, SQLite runs one statement for each key, MSSQL joins chunks of a VALUES list). Every
other key is recorded one by one (`_settle`): the rare outcomes, and a key whose object a
discovery saw in a newer version while the batch read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from datalog_platform.core.ledger import bulk, versions
from datalog_platform.core.ledger.engine import chunks
from datalog_platform.core.ledger.schema import (
    CLAIMED,
    FAILED,
    HELD,
    MISSING,
    PENDING,
    QUARANTINED,
    SUCCESS,
    key_versions,
    keys,
)
from datalog_platform.core.store import ObjectInfo

# A key's outcome in a batch: a key status (SUCCESS or QUARANTINED: its version was read and its
# rows written; MISSING: its object was gone; FAILED: it crashed the reader), or one of these.
KEPT = "KEPT"  # a rebuild found its object gone: the rows the lake holds of it stay, and so does its status
CHANGED = "CHANGED"  # its object changed before or during the read: not written; `seen` is its new version
WRITTEN = (SUCCESS, QUARANTINED)


@dataclass(frozen=True)
class KeyOutcome:
    key_id: int
    status: str  # see above
    rows: int = 0
    quarantined_lines: int = 0
    duplicate_rows: int = 0
    error: str | None = None
    version: int = 1  # the version claimed: the one read, for SUCCESS and QUARANTINED
    seen: ObjectInfo | None = None  # CHANGED: the version found instead


# Keys per outcome statement: seven parameters a key stay under MSSQL's 2,100 a statement.
OUTCOME_CHUNK = 250


def outcomes_statement(batch_id: str, outcomes: list[KeyOutcome], now: datetime) -> sa.Update:
    """Keys -> their final status, guarded by the batch id and the version read: one statement
    joined to a VALUES list of the outcomes, not one statement a key (each of which also fires
    the count triggers)."""
    given = sa.values(
        sa.column("key_id", sa.BigInteger),
        sa.column("status", sa.String),
        sa.column("rows", sa.BigInteger),
        sa.column("quarantined", sa.BigInteger),
        sa.column("duplicates", sa.BigInteger),
        sa.column("error", sa.String),
        sa.column("version", sa.Integer),
        name="outcomes",
    ).data([(o.key_id, o.status, o.rows, o.quarantined_lines, o.duplicate_rows, o.error, o.version) for o in outcomes])
    given = given.cte("outcomes")  # SQLite names a VALUES list's columns only in a CTE
    return (
        sa.update(keys)
        .where(
            keys.c.key_id == given.c.key_id,
            keys.c.batch_id == batch_id,
            keys.c.status == CLAIMED,
            keys.c.version == given.c.version,
        )
        .values(**bulk.outcome_values(given.c, now, batch_id))
    )


def record_outcomes(conn: sa.Connection, batch_id: str, outcomes: list[KeyOutcome], policy: str, now: datetime) -> None:
    """Every key of the batch to its outcome, in the commit's transaction; a newer version of a
    key waits for its own batch under the rewrite `policy`."""
    written = [o for o in outcomes if o.status in WRITTEN]
    if not written:
        pass
    elif conn.dialect.name == "postgresql":  # the whole batch in one statement
        conn.execute(bulk.outcomes_statement(), bulk.outcomes_page(batch_id, written, now))
    elif conn.dialect.name == "sqlite":  # one statement the driver runs for each key
        conn.execute(bulk.outcome_statement(), bulk.outcome_rows(batch_id, written, now))
    else:
        for chunk in chunks(written, OUTCOME_CHUNK):
            conn.execute(outcomes_statement(batch_id, chunk, now))
    _settle(conn, batch_id, outcomes, policy, now)


def _settle(conn: sa.Connection, batch_id: str, outcomes: list[KeyOutcome], policy: str, now: datetime) -> None:
    """The keys of the batch that the written outcomes' statement left CLAIMED, one by one."""
    left = set(
        conn.execute(sa.select(keys.c.key_id).where(keys.c.batch_id == batch_id, keys.c.status == CLAIMED)).scalars()
    )
    if not left:
        return
    by_id = {o.key_id: o for o in outcomes}
    if left - set(by_id):
        raise RuntimeError(f"batch {batch_id} has no outcome for key(s) {sorted(left - set(by_id))[:5]}")
    mine = (keys.c.key_id == sa.bindparam("b_key_id"), keys.c.batch_id == batch_id, keys.c.status == CLAIMED)
    cleared = {"prior_status": None, "prior_batch_id": None}
    settled = [by_id[key_id] for key_id in sorted(left)]
    newer = [o for o in settled if o.status in WRITTEN]
    if newer:
        # written in the version claimed, while a discovery recorded a newer one: the rows are
        # those of the version claimed, and the newer one waits (or, under `ignore`, not)
        waiting = {versions.REINGEST: PENDING, versions.QUARANTINE: HELD}.get(policy)
        values = bulk.outcome_values(_bound_outcome(), now, batch_id)
        if waiting:
            values["status"] = waiting
            values["error"] = versions.HELD_REASON if waiting == HELD else None
        conn.execute(sa.update(keys).where(*mine).values(values), [_outcome_params(o) for o in newer])
        conn.execute(
            sa.update(key_versions)
            .where(key_versions.c.key_id == sa.bindparam("b_key_id"), key_versions.c.version == sa.bindparam("b_v"))
            .values(batch_id=batch_id),
            [{"b_key_id": o.key_id, "b_v": o.version} for o in newer],
        )
    gone = [{"b_key_id": o.key_id, "b_error": o.error} for o in settled if o.status == MISSING]
    if gone:
        conn.execute(
            sa.update(keys).where(*mine).values(status=MISSING, error=sa.bindparam("b_error"), **cleared), gone
        )
    kept = [{"b_key_id": o.key_id} for o in settled if o.status == KEPT]
    if kept:
        conn.execute(
            sa.update(keys).where(*mine).values(status=keys.c.prior_status, batch_id=keys.c.prior_batch_id, **cleared),
            kept,
        )
    crashed = [{"b_key_id": o.key_id, "b_error": o.error} for o in settled if o.status == FAILED]
    if crashed:
        conn.execute(
            sa.update(keys)
            .where(*mine)
            .values(status=FAILED, attempts=keys.c.attempts + 1, error=sa.bindparam("b_error"), **cleared),
            crashed,
        )
    changed = [o for o in settled if o.status == CHANGED and o.seen is not None]
    if changed:
        rows = {}
        for chunk in chunks([o.key_id for o in changed]):
            rows.update(
                {r.key_id: r for r in conn.execute(sa.select(*versions.KNOWN_COLUMNS).where(keys.c.key_id.in_(chunk)))}
            )
        versions.replace_versions(conn, [(rows[o.key_id], o.seen) for o in changed], policy, now)
        waiting = {versions.REINGEST: PENDING, versions.QUARANTINE: HELD}.get(policy)
        in_lake = keys.c.lake_version.isnot(None)
        rewritten = sa.literal(waiting) if waiting else sa.func.coalesce(keys.c.prior_status, SUCCESS)
        conn.execute(
            sa.update(keys)
            .where(*mine)
            .values(
                status=sa.case((in_lake, rewritten), else_=PENDING),
                error=sa.case((sa.and_(in_lake, sa.literal(waiting == HELD)), versions.HELD_REASON)),
                **cleared,
            ),
            [{"b_key_id": o.key_id} for o in changed],
        )


def _bound_outcome() -> SimpleNamespace:
    """An outcome's fields as bound parameters, for `bulk.outcome_values`."""
    return SimpleNamespace(**{name: sa.bindparam(f"b_{name}") for name in bulk.OUTCOME_FIELDS})


def _outcome_params(o: KeyOutcome) -> dict[str, Any]:
    return {"b_key_id": o.key_id, **{f"b_{name}": value for name, value in bulk.outcome_fields(o).items()}}


def reread_duplicates(conn: sa.Connection, batch_id: str, region: str, days: list[str]) -> int:
    """Keys of `region` that dropped rows as duplicates and whose rows may land on `days` (their
    own date or a neighbour's) -> PENDING, in the commit's transaction: the record they dropped
    may be one that the batch's new versions no longer hold. Read again, each replaces its rows
    with the same rows, and those records among them."""
    if not days:
        return 0
    first = (datetime.fromisoformat(min(days)) - timedelta(days=1)).date().isoformat()
    last = (datetime.fromisoformat(max(days)) + timedelta(days=1)).date().isoformat()
    return conn.execute(
        sa.update(keys)
        .where(
            keys.c.dstrct_code == region,
            keys.c.part_date.between(first, last),
            keys.c.status == SUCCESS,
            keys.c.duplicate_rows > 0,
            keys.c.batch_id != batch_id,
        )
        .values(status=PENDING, attempts=0, error=None)
    ).rowcount
