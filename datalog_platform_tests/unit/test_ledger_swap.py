"""Rebuilds and compactions: files replaced in one ledger commit, rows exactly once, readers never
see a half-swapped partition.

Covers the rebuild claim (every key of the partition but those another batch holds; ingested
keys restored exactly on abort), a rebuild beside a concurrent ingest, a vanished raw object (the
rebuild keeps its rows and says so), compaction (files merged by source partition,
types widened, the manifest swapped), the fences between rebuilds and compactions, readers of
the manifest during swaps, the MSSQL rendering of the rebuild claim, and the upgrade of a ledger
created before the manifest.

Real parts: the local and the moto S3 stores, a SQLite ledger (the running PostgreSQL too for the
ledger-only tests), DuckDB writing and reading Parquet, `ingest_batch` and `compact_directory`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from datalog_platform.core.compaction import compact_directory
from datalog_platform.core.lake import read_live
from datalog_platform.core.ledger import claims, holds, outcomes, protocol, registration, swap
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import (
    ABORTED,
    CLAIMED,
    COMMITTED,
    FAILED,
    LIVE,
    PENDING,
    QUARANTINED,
    REBUILD,
    SUCCESS,
    UNROUTED,
    batches,
    create_schema,
    keys,
    lake_files,
)
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo, ObjectStore
from datalog_platform_tests.support.pipeline import LEASE_SECONDS, MAX_ATTEMPTS, TZ_OFFSET_HOURS
from datalog_platform_tests.support.raw_data import epoch_seconds, ndjson

if TYPE_CHECKING:
    from datalog_platform_tests.support.pipeline import Pipeline

REGION = "RG"
DAY = "2026-11-01"
BASE = datetime(2026, 11, 1, 0, 0, 0)  # UTC; local 08:00 on DAY
DATA = "datalog_v2"


def record(device: str, seq: int, step: timedelta = timedelta(minutes=1), **extra: object) -> str:
    epoch = epoch_seconds(BASE + seq * step)
    return json.dumps({"device_id": device, "heartbeat": epoch, "seq": seq, "temperature": 20.0 + seq, **extra})


def upload(pipeline: Pipeline, device: str, hour: int, seqs: range, bad: int = 0) -> str:
    key = f"{device}/2026110{1 if hour < 24 else 2}{hour % 24:02d}/log.json"
    lines = [record(device, s) for s in seqs] + [f"not json {device} {hour} {i}" for i in range(bad)]
    pipeline.raw.write_bytes(key, ndjson(*lines))
    return key


def ingest(pipeline: Pipeline, batch: claims.Batch | None) -> claims.Batch:
    assert batch is not None
    pipeline.ingest(batch)
    return batch


def rebuild(pipeline: Pipeline, part_date: str = DAY) -> claims.Batch:
    return pipeline.rebuild(part_date, REGION)


def seqs_of(pipeline: Pipeline) -> list[int]:
    return [r["seq"] for r in pipeline.rows(order_by="seq")]


def parquet_keys(pipeline: Pipeline, dataset: str = DATA) -> set[str]:
    return {o.key for o in pipeline.lake.list(f"{dataset}/") if o.key.endswith(".parquet")}


def live_paths(engine: sa.Engine, dataset: str = DATA) -> set[str]:
    return {f.path for f in swap.live_files(engine, dataset)}


def hourly_partition(pipeline: Pipeline, hours: int, rows_per_hour: int = 5, bad: int = 0) -> list[str]:
    """One device, `hours` keys of DAY, each ingested by its own batch (one file per run)."""
    pipeline.devices([("dev1", REGION)])
    uploaded = []
    for hour in range(hours):
        uploaded.append(upload(pipeline, "dev1", hour, range(hour * 100, hour * 100 + rows_per_hour), bad))
        pipeline.run()
    return uploaded


# ---------------------------------------------------------------------------------------------
# Rebuild


def test_rebuild_replaces_every_file_of_the_partition(pipeline: Pipeline) -> None:
    hourly_partition(pipeline, 3, bad=1)
    old_data, old_quarantine = parquet_keys(pipeline), parquet_keys(pipeline, "quarantine")
    assert len(old_data) == 3 and len(old_quarantine) == 3
    assert live_paths(pipeline.engine) == old_data
    expected = seqs_of(pipeline)
    old_batches = {k["batch_id"] for k in pipeline.key_rows().values()}

    batch = rebuild(pipeline)

    assert batch.kind == REBUILD and len(batch.keys) == 3
    new_data = parquet_keys(pipeline)
    assert new_data.isdisjoint(old_data) and parquet_keys(pipeline, "quarantine").isdisjoint(old_quarantine)
    assert all(f"part-{batch.batch_id}-" in k for k in new_data | parquet_keys(pipeline, "quarantine"))
    assert live_paths(pipeline.engine) == new_data
    assert seqs_of(pipeline) == expected  # each row once
    assert len(pipeline.rows("quarantine", order_by="raw_line")) == 3
    ledger = pipeline.key_rows()
    assert {(k["status"], k["batch_id"], k["prior_status"]) for k in ledger.values()} == {
        (SUCCESS, batch.batch_id, None)
    }
    assert sum(k["rows"] for k in ledger.values()) == len(expected)
    assert not old_batches & {k["batch_id"] for k in ledger.values()}
    with pipeline.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lake_files)).scalar_one() == len(new_data) + len(
            parquet_keys(pipeline, "quarantine")
        )  # retired rows are gone with their files


def test_rebuild_moves_rows_crossing_midnight_out_of_the_next_date_too(pipeline: Pipeline) -> None:
    """A key of DAY whose rows fall after local midnight wrote into DAY+1's directory; the
    rebuild of DAY replaces that file as well, and leaves DAY+1's own keys alone."""
    pipeline.devices([("dev1", REGION)])
    late = "dev1/2026110115/log.json"  # 15:00 UTC = 23:00 local on DAY; rows run past midnight
    lines = [record("dev1", 900 + m) for m in range(0, 120, 30)]
    pipeline.raw.write_bytes(late, ndjson(*lines))
    upload(pipeline, "dev1", 17, range(2000, 2003))  # 17:00 UTC = 01:00 local on DAY+1
    pipeline.run()
    next_day = {k for k in parquet_keys(pipeline) if "hiveperiod=2026-11-02" in k}
    assert len(next_day) == 2  # DAY's spill-over and DAY+1's own file
    expected = seqs_of(pipeline)

    batch = rebuild(pipeline)

    assert seqs_of(pipeline) == expected
    after = {k for k in parquet_keys(pipeline) if "hiveperiod=2026-11-02" in k}
    assert len(after & next_day) == 1 and len(after - next_day) == 1
    assert all(batch.batch_id in k for k in after - next_day)


