"""The `heartbeat` normalisation rules, through the SQL of `with_instant` and through the whole ingest.

Covers epoch seconds / ms / us / ns (JSON numbers and strings), fractions kept to the microsecond,
ns truncated to us, ISO-8601 with `T` or a space, `Z`, `+08:00` / `+0130` / `-05:00` offsets and
no zone (UTC), and the invalid ones: date-only, garbage, null, missing, boolean, object, array and
instants outside [2000-01-01, 2100-01-01) UTC. Expected instants are computed here with datetime
arithmetic, never copied from the code under test.

Real parts: in-memory DuckDB with the platform's macros; for the pipeline, a SQLite ledger, the
local and moto-S3 stores, DuckDB `read_json` / COPY to Parquet and `read_parquet` back.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import pytest

from datalog_platform.core.transform.lines import INVALID_TIMESTAMP
from datalog_platform.core.transform.timestamps import install_macros, with_instant
from datalog_platform_tests.support.raw_data import ndjson

if TYPE_CHECKING:
    from datalog_platform_tests.support.pipeline import Pipeline

EPOCH = datetime(1970, 1, 1)
MISSING = object()  # the record has no heartbeat field at all


def at_epoch(seconds: int, microseconds: int = 0) -> datetime:
    return EPOCH + timedelta(seconds=seconds, microseconds=microseconds)


def utc(local: datetime, offset: timedelta) -> datetime:
    """The UTC instant of a wall-clock time written with an offset."""
    return local - offset


WALL = datetime(2026, 11, 1, 10, 20, 30)

# (case name, heartbeat as JSON text or MISSING, expected naive UTC instant or None for invalid)
CASES: list[tuple[str, object, datetime | None]] = [
    ("s_number", "1700000000", at_epoch(1_700_000_000)),
    ("ms_number", "1700000000123", at_epoch(1_700_000_000, 123_000)),
    ("us_number", "1700000000123456", at_epoch(1_700_000_000, 123_456)),
    ("ns_number", "1700000000123456789", at_epoch(1_700_000_000, 123_456)),
    ("s_string", '"1700000000"', at_epoch(1_700_000_000)),
    ("ms_string", '"1700000000123"', at_epoch(1_700_000_000, 123_000)),
    ("us_string", '"1700000000123456"', at_epoch(1_700_000_000, 123_456)),
    ("ns_string", '"1700000000123456789"', at_epoch(1_700_000_000, 123_456)),
    ("s_fraction_number", "1700000000.1234567", at_epoch(1_700_000_000, 123_456)),
    ("s_fraction_string", '"1700000000.1234567"', at_epoch(1_700_000_000, 123_456)),
    ("s_millis_fraction", "1700000000.5", at_epoch(1_700_000_000, 500_000)),
    ("iso_t_naive", '"2026-11-01T10:20:30"', WALL),
    ("iso_space_naive", '"2026-11-01 10:20:30"', WALL),
    ("iso_z", '"2026-11-01T10:20:30Z"', WALL),
    ("iso_z_fraction", '"2026-11-01T10:20:30.654321Z"', WALL + timedelta(microseconds=654_321)),
    ("iso_plus_0800", '"2026-11-01T10:20:30+08:00"', utc(WALL, timedelta(hours=8))),
    ("iso_plus_0130", '"2026-11-01T10:20:30+0130"', utc(WALL, timedelta(hours=1, minutes=30))),
    ("iso_minus_0500", '"2026-11-01T10:20:30-05:00"', utc(WALL, timedelta(hours=-5))),
    ("iso_space_offset", '"2026-11-01 10:20:30+08:00"', utc(WALL, timedelta(hours=8))),
    ("lower_bound", "946684800", datetime(2000, 1, 1)),
    ("upper_bound_minus_1s", "4102444799", datetime(2099, 12, 31, 23, 59, 59)),
    ("date_only", '"2026-11-01"', None),
    ("garbage", '"not a time"', None),
    ("empty_string", '""', None),
    ("null", "null", None),
    ("missing", MISSING, None),
    ("boolean", "true", None),
    ("object", '{"s": 1700000000}', None),
    ("array", "[1700000000]", None),
    ("before_2000", "946684799", None),
    ("at_2100", "4102444800", None),
    ("before_2000_ms", "946684799999", None),
    ("iso_before_2000_utc", '"2000-01-01T07:59:59+08:00"', None),
    ("iso_at_2100", '"2100-01-01T00:00:00Z"', None),
]
VALID = [c for c in CASES if c[2] is not None]
INVALID = [c for c in CASES if c[2] is None]


def record(name: str, heartbeat: object) -> str:
    if heartbeat is MISSING:
        return json.dumps({"case": name, "value": 1})
    return f'{{"case": {json.dumps(name)}, "heartbeat": {heartbeat}, "value": 1}}'


@pytest.fixture(scope="module")
def macro_conn() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(":memory:")
    install_macros(conn)
    return conn


def instant_of(conn: duckdb.DuckDBPyConnection, value_sql: str, kind: str, param: object) -> object:
    """The instant `with_instant` gives one heartbeat value of DuckDB type `kind`."""
    sql = with_instant(f"SELECT {value_sql} AS hb", '"hb"' if kind else None, kind or None, "ts")
    row = conn.execute(f"SELECT ts FROM ({sql})", [param] if "?" in value_sql else []).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(("name", "heartbeat", "expected"), CASES, ids=[c[0] for c in CASES])
def test_json_heartbeat(
    macro_conn: duckdb.DuckDBPyConnection, name: str, heartbeat: object, expected: datetime | None
) -> None:
    """A heartbeat as JSON (what the line path extracts from each line)."""
    if heartbeat is MISSING:
        got = instant_of(macro_conn, "json_extract('{}'::JSON, '$.heartbeat')", "JSON", None)
    else:
        got = instant_of(macro_conn, "?::JSON", "JSON", heartbeat)
    assert got == expected


@pytest.mark.parametrize(("name", "heartbeat", "expected"), CASES, ids=[c[0] for c in CASES])
def test_typed_heartbeat(
    macro_conn: duckdb.DuckDBPyConnection, name: str, heartbeat: object, expected: datetime | None
) -> None:
    """A heartbeat as the type read_json infers for a column of this format alone: numbers as
    BIGINT / DOUBLE, strings as VARCHAR, anything else (and a missing column) invalid."""
    if heartbeat is MISSING:
        got = instant_of(macro_conn, "NULL", "", None)
    else:
        value = json.loads(str(heartbeat))
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            got = instant_of(macro_conn, "?::JSON", "JSON", heartbeat)
        elif isinstance(value, int):
            got = instant_of(macro_conn, "?::BIGINT", "BIGINT", value)
        elif isinstance(value, float):
            got = instant_of(macro_conn, "?::DOUBLE", "DOUBLE", value)
        else:
            got = instant_of(macro_conn, "?::VARCHAR", "VARCHAR", value)
    assert got == expected


def test_offsets_convert_to_utc_whatever_the_session_zone() -> None:
    """install_macros pins the session to UTC, so offsets convert to UTC, not to local time."""
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'Asia/Makassar'")
    install_macros(conn)
    got = instant_of(conn, "?::VARCHAR", "VARCHAR", "2026-11-01T10:20:30+08:00")
    assert got == datetime(2026, 11, 1, 2, 20, 30)
    assert instant_of(conn, "?::VARCHAR", "VARCHAR", "2026-11-01T10:20:30") == WALL


def _check_lake(pipeline: Pipeline, cases: list[tuple[str, object, datetime | None]]) -> None:
    rows = {r["case"]: r for r in pipeline.rows()}
    bad = {json.loads(r["raw_line"])["case"]: r for r in pipeline.rows("quarantine")}
    for name, heartbeat, expected in cases:
        if expected is None:
            assert name not in rows, name
            assert bad[name]["reason"] == INVALID_TIMESTAMP, name
            assert bad[name]["raw_line"] == record(name, heartbeat), name
        else:
            assert name not in bad, name
            assert rows[name]["datetime_wita"] == expected + timedelta(hours=pipeline.tz_offset_hours), name
            local_day = (expected + timedelta(hours=pipeline.tz_offset_hours)).date()
            assert str(rows[name]["hiveperiod"]) == local_day.isoformat(), name
    assert len(rows) == sum(1 for c in cases if c[2] is not None)
    assert len(bad) == sum(1 for c in cases if c[2] is None)


def test_pipeline_mixed_file(pipeline: Pipeline) -> None:
    """All formats in one file: the file takes the line path and every line is judged alone."""
    pipeline.devices([("dev1", "RG")])
    lines = [record(name, heartbeat) for name, heartbeat, _ in CASES]
    pipeline.raw.write_bytes("dev1/2026110100/log.json", ndjson(*lines))
    (report,) = pipeline.run()
    assert report.line_path_files == 1
    _check_lake(pipeline, CASES)


def test_pipeline_one_format_per_batch(pipeline: Pipeline) -> None:
    """Each format alone in its batch, so `read_json` infers the column type from that format only
    (BIGINT, DOUBLE, VARCHAR, timestamps, JSON): the fast path must agree with the macro."""
    pipeline.devices([(f"dev{i:02d}", f"R{i:02d}") for i in range(len(CASES))])
    for i, (name, heartbeat, _) in enumerate(CASES):
        pipeline.raw.write_bytes(f"dev{i:02d}/2026110100/log.json", (record(name, heartbeat) + "\n").encode())
    reports = pipeline.run()
    assert len(reports) == len(CASES)
    valid_names = {name for name, _, _ in VALID}
    fast = [r for r in reports if r.rows == 1 and r.line_path_files == 0]
    # every valid format was read by read_json directly, without falling back to the line path
    assert len(fast) == len(valid_names)
    _check_lake(pipeline, CASES)
