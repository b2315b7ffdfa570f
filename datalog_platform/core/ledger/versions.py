"""Versions of a raw object: a known key seen again with other bytes, or seen again after it was gone.

A device may upload its hour again; on S3 that overwrites the key. Each sighting of a known key
(a listing, an S3 event, the reconciliation, a batch's own look before and after its read) is
compared with the version the ledger holds (`store.Version`). A new version moves the one it
replaces into `key_versions` (with the batch that wrote its rows, if one did), numbers itself one
higher, and decides the key's status:

- a key with no rows in the lake (never ingested, FAILED, QUARANTINED as unreadable, MISSING, ...)
  simply becomes PENDING again with fresh attempts (UNROUTED keys stay UNROUTED);
- a key whose rows are in the lake follows the rewrite policy: `reingest` makes it PENDING, and its
  next batch replaces those rows with the new version's; `quarantine` makes it HELD until a person
  releases it (`registration.release_held`); `ignore` keeps its status and rows, the new version only recorded;
- a CLAIMED key keeps its status: the batch reading it finds the new version at its commit.

Two S3 events of one key are ordered by their `sequencer`: an event that is not newer than the
last one recorded for the key is stale and changes nothing. A listing carries no sequencer; what
it shows is compared as it is. A MISSING key seen again, in any version, is PENDING again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from datalog_platform.core.ledger.schema import CLAIMED, HELD, MISSING, PENDING, UNROUTED, key_versions, keys
from datalog_platform.core.store import ObjectInfo, Version, sequence_order

REINGEST = "reingest"
IGNORE = "ignore"
QUARANTINE = "quarantine"
REWRITE_POLICIES = (REINGEST, IGNORE, QUARANTINE)

# What a new version does to a key whose rows are in the lake, by policy (None: status kept).
_REWRITTEN_STATUS = {REINGEST: PENDING, QUARANTINE: HELD, IGNORE: None}
# The error a HELD key carries.
HELD_REASON = (
    "a new version of the object, held by DATALOG_REWRITE_POLICY=quarantine: the lake keeps the rows of "
    "the version before until `datalog ledger release`"
)
# What each policy does with a new version of an ingested object, as the logs say it.
_POLICY_EFFECT = {
    REINGEST: "re-ingested (their rows replaced)",
    IGNORE: "ignored (DATALOG_REWRITE_POLICY=ignore: the lake keeps the rows of the version before)",
    QUARANTINE: "held (HELD until `datalog ledger release`)",
}


def rewrite_note(rewritten: int, policy: str) -> str:
    """What happened to `rewritten` objects seen in a new version after their ingest, for a log or
    a summary; empty for none."""
    return f"{rewritten} rewritten object(s) had been ingested before: {_POLICY_EFFECT[policy]}" if rewritten else ""


# The ledger's row of a known key, as registration compares a sighting with it.
KNOWN_COLUMNS = (
    keys.c.key_id,
    keys.c.key,
    keys.c.status,
    keys.c.etag,
    keys.c.size,
    keys.c.mtime_ns,
    keys.c.sequencer,
    keys.c.version,
    keys.c.lake_version,
)


def is_new_version(recorded: Any, seen: ObjectInfo) -> bool:
    """Whether `seen` is a version of the key other than the ledger's row `recorded` (see
    KNOWN_COLUMNS): an event no newer than the last one recorded never is."""
    if seen.sequencer and recorded.sequencer and sequence_order(seen.sequencer) <= sequence_order(recorded.sequencer):
        return False
    return seen.version.differs_from(Version(recorded.size, recorded.etag, recorded.mtime_ns))


@dataclass(frozen=True)
class Sightings:
    """What registration found about keys the ledger knew already."""

    new_versions: int = 0  # of any key
    rewritten: int = 0  # of those, of keys whose rows the lake holds: re-ingested, held or ignored by policy
    reappeared: int = 0  # MISSING keys seen again in the version they had


def record_sightings(
    conn: sa.Connection, known: Sequence[Any], seen: dict[str, ObjectInfo], policy: str, now: datetime
) -> Sightings:
    """Apply what `seen` (by key) says of the `known` rows, in the caller's transaction: new
    versions, and MISSING keys that are back. A concurrent registrar recording the same version
    first makes this transaction fail on `key_versions`' key; the caller looks again."""
    changed = [(row, seen[row.key]) for row in known if is_new_version(row, seen[row.key])]
    back = [row.key_id for row in known if row.status == MISSING and not is_new_version(row, seen[row.key])]
    if changed:
        replace_versions(conn, changed, policy, now)
    if back:
        conn.execute(
            sa.update(keys)
            .where(keys.c.key_id.in_(back), keys.c.status == MISSING)
            .values(status=PENDING, error=None, discovered_at=now)
        )
    rewritten = sum(1 for row, _ in changed if row.lake_version is not None)
    return Sightings(new_versions=len(changed), rewritten=rewritten, reappeared=len(back))