def test_rebuild_beside_a_concurrent_ingest_keeps_each_row_once(pipeline: Pipeline) -> None:
    hourly_partition(pipeline, 2)
    rebuilding = swap.claim_rebuild(pipeline.engine, DAY, REGION, None, LEASE_SECONDS)
    assert rebuilding is not None and len(rebuilding.keys) == 2

    # a new key arrives and is ingested while the rebuild is still writing
    upload(pipeline, "dev1", 5, range(500, 504))
    registration.register_keys(pipeline.engine, pipeline.raw.list(), TZ_OFFSET_HOURS, REINGEST)
    newcomer = ingest(pipeline, protocol.claim_batch(pipeline.engine, DAY, REGION, 100, None, LEASE_SECONDS))
    assert len(newcomer.keys) == 1
    ingest(pipeline, rebuilding)

    assert seqs_of(pipeline) == [*range(0, 5), *range(100, 105), *range(500, 504)]
    assert any(newcomer.batch_id in p for p in live_paths(pipeline.engine))


def test_rebuild_keeps_the_rows_of_a_raw_object_gone_and_says_so(pipeline: Pipeline) -> None:
    """Raw lifecycle rules expire old objects and the lake is the record: a rebuild reads the
    objects still there again and keeps the rows of the one gone; its key keeps its status and
    rows, and the report counts it. Its file holds no other key's rows, so it stays as it is."""
    uploaded = hourly_partition(pipeline, 3)
    before = pipeline.key_rows()
    before_files = live_paths(pipeline.engine)
    pipeline.raw.delete([uploaded[1]])
    claimed = swap.claim_rebuild(pipeline.engine, DAY, REGION, None, LEASE_SECONDS)
    assert claimed is not None

    report = pipeline.ingest(claimed)

    assert (report.kept_keys, report.missing_keys, report.carried_rows) == (1, 0, 0)
    assert seqs_of(pipeline) == [*range(0, 5), *range(100, 105), *range(200, 205)]
    after = pipeline.key_rows()
    writer = before[uploaded[1]]["batch_id"]
    gone = after[uploaded[1]]
    assert (gone["status"], gone["rows"], gone["batch_id"], gone["lake_version"], gone["lake_batch_id"]) == (
        SUCCESS,
        5,
        writer,
        1,
        writer,
    )
    assert {after[k]["lake_batch_id"] for k in (uploaded[0], uploaded[2])} == {claimed.batch_id}
    kept = {p for p in before_files if writer in p}
    assert len(kept) == 1 and kept < live_paths(pipeline.engine) == parquet_keys(pipeline)
    assert all(claimed.batch_id in p for p in live_paths(pipeline.engine) - kept)


