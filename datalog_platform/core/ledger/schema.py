"""Ledger tables (SQLAlchemy Core): one schema for MSSQL, PostgreSQL and SQLite."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PENDING = "PENDING"
CLAIMED = "CLAIMED"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
QUARANTINED = "QUARANTINED"
UNROUTED = "UNROUTED"
KEY_STATUSES = (PENDING, CLAIMED, SUCCESS, FAILED, QUARANTINED, UNROUTED)

WRITING = "WRITING"
ABORTING = "ABORTING"
COMMITTED = "COMMITTED"
ABORTED = "ABORTED"

# Batch kinds: an ingest of pending keys, a rebuild of a whole partition, a compaction of files,
# a partition of a dataset computed from the lake.
INGEST = "INGEST"
REBUILD = "REBUILD"
COMPACT = "COMPACT"
DERIVE = "DERIVE"

# Lake file states: LIVE files are the dataset; RETIRED ones were replaced and are being deleted.
LIVE = "LIVE"
RETIRED = "RETIRED"

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(255), primary_key=True),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

keys = sa.Table(
    "keys",
    metadata,
    sa.Column("key_id", _BigId, primary_key=True, autoincrement=True),
    # VARCHAR(1024) keeps the unique index within MSSQL's 1,700-byte limit for S3's longest keys.
    sa.Column("key", sa.String(1024), nullable=False, unique=True),
    sa.Column("etag", sa.String(128)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("device_id", sa.String(255), nullable=False),
    sa.Column("key_hour", sa.DateTime, nullable=False),
    sa.Column("dstrct_code", sa.String(64)),
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("batch_id", sa.String(36)),
    # While a rebuild holds a key that was already ingested: its status and batch before, restored
    # if the rebuild aborts.
    sa.Column("prior_status", sa.String(16)),
    sa.Column("prior_batch_id", sa.String(36)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("rows", sa.BigInteger),
    sa.Column("quarantined_lines", sa.BigInteger),
    # Valid rows of the key not written because the partition already held the same record.
    sa.Column("duplicate_rows", sa.BigInteger),
    sa.Column("discovered_at", sa.DateTime, nullable=False),
    sa.Column("done_at", sa.DateTime),
    sa.Index("ix_keys_claim", "status", "dstrct_code", "part_date", "key_id"),
)

# Discovery asks, every tick, for each device's latest hour. Where the ledger keeps summaries
# (`key_counts`; see COUNTED_DIALECTS) a trigger on inserts keeps them in `device_hours`; elsewhere
# (MSSQL) they are one seek a device in this index, which every claim and commit would otherwise
# have to write a thousand new entries into.
sa.Index("ix_keys_device_hour", keys.c.device_id, keys.c.key_hour).ddl_if(
    callable_=lambda _ddl, _target, _bind, **kw: not counts_maintained(kw["dialect"].name)
)
_UNCOUNTED_INDEXES = {"keys": ("ix_keys_device_hour",)}

# A claim, a commit or an abort changes the status of a thousand keys, and PostgreSQL writes each
# changed row's new version into every index of `keys` (a changed indexed column rules out an
# update in place), except the partial indexes whose condition the new version fails. So the two
# indexes that need only some keys are partial where the planner can use them with the bound
# parameters of our statements (PostgreSQL; SQLite for IS NOT NULL only). MSSQL, whose plans for
# parameterised statements may not rely on a filtered index, gets them whole.
# The keys of a batch (commit, abort, rebuild): never a key without one.
_HAS_BATCH = keys.c.batch_id.isnot(None)
sa.Index("ix_keys_batch_id", keys.c.batch_id, postgresql_where=_HAS_BATCH, sqlite_where=_HAS_BATCH)
# The discovery sensor reports, every tick, how long the oldest PENDING key has waited: a seek.
sa.Index("ix_keys_pending_age", keys.c.status, keys.c.discovered_at, postgresql_where=keys.c.status == PENDING)
# Indexes of earlier ledgers that `create_schema` drops: replaced by the partial ones above, or
# (device_id, status) read by no query.
_DROPPED_INDEXES = {"keys": ("ix_keys_batch", "ix_keys_status_age", "ix_keys_device")}

# How many keys each (part_date, region, status) holds, with their attempts and rows: what the
# sensors and `datalog ledger status` read instead of counting millions of keys on every tick.
# Triggers on `keys` keep it exact in the transaction that changes a key (PostgreSQL and SQLite;
# see `create_schema`). UNROUTED keys have no region: their row has the region ''.
key_counts = sa.Table(
    "key_counts",
    metadata,
    sa.Column("part_date", sa.String(10), primary_key=True),
    sa.Column("dstrct_code", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("keys", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    # The sum of the keys' ids: with `keys` and `attempts`, the fingerprint of a partition's
    # PENDING keys (new keys have higher ids than all before them, so no exchange of keys leaves
    # count and sum as they were). NULL only in a ledger being upgraded, until it is refilled.
    sa.Column("key_ids", sa.BigInteger),
)

# Each device's newest key hour, kept by a trigger on inserts into `keys` (keys never change
# their device or hour; a deleted key's hour stays). Devices outside the registry (UNROUTED keys)
# included.
device_hours = sa.Table(
    "device_hours",
    metadata,
    sa.Column("device_id", sa.String(255), primary_key=True),
    sa.Column("latest_hour", sa.DateTime, nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # NULL in ledgers created before kinds existed: an ingest.
    sa.Column("kind", sa.String(16)),
    sa.Column("lease_until", sa.DateTime, nullable=False),
    # Write intent: the lake directories this batch may write `part-{batch_id}-*` files into.
    sa.Column("target_dirs", sa.Text),
    sa.Column("files", sa.Text),
    sa.Column("keys", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("quarantined_lines", sa.BigInteger),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("committed_at", sa.DateTime),
    sa.Index("ix_batches_status", "status", "lease_until"),
)

# The manifest: every Parquet file of the lake that a committed batch wrote, one row each. A
# rebuild or compaction swaps files in one transaction here; readers that list LIVE files never
# see a partition half-replaced.
lake_files = sa.Table(
    "lake_files",
    metadata,
    sa.Column("file_id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String(512), nullable=False, unique=True),
    sa.Column("batch_id", sa.String(36), nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("hiveperiod", sa.String(10), nullable=False),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    # The partition whose keys the rows came from (rows crossing midnight live in the next date).
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("state", sa.String(16), nullable=False),
    # A WRITING rebuild or compaction that will retire this file when it commits.
    sa.Column("retire_by", sa.String(36)),
    sa.Column("committed_at", sa.DateTime, nullable=False),
    sa.Column("retired_at", sa.DateTime),
    sa.Index("ix_lake_files_dir", "dataset", "hiveperiod", "dstrct_code", "state"),
    sa.Index("ix_lake_files_source", "part_date", "dstrct_code", "state"),
    sa.Index("ix_lake_files_retire", "retire_by"),
    # recovery looks for RETIRED files left undeleted on every claim: a seek, not a scan
    sa.Index("ix_lake_files_state", "state"),
)

# The record fields of each dataset: the type a field's column has in the lake and where it was
# first seen. A value of another type is cast to it where that is lossless, otherwise it is kept
# in the row's `_rescued` column; numbers only ever widen (BIGINT -> DOUBLE).
schema_fields = sa.Table(
    "schema_fields",
    metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("field", sa.String(400), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("first_key", sa.String(1024), nullable=False),
    sa.Column("first_batch_id", sa.String(36), nullable=False),
    # The partition of the batch that first carried it, for the day's schema changes.
    sa.Column("first_part_date", sa.String(10), nullable=False),
    sa.Column("first_dstrct_code", sa.String(64), nullable=False),
    sa.Column("first_seen_at", sa.DateTime, nullable=False),
    # The last widening of the type: from what, by which batch, when.
    sa.Column("previous_type", sa.Text),
    sa.Column("changed_by_batch_id", sa.String(36)),
    sa.Column("changed_part_date", sa.String(10)),
    sa.Column("changed_dstrct_code", sa.String(64)),
    sa.Column("changed_at", sa.DateTime),
)


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file a batch wrote: its path in the lake (`dataset/hiveperiod=D/dstrct_code=R/name`)."""

    path: str
    rows: int | None
    bytes: int | None

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def hiveperiod(self) -> str:
        return self.path.split("hiveperiod=", 1)[1][:10]


