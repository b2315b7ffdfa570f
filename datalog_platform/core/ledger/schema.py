"""Ledger tables (SQLAlchemy Core): one schema for MSSQL, PostgreSQL and SQLite."""

from __future__ import annotations

import json

import sqlalchemy as sa

from datalog_platform.core.ledger.records import LakeFile
from datalog_platform.core.ledger.summaries import install_summaries

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PENDING = "PENDING"
CLAIMED = "CLAIMED"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
QUARANTINED = "QUARANTINED"
UNROUTED = "UNROUTED"
# The object was gone from the raw store when its batch went to read it (rows of a version read
# before, if any, stay in the lake); its next sighting makes it PENDING again.
MISSING = "MISSING"
# A new version of an ingested object, held by the `quarantine` rewrite policy until a person
# releases it (`datalog ledger release`); the lake keeps the rows of the version read before.
HELD = "HELD"
KEY_STATUSES = (PENDING, CLAIMED, SUCCESS, FAILED, QUARANTINED, UNROUTED, MISSING, HELD)

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
    # The newest version of the object seen (store.Version: size with S3's ETag or a local file's
    # mtime), when its store says it was written, and the S3 event sequencer that reported it.
    sa.Column("etag", sa.String(128)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger),
    sa.Column("last_modified", sa.DateTime),
    sa.Column("sequencer", sa.String(64)),
    # Versions are numbered 1, 2, ... as they are seen; `discovered_at` is when the newest was.
    sa.Column("version", sa.Integer, nullable=False, default=1, server_default=sa.text("1")),
    # The version whose rows (and quarantine records) the lake holds, and the batch that wrote them;
    # NULL: none. An ingest of a key that has one replaces those rows instead of adding to them.
    sa.Column("lake_version", sa.Integer),
    sa.Column("lake_batch_id", sa.String(36)),
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

# The versions of each key that a newer one replaced: the newest is the key's own row.
key_versions = sa.Table(
    "key_versions",
    metadata,
    sa.Column("key_id", sa.BigInteger, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("etag", sa.String(128)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger),
    sa.Column("last_modified", sa.DateTime),
    sa.Column("sequencer", sa.String(64)),
    sa.Column("seen_at", sa.DateTime, nullable=False),
    # The committed batch that wrote this version's rows; NULL: never written (replaced first).
    sa.Column("batch_id", sa.String(36)),
    sa.Column("replaced_at", sa.DateTime, nullable=False),
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
    # The sum of the keys' ids: with `keys`, `attempts` and `versions`, the fingerprint of a
    # partition's PENDING keys (new keys have higher ids than all before them, so no exchange of
    # keys leaves count and sum as they were; a new version of a key raises `versions`). NULL only
    # in a ledger being upgraded, until it is refilled.
    sa.Column("key_ids", sa.BigInteger),
    sa.Column("versions", sa.BigInteger),
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


# Columns added since the first ledgers were created; `create_schema` adds them where missing.
_ADDED_COLUMNS = (
    (batches, batches.c.kind),
    (keys, keys.c.prior_status),
    (keys, keys.c.prior_batch_id),
    (keys, keys.c.duplicate_rows),
    (keys, keys.c.mtime_ns),
    (keys, keys.c.last_modified),
    (keys, keys.c.sequencer),
    (keys, keys.c.version),
    (keys, keys.c.lake_version),
    (keys, keys.c.lake_batch_id),
    (key_counts, key_counts.c.key_ids),
    (key_counts, key_counts.c.versions),
)
# The summary columns whose absence means the counts and their triggers are from an older version.
_COUNT_SUMS = ("key_ids", "versions")


def create_schema(engine: sa.Engine) -> None:
    """Create missing tables and indexes; upgrade a ledger from before batch kinds, the file
    manifest, the key counts and the indexes added since."""
    inspector = sa.inspect(engine)
    fresh = not inspector.has_table("lake_files")
    existing = {name: {i["name"] for i in inspector.get_indexes(name)} for name in inspector.get_table_names()}
    metadata.create_all(engine)
    counted = counts_maintained(engine.dialect.name)
    # counts from before `key_ids` or `versions`: refilled, their triggers replaced
    stale_counts = inspector.has_table("key_counts") and not set(_COUNT_SUMS) <= {
        c["name"] for c in inspector.get_columns("key_counts")
    }
    for table in metadata.sorted_tables:
        for index in table.indexes:
            if counted and index.name in _UNCOUNTED_INDEXES.get(table.name, ()):
                continue
            if table.name in existing and index.name not in existing[table.name]:
                with engine.begin() as conn:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=engine.dialect.name != "mssql"))
    added = []
    for table, column in _ADDED_COLUMNS:
        if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
            kind = column.type.compile(engine.dialect)
            if column.server_default is not None:
                kind += f" NOT NULL DEFAULT {column.server_default.arg.text}"
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD {column.name} {kind}"))
            added.append(column)
    if keys.c.lake_version in added:
        with engine.begin() as conn:
            _fill_lake_versions(conn)
    if fresh:
        _fill_manifest(engine)
    if counted:
        install_summaries(engine, replace=stale_counts)
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


def _fill_lake_versions(conn: sa.Connection) -> None:
    """A ledger from before versions: every key whose outcome a batch committed (or that a
    rebuild now holds, with such an outcome before) has its first version in the lake."""
    ingested = (SUCCESS, QUARANTINED)
    conn.execute(
        sa.update(keys).where(keys.c.status.in_(ingested)).values(lake_version=1, lake_batch_id=keys.c.batch_id)
    )
    conn.execute(
        sa.update(keys)
        .where(keys.c.status == CLAIMED, keys.c.prior_status.in_(ingested))
        .values(lake_version=1, lake_batch_id=keys.c.prior_batch_id)
    )


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