# ---------------------------------------------------------------------------------------------
# Compaction


def crowded(pipeline: Pipeline, min_files: int = 2) -> list[swap.Directory]:
    return swap.crowded_directories(pipeline.engine, min_files)


def compact(pipeline: Pipeline, directory: swap.Directory, target_bytes: int = 256 << 20) -> object:
    return compact_directory(
        pipeline.engine, pipeline.conn, pipeline.lake, directory, target_bytes, None, LEASE_SECONDS, MAX_ATTEMPTS
    )


def test_compaction_merges_a_directory_into_one_file(pipeline: Pipeline) -> None:
    hourly_partition(pipeline, 6, bad=1)
    expected, quarantined = seqs_of(pipeline), pipeline.rows("quarantine", order_by="raw_line")
    old = parquet_keys(pipeline)
    assert len(old) == 6
    directories = crowded(pipeline)
    assert [(d.dataset, d.hiveperiod, d.dstrct_code, d.part_date, d.files) for d in directories] == [
        ("datalog_v2", DAY, REGION, DAY, 6),
        ("quarantine", DAY, REGION, DAY, 6),
    ]
    assert crowded(pipeline, min_files=6) == []  # "more than" the threshold

    reports = [compact(pipeline, d) for d in directories]

    assert [(r.files_before, r.files_after) for r in reports] == [(6, 1), (6, 1)]
    assert reports[0].rows == len(expected) and reports[1].rows == 6
    (new,) = parquet_keys(pipeline)
    assert new not in old and f"part-{reports[0].batch_id}-" in new
    assert live_paths(pipeline.engine) == {new}
    assert seqs_of(pipeline) == expected
    assert pipeline.rows("quarantine", order_by="raw_line") == quarantined
    assert crowded(pipeline) == []
    # a rebuild after a compaction replaces the compacted file
    rebuilt = rebuild(pipeline)
    assert seqs_of(pipeline) == expected and all(rebuilt.batch_id in k for k in parquet_keys(pipeline))