# Columns added since the first ledgers were created; `create_schema` adds them where missing.
_ADDED_COLUMNS = (
    (batches, batches.c.kind),
    (keys, keys.c.prior_status),
    (keys, keys.c.prior_batch_id),
    (keys, keys.c.duplicate_rows),
    (key_counts, key_counts.c.key_ids),
)


def create_schema(engine: sa.Engine) -> None:
    """Create missing tables and indexes; upgrade a ledger from before batch kinds, the file
    manifest, the key counts and the indexes added since."""
    inspector = sa.inspect(engine)
    fresh = not inspector.has_table("lake_files")
    existing = {name: {i["name"] for i in inspector.get_indexes(name)} for name in inspector.get_table_names()}
    metadata.create_all(engine)
    counted = counts_maintained(engine.dialect.name)
    # counts from before `key_ids`: refilled, their triggers replaced
    stale_counts = inspector.has_table("key_counts") and "key_ids" not in {
        c["name"] for c in inspector.get_columns("key_counts")
    }
    for table in metadata.sorted_tables:
        for index in table.indexes:
            if counted and index.name in _UNCOUNTED_INDEXES.get(table.name, ()):
                continue
            if table.name in existing and index.name not in existing[table.name]:
                with engine.begin() as conn:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=engine.dialect.name != "mssql"))
    for table, column in _ADDED_COLUMNS:
        if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
            kind = column.type.compile(engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD {column.name} {kind}"))
    if fresh:
        _fill_manifest(engine)
    if counted:
        _install_counts(engine, replace=stale_counts)
    dropped = {
        t: (*names, *(_UNCOUNTED_INDEXES.get(t, ()) if counted else ())) for t, names in _DROPPED_INDEXES.items()
    }
    for table_name, names in dropped.items():
        for name in sorted(set(names) & existing.get(table_name, set())):
            drop = f"DROP INDEX {name} ON {table_name}" if engine.dialect.name == "mssql" else f"DROP INDEX {name}"
            with engine.begin() as conn:
                conn.execute(sa.text(drop))


# The dialects whose ledgers keep `key_counts`. MSSQL refuses a trigger on `keys`: its claim
# (`UPDATE ... OUTPUT inserted...` without INTO) cannot target a table with enabled triggers, so an
# MSSQL ledger counts its keys with aggregate queries.
COUNTED_DIALECTS = ("postgresql", "sqlite")


def counts_maintained(dialect_name: str) -> bool:
    return dialect_name in COUNTED_DIALECTS


_COUNT_COLUMNS = "part_date, dstrct_code, status, keys, attempts, rows, key_ids"
_COUNT_GROUP = "part_date, coalesce(dstrct_code, ''), status"
_COUNT_FILL = (
    f"INSERT INTO key_counts ({_COUNT_COLUMNS}) "
    f"SELECT {_COUNT_GROUP}, count(*), sum(attempts), sum(coalesce(rows, 0)), sum(key_id) FROM keys "
    f"GROUP BY {_COUNT_GROUP}"
)

# PostgreSQL: one statement-level trigger per event; the rows a statement inserted, changed or
# deleted are summed per group and added in group order (so two writers lock shared rows in the
# same order and cannot deadlock on them).
_PG_NEW = f"SELECT {_COUNT_GROUP}, 1, attempts, coalesce(rows, 0), key_id FROM new_keys"
_PG_OLD = f"SELECT {_COUNT_GROUP}, -1, -attempts, -coalesce(rows, 0), -key_id FROM old_keys"


def _pg_add(source: str) -> str:
    return f"""
    INSERT INTO key_counts AS c ({_COUNT_COLUMNS})
    SELECT part_date, dstrct_code, status, sum(n), sum(a), sum(r), sum(k)
    FROM ({source}) AS d (part_date, dstrct_code, status, n, a, r, k)
    GROUP BY part_date, dstrct_code, status
    HAVING sum(n) <> 0 OR sum(a) <> 0 OR sum(r) <> 0 OR sum(k) <> 0
    ORDER BY part_date, dstrct_code, status
    ON CONFLICT (part_date, dstrct_code, status) DO UPDATE
    SET keys = c.keys + excluded.keys, attempts = c.attempts + excluded.attempts, rows = c.rows + excluded.rows,
        key_ids = c.key_ids + excluded.key_ids;"""


_PG_COUNT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION key_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN{_pg_add(_PG_NEW)}
    ELSIF TG_OP = 'DELETE' THEN{_pg_add(_PG_OLD)}
    ELSE{_pg_add(f"{_PG_NEW} UNION ALL {_PG_OLD}")}
    END IF;
    RETURN NULL;
END
$body$
"""
_PG_COUNT_TRIGGERS = {
    "key_counts_insert": "AFTER INSERT ON keys REFERENCING NEW TABLE AS new_keys",
    "key_counts_update": "AFTER UPDATE ON keys REFERENCING OLD TABLE AS old_keys NEW TABLE AS new_keys",
    "key_counts_delete": "AFTER DELETE ON keys REFERENCING OLD TABLE AS old_keys",
}
_HOURS_FILL = (
    "INSERT INTO device_hours (device_id, latest_hour) SELECT device_id, max(key_hour) FROM keys GROUP BY device_id"
)
# Each inserting statement moves its devices' latest hours forward, devices in order (no deadlock).
_PG_HOURS_FUNCTION = """
CREATE OR REPLACE FUNCTION device_hours_apply() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    INSERT INTO device_hours AS h (device_id, latest_hour)
    SELECT device_id, max(key_hour) FROM new_keys GROUP BY device_id ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE SET latest_hour = excluded.latest_hour
    WHERE excluded.latest_hour > h.latest_hour;
    RETURN NULL;
END
$body$
"""
_HOURS_TRIGGER = "device_hours_insert"
_PG_HOURS_WHEN = "AFTER INSERT ON keys REFERENCING NEW TABLE AS new_keys"
_SQLITE_HOURS_BODY = (
    "AFTER INSERT ON keys BEGIN "
    "INSERT INTO device_hours (device_id, latest_hour) VALUES (NEW.device_id, NEW.key_hour) "
    "ON CONFLICT (device_id) DO UPDATE SET latest_hour = excluded.latest_hour "
    "WHERE excluded.latest_hour > latest_hour; "
    "END"
)
_TRIGGERS = (*_PG_COUNT_TRIGGERS, _HOURS_TRIGGER)


def _sqlite_add(row: str, sign: str) -> str:
    return (
        f"INSERT INTO key_counts ({_COUNT_COLUMNS}) VALUES ({row}.part_date, coalesce({row}.dstrct_code, ''), "
        f"{row}.status, {sign}1, {sign}{row}.attempts, {sign}coalesce({row}.rows, 0), {sign}{row}.key_id) "
        "ON CONFLICT (part_date, dstrct_code, status) DO UPDATE SET keys = keys + excluded.keys, "
        "attempts = attempts + excluded.attempts, rows = rows + excluded.rows, key_ids = key_ids + excluded.key_ids;"
    )


# SQLite: row-level triggers (its only kind); writers are serialised, so no order is needed.
_SQLITE_COUNT_TRIGGERS = {
    "key_counts_insert": f"AFTER INSERT ON keys BEGIN {_sqlite_add('NEW', '')} END",
    "key_counts_update": (
        "AFTER UPDATE OF part_date, dstrct_code, status, attempts, rows ON keys "
        f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '')} END"
    ),
    "key_counts_delete": f"AFTER DELETE ON keys BEGIN {_sqlite_add('OLD', '-')} END",
}


def _counts_installed(conn: sa.Connection) -> bool:
    if conn.dialect.name == "postgresql":
        found = sa.text("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('keys') AND tgname = ANY(:names)")
    else:
        found = sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN :names").bindparams(
            sa.bindparam("names", expanding=True)
        )
    return conn.execute(found, {"names": list(_TRIGGERS)}).scalar_one() == len(_TRIGGERS)


def _install_counts(engine: sa.Engine, replace: bool = False) -> None:
    """Fill `key_counts` and `device_hours` from the keys and create the triggers that keep them (or,
    with `replace`, those of an older version), in one transaction that no write to `keys` can
    interleave with (a lock on PostgreSQL, the single writer on SQLite)."""
    with engine.connect() as conn:
        if not replace and _counts_installed(conn):
            return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE"))
        if not replace and _counts_installed(conn):
            return
        conn.execute(sa.delete(key_counts))
        conn.execute(sa.text(_COUNT_FILL))
        conn.execute(sa.delete(device_hours))
        conn.execute(sa.text(_HOURS_FILL))
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(_PG_COUNT_FUNCTION))
            conn.execute(sa.text(_PG_HOURS_FUNCTION))
            triggers = {name: (when, "key_counts_apply") for name, when in _PG_COUNT_TRIGGERS.items()}
            triggers[_HOURS_TRIGGER] = (_PG_HOURS_WHEN, "device_hours_apply")
            for name, (when, function) in triggers.items():
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON keys"))
                conn.execute(sa.text(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"))
        else:
            for name, body in {**_SQLITE_COUNT_TRIGGERS, _HOURS_TRIGGER: _SQLITE_HOURS_BODY}.items():
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
                conn.execute(sa.text(f"CREATE TRIGGER {name} {body}"))


def _fill_manifest(engine: sa.Engine) -> None:
    """Record the files of batches committed before the manifest existed as LIVE."""
    with engine.begin() as conn:
        committed = conn.execute(
            sa.select(
                batches.c.batch_id, batches.c.part_date, batches.c.dstrct_code, batches.c.files, batches.c.committed_at
            ).where(batches.c.status == COMMITTED)
        ).all()
        rows = [
            {
                "path": f.path,
                "batch_id": b.batch_id,
                "dataset": f.dataset,
                "hiveperiod": f.hiveperiod,
                "dstrct_code": b.dstrct_code,
                "part_date": b.part_date,
                "state": LIVE,
                "committed_at": b.committed_at,
            }
            for b in committed
            for f in (LakeFile(path, None, None) for path in json.loads(b.files or "[]"))
        ]
        if rows:
            conn.execute(sa.insert(lake_files), rows)