def replace_versions(
    conn: sa.Connection, changes: Sequence[tuple[Any, ObjectInfo]], policy: str, now: datetime
) -> None:
    """Each key's version `row.version` -> history, and the sighting its new version (see the
    module docstring for its status). Guarded by the version replaced: applied once."""
    replaced = [{"b_key_id": row.key_id, "b_version": row.version} for row, _ in changes]
    conn.execute(_history_statement(now), replaced)
    rewritten = _REWRITTEN_STATUS[policy]
    in_lake = keys.c.lake_version.isnot(None)
    status = sa.case(
        # comparisons, not IN: an expanding parameter cannot be run for many rows at once
        (sa.or_(keys.c.status == CLAIMED, keys.c.status == UNROUTED), keys.c.status),
        (~in_lake, PENDING),
        else_=keys.c.status if rewritten is None else sa.literal(rewritten),
    )
    kept = sa.or_(keys.c.status == CLAIMED, sa.and_(in_lake, sa.literal(rewritten is None)))
    conn.execute(
        sa.update(keys)
        .where(keys.c.key_id == sa.bindparam("b_key_id"), keys.c.version == sa.bindparam("b_version"))
        .values(
            etag=sa.bindparam("b_etag"),
            size=sa.bindparam("b_size"),
            mtime_ns=sa.bindparam("b_mtime_ns"),
            last_modified=sa.bindparam("b_last_modified"),
            sequencer=sa.func.coalesce(sa.bindparam("b_sequencer", type_=sa.String), keys.c.sequencer),
            version=keys.c.version + 1,
            discovered_at=now,
            status=status,
            attempts=sa.case((kept, keys.c.attempts), else_=0),
            error=sa.case((kept, keys.c.error), (status == HELD, HELD_REASON), else_=None),
        ),
        [
            {
                "b_key_id": row.key_id,
                "b_version": row.version,
                "b_etag": obj.etag,
                "b_size": obj.size,
                "b_mtime_ns": obj.mtime_ns,
                "b_last_modified": obj.last_modified,
                "b_sequencer": obj.sequencer,
            }
            for row, obj in changes
        ],
    )


def _history_statement(now: datetime) -> sa.Insert:
    """The key's row as it is at version `b_version` -> `key_versions`; nothing if the key has
    moved past it (a concurrent registrar)."""
    current = keys.c.key_id == sa.bindparam("b_key_id"), keys.c.version == sa.bindparam("b_version")
    return sa.insert(key_versions).from_select(
        [c.name for c in key_versions.c],
        sa.select(
            keys.c.key_id,
            keys.c.version,
            keys.c.etag,
            keys.c.size,
            keys.c.mtime_ns,
            keys.c.last_modified,
            keys.c.sequencer,
            keys.c.discovered_at,
            sa.case((keys.c.lake_version == keys.c.version, keys.c.lake_batch_id)),
            sa.literal(now, sa.DateTime),
        ).where(*current),
    )