def test_compaction_splits_by_target_size_and_keeps_rescued_values(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.devices([("dev1", REGION)])
    # DuckDB starts a new file only at a row group boundary (122,880 rows): 260,000 rows span three
    for hour in range(2):
        seqs = range(hour * 130_000, (hour + 1) * 130_000)
        lines = [record("dev1", s, step=timedelta(milliseconds=100)) for s in seqs]
        pipeline.raw.write_bytes(f"dev1/20261101{hour:02d}/log.json", ndjson(*lines))
        pipeline.run()
    # a field that is a number in one batch and text in another: the text is rescued
    pipeline.raw.write_bytes(
        "dev1/2026110105/x.json", (record("dev1", 9000, step=timedelta(seconds=1), reading=1) + "\n").encode()
    )
    pipeline.run()
    pipeline.raw.write_bytes(
        "dev1/2026110106/y.json", (record("dev1", 9001, step=timedelta(seconds=1), reading="high") + "\n").encode()
    )
    pipeline.run()
    expected = seqs_of(pipeline)
    (directory,) = crowded(pipeline)

    report = compact(pipeline, directory, target_bytes=100_000)

    assert report.files_before == 4 and report.files_after >= 2
    assert seqs_of(pipeline) == expected
    late = [
        (r["seq"], r["reading"], r["_rescued"]) for r in pipeline.rows(order_by="seq") if r["reading"] or r["_rescued"]
    ]
    assert late == [(9000, 1, None), (9001, None, '{"reading":"high"}')]
    assert all(f.rows > 0 for f in swap.live_files(pipeline.engine, DATA))


def test_rebuild_and_compaction_fence_each_other(pipeline: Pipeline) -> None:
    hourly_partition(pipeline, 3)
    (directory,) = crowded(pipeline)
    held = swap.claim_compaction(pipeline.engine, directory, None, LEASE_SECONDS)
    assert held is not None and len(held.files) == 3

    with pytest.raises(holds.PartitionBusyError, match=held.batch_id):
        swap.claim_rebuild(pipeline.engine, DAY, REGION, None, LEASE_SECONDS)
    assert {k["status"] for k in pipeline.key_rows().values()} == {SUCCESS}  # the refused claim took nothing

    protocol.abort_batch(pipeline.engine, pipeline.lake, held.batch_id, "given up", MAX_ATTEMPTS)
    rebuilding = swap.claim_rebuild(pipeline.engine, DAY, REGION, None, LEASE_SECONDS)
    assert rebuilding is not None
    assert swap.claim_compaction(pipeline.engine, directory, None, LEASE_SECONDS) is None  # all held
    ingest(pipeline, rebuilding)
    assert len(parquet_keys(pipeline)) == 1


# ---------------------------------------------------------------------------------------------
# Readers during swaps


def test_readers_of_the_manifest_never_see_a_gap_or_doubles(
    pipeline: Pipeline, duck_factory: Callable[[ObjectStore | None], duckdb.DuckDBPyConnection]
) -> None:
    """A reader queries the partition over and over while rebuilds and compactions swap its files;
    every answer has every row exactly once."""
    hourly_partition(pipeline, 8)
    expected = (len(seqs_of(pipeline)), sum(seqs_of(pipeline)))
    reader = duck_factory(pipeline.lake)
    answers: list[tuple[int, int]] = []
    states: set[frozenset[str]] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            states.add(frozenset(live_paths(pipeline.engine)))
            answers.extend(
                read_live(reader, pipeline.engine, pipeline.lake, DATA, "SELECT count(*), sum(seq) FROM live", DAY)
            )

    thread = threading.Thread(target=read)
    thread.start()
    try:
        (directory,) = crowded(pipeline)
        compact(pipeline, directory)  # 8 files -> 1
        rebuild(pipeline)
        rebuild(pipeline)
    finally:
        stop.set()
        thread.join()
    assert len(states) >= 3  # the reader saw several committed states
    assert answers and set(answers) == {expected}


# ---------------------------------------------------------------------------------------------
# The ledger alone: SQLite and PostgreSQL (conftest's `engine`)


def key_states(engine: sa.Engine) -> dict[str, tuple[object, ...]]:
    with engine.connect() as conn:
        return {
            r.key: (r.status, r.batch_id, r.attempts, r.error, r.prior_status, r.prior_batch_id)
            for r in conn.execute(sa.select(keys)).all()
        }


def test_rebuild_claim_takes_every_free_key_and_an_abort_restores_them(engine: sa.Engine, tmp_path: Path) -> None:
    registration.upsert_devices(engine, [("dev1", REGION)])
    names = [f"dev1/20261101{h:02d}/log.json" for h in range(6)] + ["stranger/2026110100/log.json"]
    registration.register_keys(engine, [ObjectInfo(n, 10, None) for n in names], TZ_OFFSET_HOURS, REINGEST)
    done = protocol.claim_batch(engine, DAY, REGION, 3, None, LEASE_SECONDS)
    assert done is not None
    protocol.commit_batch(
        engine,
        done.batch_id,
        [
            outcomes.KeyOutcome(done.keys[0].key_id, SUCCESS, rows=5),
            outcomes.KeyOutcome(done.keys[1].key_id, SUCCESS, rows=5),
            outcomes.KeyOutcome(done.keys[2].key_id, QUARANTINED, error="unreadable"),
        ],
        [protocol.LakeFile(f"{DATA}/hiveperiod={DAY}/dstrct_code={REGION}/part-{done.batch_id}-0.parquet", 10, 99)],
        10,
        0,
    )
    with engine.begin() as conn:  # one key failed for good, one is held by a running ingest
        conn.execute(sa.update(keys).where(keys.c.key == names[3]).values(status=FAILED, attempts=3, error="boom"))
    running = protocol.claim_batch(engine, DAY, REGION, 1, None, LEASE_SECONDS)
    assert running is not None and running.keys[0].key == names[4]
    before = key_states(engine)

    rebuilding = swap.claim_rebuild(engine, DAY, REGION, "run-1", LEASE_SECONDS)

    assert rebuilding is not None
    assert sorted(k.key for k in rebuilding.keys) == sorted([*names[:4], names[5]])
    held = key_states(engine)
    assert held[names[4]] == before[names[4]] and held[names[6]][0] == UNROUTED
    assert {held[n][:2] for n in rebuilding_keys(rebuilding)} == {(CLAIMED, rebuilding.batch_id)}
    assert held[names[0]][4:] == (SUCCESS, done.batch_id) and held[names[2]][4] == QUARANTINED
    with engine.connect() as conn:
        assert conn.execute(sa.select(lake_files.c.retire_by, lake_files.c.state)).all() == [
            (rebuilding.batch_id, LIVE)
        ]
    assert registration.requeue(engine, QUARANTINED) == 0  # a held key is not requeued under the rebuild

    assert protocol.abort_batch(engine, LocalStore(tmp_path / "lake"), rebuilding.batch_id, "stopped", MAX_ATTEMPTS)

    after = key_states(engine)
    for name in names[:3] + [names[4], names[6]]:
        assert after[name] == before[name]
    assert after[names[3]] == (FAILED, rebuilding.batch_id, 4, "stopped", None, None)  # not ingested before
    assert after[names[5]] == (PENDING, rebuilding.batch_id, 1, "stopped", None, None)
    with engine.connect() as conn:
        assert conn.execute(sa.select(lake_files.c.retire_by, lake_files.c.state)).all() == [(None, LIVE)]
        assert conn.execute(sa.select(batches.c.status).where(batches.c.batch_id == rebuilding.batch_id)).scalar() == (
            ABORTED
        )


def rebuilding_keys(batch: claims.Batch) -> list[str]:
    return [k.key for k in batch.keys]


def test_rebuild_of_a_partition_without_keys_claims_nothing(engine: sa.Engine) -> None:
    assert swap.claim_rebuild(engine, DAY, REGION, None, LEASE_SECONDS) is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one() == 0


def test_mssql_rebuild_claim_renders_with_bind_params(tmp_path: Path) -> None:
    """Capture the statements claim_rebuild really executes, then compile them for MSSQL."""
    eng = ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    executed: list[object] = []
    sa.event.listen(eng, "before_execute", lambda conn, stmt, *rest: executed.append(stmt))
    swap.claim_rebuild(eng, DAY, REGION, None, LEASE_SECONDS)
    rendered = {
        str(s.compile(dialect=mssql.dialect())).split(" ", 2)[1]: s for s in executed if isinstance(s, sa.Update)
    }
    claim = rendered["keys"].compile(dialect=mssql.dialect())
    sql = str(claim)
    assert "OUTPUT inserted.key_id, inserted.[key], inserted.size" in sql
    assert "prior_status=keys.status" in sql.replace(" ", "") and "prior_batch_id=keys.batch_id" in sql.replace(" ", "")
    for literal in (DAY, REGION, CLAIMED, SUCCESS):
        assert literal not in sql
    values = [v for p in claim.params.values() for v in (p if isinstance(p, list) else [p])]
    assert {DAY, REGION, CLAIMED, PENDING, FAILED, SUCCESS, QUARANTINED} <= set(values)
    mark = rendered["lake_files"].compile(dialect=mssql.dialect())
    assert "retire_by IS NULL" in str(mark) and LIVE not in str(mark)


def test_a_ledger_from_before_the_manifest_is_upgraded(tmp_path: Path) -> None:
    """Tables as the first ledgers had them (no batch kind, no prior status, no manifest) and a
    committed batch: create_schema adds the columns and records the batch's files as LIVE."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = sa.MetaData()
    for table in (batches, keys):
        dropped = {"kind", "prior_status", "prior_batch_id"}
        columns = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in table.columns]
        sa.Table(table.name, old, *[c for c in columns if c.name not in dropped])
    old.create_all(eng)
    path = f"{DATA}/hiveperiod={DAY}/dstrct_code={REGION}/part-b1-0.parquet"
    with eng.begin() as conn:
        conn.execute(
            sa.insert(old.tables["batches"]).values(
                batch_id="b1",
                part_date=DAY,
                dstrct_code=REGION,
                status=COMMITTED,
                lease_until=BASE,
                files=json.dumps([path]),
                keys=1,
                created_at=BASE,
                committed_at=BASE,
            )
        )

    create_schema(eng)
    create_schema(eng)  # idempotent

    assert [f.path for f in swap.live_files(eng, DATA, DAY, REGION)] == [path]
    columns = {c["name"] for c in sa.inspect(eng).get_columns("keys")}
    assert {"prior_status", "prior_batch_id"} <= columns
    assert "kind" in {c["name"] for c in sa.inspect(eng).get_columns("batches")}
    eng.dispose()
