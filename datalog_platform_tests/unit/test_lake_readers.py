"""The lake is readable, with hive partitioning, by pyarrow, DuckDB, Polars and Spark.

One small lake is built through the real pipeline (generator -> SQLite ledger -> DuckDB ingest ->
local Parquet files). Every expected figure comes from the generator's summary, the ledger or the
generator's own rule for timestamps, never from one of the readers under test. Spark runs as one
local[1] session per module, bound to 127.0.0.1 with its UI off: it needs a Java 17+ runtime.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from pyspark.sql import SparkSession
from pyspark.sql import types as st

from datalog_platform.core.generate import GenerateSummary, generate
from datalog_platform.core.ingest import ingest_batch
from datalog_platform.core.ledger import protocol, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import keys
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore
from datalog_platform_tests.support.pipeline import reader_for
from datalog_platform_tests.support.raw_data import good_records

DATASET = "datalog_v2"
QUARANTINE = "quarantine"
TZ_OFFSET_HOURS = 8
START = datetime(2026, 11, 1, 10)  # 18:00 local: 20 hours of logs span two local dates
ROWS_PER_FILE = 30
READERS = ("pyarrow", "duckdb", "polars", "spark")

# Normalised column kinds; each reader's types are mapped onto these.
STRING, DOUBLE, INT64, DATE, TIMESTAMP = "string", "double", "int64", "date", "timestamp"
SPARK_LTZ = "timestamp(spark, session time zone)"
STATUS = "struct<battery,rssi>"
EXPECTED_KINDS = {
    "device_id": {STRING},
    "heartbeat": {STRING},
    "temperature": {DOUBLE},
    "status": {STATUS},
    "datetime_wita": {TIMESTAMP},
    "source_file": {STRING},
    "dstrct_code": {STRING},
    "hiveperiod": {STRING, DATE},  # partition values are typed by inference (DATE in DuckDB/Polars/Spark)
}
QUARANTINE_KINDS = {
    "source_file": {STRING},
    "line_number": {INT64},
    "raw_line": {STRING},
    "reason": {STRING},
    "batch_id": {STRING},
    "dstrct_code": {STRING},
    "hiveperiod": {STRING, DATE},
}


@dataclass(frozen=True)
class Lake:
    root: Path
    raw: LocalStore
    summary: GenerateSummary
    rows_by_partition: dict[tuple[str, str], int]  # ledger: (part_date, dstrct_code) -> good rows
    bad_by_partition: dict[tuple[str, str], int]  # ledger: (part_date, dstrct_code) -> quarantined lines
    key_statuses: Counter[str]

    def path(self, dataset: str) -> Path:
        return self.root / dataset

    def files(self, dataset: str) -> list[Path]:
        return sorted(self.path(dataset).rglob("*.parquet"))


@pytest.fixture(scope="module")
def readers_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A small lake written by the real pipeline, in-process, with its ledger's figures."""
    tmp = tmp_path_factory.mktemp("readers")
    raw, lake_store = LocalStore(tmp / "raw"), LocalStore(tmp / "lake")
    summary = generate(raw, devices=6, hours=20, rows=ROWS_PER_FILE, seed=3, bad_file_share=0.2, start=START)
    engine = ledger_engine(f"sqlite:///{tmp}/ledger.db")
    registration.upsert_devices(engine, summary.devices)
    registration.register_keys(engine, raw.list(), TZ_OFFSET_HOURS, REINGEST)
    for part in registration.pending_partitions(engine):
        batch = protocol.claim_batch(engine, part.part_date, part.dstrct_code, 1000, "test", 60)
        assert batch is not None, part
        ingest_batch(engine, reader_for(raw), raw, lake_store, batch, TZ_OFFSET_HOURS, 60, 3, REINGEST)
    with engine.connect() as db:
        ledger = db.execute(
            sa.select(keys.c.part_date, keys.c.dstrct_code, keys.c.status, keys.c.rows, keys.c.quarantined_lines)
        ).all()
    engine.dispose()
    rows: Counter[tuple[str, str]] = Counter()
    bad: Counter[tuple[str, str]] = Counter()
    for r in ledger:
        rows[(r.part_date, r.dstrct_code)] += r.rows or 0
        bad[(r.part_date, r.dstrct_code)] += r.quarantined_lines or 0
    return Lake(
        root=tmp / "lake",
        raw=raw,
        summary=summary,
        rows_by_partition={k: v for k, v in rows.items() if v},
        bad_by_partition={k: v for k, v in bad.items() if v},
        key_statuses=Counter(r.status for r in ledger),
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        pytest.fail("the Spark reader test needs a Java 17+ runtime (java on PATH or JAVA_HOME)")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("datalog-readers-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


# -- readers: each returns (column kinds, rows as dicts); hive columns included ----------------------


@dataclass(frozen=True)
class Read:
    kinds: dict[str, str]
    rows: list[dict[str, Any]]


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _arrow_kind(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return STRING
    if pa.types.is_float64(t):
        return DOUBLE
    if pa.types.is_int64(t):
        return INT64
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_timestamp(t):
        return TIMESTAMP if t.tz is None else f"timestamp with time zone {t.tz}"
    if pa.types.is_struct(t):
        return f"struct<{','.join(t.field(i).name for i in range(t.num_fields))}>"
    return str(t)


def read_pyarrow(path: Path) -> Read:
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    return Read({f.name: _arrow_kind(f.type) for f in dataset.schema}, dataset.to_table().to_pylist())


_DUCK_KINDS = {"varchar": STRING, "double": DOUBLE, "bigint": INT64, "date": DATE, "timestamp": TIMESTAMP}


def _duck_kind(t: duckdb.typing.DuckDBPyType) -> str:
    if t.id == "struct":
        return f"struct<{','.join(name for name, _ in t.children)}>"
    return _DUCK_KINDS.get(t.id, t.id)


def read_duckdb(path: Path) -> Read:
    conn = duckdb.connect()
    try:
        rel = conn.sql(f"SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)")
        kinds = {name: _duck_kind(t) for name, t in zip(rel.columns, rel.types, strict=True)}
        rows = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    finally:
        conn.close()
    return Read(kinds, rows)


def _polars_kind(t: pl.DataType) -> str:
    if isinstance(t, pl.Struct):
        return f"struct<{','.join(f.name for f in t.fields)}>"
    if isinstance(t, pl.Datetime):
        return TIMESTAMP if t.time_zone is None else f"timestamp with time zone {t.time_zone}"
    return {pl.String: STRING, pl.Float64: DOUBLE, pl.Int64: INT64, pl.Date: DATE}.get(t.base_type(), str(t))


def read_polars(path: Path) -> Read:
    frame = pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True).collect()
    return Read({name: _polars_kind(t) for name, t in frame.schema.items()}, frame.to_dicts())


def _spark_kind(t: st.DataType) -> str:
    if isinstance(t, st.StructType):
        return f"struct<{','.join(t.fieldNames())}>"
    if isinstance(t, st.TimestampNTZType):
        return TIMESTAMP
    if isinstance(t, st.TimestampType):
        return SPARK_LTZ
    simple = {st.StringType: STRING, st.DoubleType: DOUBLE, st.LongType: INT64, st.DateType: DATE}
    return simple.get(type(t), t.simpleString())


def read_spark(session: SparkSession, path: Path) -> Read:
    frame = session.read.parquet(str(path))  # partition discovery: hiveperiod=/dstrct_code= directories
    kinds = {f.name: _spark_kind(f.dataType) for f in frame.schema.fields}
    # A TimestampType (instant) would come back converted to the Python process's zone; read it as
    # text in the session's zone (UTC) instead, so the wall-clock value is what gets compared.
    ltz = [name for name, kind in kinds.items() if kind == SPARK_LTZ]
    for name in ltz:
        frame = frame.withColumn(name, frame[name].cast("string"))
    rows = [row.asDict(recursive=True) for row in frame.collect()]
    for row in rows:
        for name in ltz:
            row[name] = None if row[name] is None else datetime.fromisoformat(row[name])
    return Read(kinds, rows)


@pytest.fixture(scope="module")
def read(request: pytest.FixtureRequest, readers_lake: Lake) -> Callable[[str, str], Read]:
    """read(reader, dataset): memoised, so each reader reads each dataset once per module."""
    cache: dict[tuple[str, str], Read] = {}

    def _read(reader: str, dataset: str) -> Read:
        if (reader, dataset) not in cache:
            path = readers_lake.path(dataset)
            if reader == "spark":
                cache[reader, dataset] = read_spark(request.getfixturevalue("spark"), path)
            else:
                cache[reader, dataset] = {"pyarrow": read_pyarrow, "duckdb": read_duckdb, "polars": read_polars}[
                    reader
                ](path)
        return cache[reader, dataset]

    return _read


def day(value: str | date) -> str:
    """A hive partition value as 'YYYY-MM-DD' whether the reader typed it as text or DATE."""
    return value.isoformat() if isinstance(value, date) else value


def partition_counts(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return dict(Counter((day(r["hiveperiod"]), r["dstrct_code"]) for r in rows))


def canonical(row: dict[str, Any]) -> tuple[Any, ...]:
    """A good row as a reader-independent tuple (struct as a pair, partition date as text)."""
    status = row["status"]
    return (
        row["source_file"],
        row["seq"],
        row["device_id"],
        row["heartbeat"],
        row["temperature"],
        (status["battery"], status["rssi"]) if status is not None else None,
        row["datetime_wita"],
        day(row["hiveperiod"]),
        row["dstrct_code"],
    )


def expected_local_time(source_file: str, seq: int) -> datetime:
    """The generator's rule: line `seq` of `{device}/{YYYYMMDDHH}/log.json` is at hour + seq * step
    (UTC); the lake holds it as naive local time (UTC+8)."""
    hour = datetime.strptime(source_file.split("/")[1], "%Y%m%d%H")
    return hour + timedelta(seconds=int(seq * (3600 / ROWS_PER_FILE)), hours=TZ_OFFSET_HOURS)


# -- the lake the readers are given ---------------------------------------------------------------


def test_pipeline_wrote_the_lake_the_tests_expect(readers_lake: Lake) -> None:
    assert set(readers_lake.key_statuses) <= {"SUCCESS", "QUARANTINED"}, readers_lake.key_statuses
    assert sum(readers_lake.rows_by_partition.values()) == readers_lake.summary.rows
    assert sum(readers_lake.bad_by_partition.values()) == readers_lake.summary.bad_lines > 0
    assert {d for d, _ in readers_lake.rows_by_partition} == {"2026-11-01", "2026-11-02"}
    on_disk = {
        (f.parent.parent.name.removeprefix("hiveperiod="), f.parent.name.removeprefix("dstrct_code="))
        for f in readers_lake.files(DATASET)
    }
    assert on_disk == set(readers_lake.rows_by_partition)


@pytest.mark.parametrize("dataset", [DATASET, QUARANTINE])
def test_files_are_zstd_compressed(readers_lake: Lake, dataset: str) -> None:
    files = readers_lake.files(dataset)
    assert files
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD", f
        codecs = {
            meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)
        }
        assert codecs == {"ZSTD"}, (f, codecs)


@pytest.mark.parametrize("dataset", [DATASET, QUARANTINE])
def test_files_of_a_dataset_share_one_schema(readers_lake: Lake, dataset: str) -> None:
    """Spark (without mergeSchema) and pyarrow take the schema from one file: all must agree."""
    schemas = {str(pq.read_schema(f).remove_metadata()) for f in readers_lake.files(dataset)}
    assert len(schemas) == 1, schemas


# -- each reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_reader_sees_every_row_in_its_partition(
    read: Callable[[str, str], Read], readers_lake: Lake, reader: str
) -> None:
    rows = read(reader, DATASET).rows
    assert len(rows) == readers_lake.summary.rows
    assert partition_counts(rows) == readers_lake.rows_by_partition


@pytest.mark.parametrize("reader", READERS)
def test_reader_column_types(read: Callable[[str, str], Read], reader: str) -> None:
    kinds = read(reader, DATASET).kinds
    allowed = dict(EXPECTED_KINDS)
    if reader == "spark":  # an instant typed column would do for Spark; values are checked in UTC
        allowed["datetime_wita"] = {TIMESTAMP, SPARK_LTZ}
    found = {name: kinds.get(name) for name in allowed}
    assert all(found[name] in allowed[name] for name in allowed), (found, kinds)


@pytest.mark.parametrize("reader", READERS)
def test_reader_timestamps_and_partition_dates(read: Callable[[str, str], Read], reader: str) -> None:
    for row in read(reader, DATASET).rows:
        local = row["datetime_wita"]
        assert isinstance(local, datetime) and local.tzinfo is None, row
        assert local == expected_local_time(row["source_file"], row["seq"]), row
        assert day(row["hiveperiod"]) == local.date().isoformat(), row


@pytest.fixture(scope="module")
def known_row(readers_lake: Lake) -> tuple[str, int, datetime]:
    """(source_file, seq, expected datetime_wita) of the first good line of dev00000's first hour,
    found in the raw store."""
    prefix = f"dev00000/{START:%Y%m%d%H}/"
    (obj,) = [o for o in readers_lake.raw.list(prefix)]
    for record in good_records(readers_lake.raw, obj.key):
        if "seq" in record:
            return (
                obj.key,
                record["seq"],
                START + timedelta(seconds=int(record["seq"] * 3600 / ROWS_PER_FILE), hours=TZ_OFFSET_HOURS),
            )
    raise AssertionError(f"no good line in {obj.key}")


@pytest.mark.parametrize("reader", READERS)
def test_known_row_matches_duckdb(
    read: Callable[[str, str], Read], known_row: tuple[str, int, datetime], reader: str
) -> None:
    source_file, seq, expected = known_row

    def value(name: str) -> datetime:
        (hit,) = [r for r in read(name, DATASET).rows if r["source_file"] == source_file and r["seq"] == seq]
        return hit["datetime_wita"]

    assert value("duckdb") == expected
    assert value(reader) == value("duckdb")


def test_readers_return_identical_rows(read: Callable[[str, str], Read]) -> None:
    by_reader = {reader: Counter(canonical(r) for r in read(reader, DATASET).rows) for reader in READERS}
    reference = by_reader["duckdb"]
    for reader, rows in by_reader.items():
        assert rows == reference, (reader, list((rows - reference).items())[:3], list((reference - rows).items())[:3])


@pytest.mark.parametrize("reader", READERS)
def test_reader_reads_the_quarantine(read: Callable[[str, str], Read], readers_lake: Lake, reader: str) -> None:
    got = read(reader, QUARANTINE)
    assert len(got.rows) == readers_lake.summary.bad_lines
    assert partition_counts(got.rows) == readers_lake.bad_by_partition
    found = {name: got.kinds.get(name) for name in QUARANTINE_KINDS}
    assert all(found[name] in QUARANTINE_KINDS[name] for name in QUARANTINE_KINDS), (found, got.kinds)


def test_readers_agree_on_partitions(read: Callable[[str, str], Read]) -> None:
    for dataset in (DATASET, QUARANTINE):
        counts = {reader: partition_counts(read(reader, dataset).rows) for reader in READERS}
        assert len({tuple(sorted(c.items())) for c in counts.values()}) == 1, (dataset, counts)
