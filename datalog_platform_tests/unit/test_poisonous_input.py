"""Poisonous input fails alone: the rest of its batch lands in the same batch, at no cost to it.

Covers a line nested 100,000 levels deep (DuckDB's reader segfaults on it: the reader process
dies, the file is found by halving the batch and read on the line path, which quarantines that
line and keeps its neighbours), a 100 MB line (quarantined with its first bytes, never held
whole), a file with 5,000 distinct field names (quarantined whole; no column of it reaches the
lake), a file that breaks the reader on the line path too (a segfault, an abort, out of memory, a
binder error: FAILED with the cause, named), and a full lake disk (a transient failure: the keys
are handed back without an attempt and land once the disk has room). Each test checks the rows
per key against what the raw files hold.

Real parts: the local and the moto S3 stores, a SQLite ledger, the batch's reader process and its
DuckDB (the deep line is a real segfault), a real tmpfs for the full disk (tests run as root),
`Pipeline` as a run takes a batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.schema import FAILED, PENDING, QUARANTINED, SUCCESS, schema_fields
from datalog_platform.core.store import LocalStore, ObjectStore
from datalog_platform.core.transform.lines import LINE_HEAD_BYTES, LINE_TOO_LONG, TOO_DEEP
from datalog_platform_tests.support.pipeline import Pipeline
from datalog_platform_tests.support.raw_data import epoch_seconds, ndjson
from datalog_platform_tests.support.stores import BreakingStore, deep_line

REGION = "RG"
HOUR = "2026110100"
BASE = datetime(2026, 11, 1, 0, 0, 0)
POISON = f"dev1/{HOUR}/poison.json"
MATES = [f"dev2/{HOUR}/log.json", f"dev3/{HOUR}/log.json"]


def good(device: str, seq: int, **extra: Any) -> str:
    at = epoch_seconds(BASE + timedelta(seconds=seq))
    return json.dumps({"device_id": device, "heartbeat": at, "seq": seq, **extra})


def with_mates(pipeline: Pipeline, poison: bytes) -> None:
    """The poisonous file and two batch-mates of 100 good rows each, all registered."""
    pipeline.devices([("dev1", REGION), ("dev2", REGION), ("dev3", REGION)])
    pipeline.raw.write_bytes(POISON, poison)
    for n, key in enumerate(MATES):
        device = key.split("/")[0]
        pipeline.raw.write_bytes(key, ndjson(*(good(device, 1000 * (n + 1) + s) for s in range(100))))


def rows_by_key(pipeline: Pipeline) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in pipeline.rows():
        counts[row["source_file"]] = counts.get(row["source_file"], 0) + 1
    return counts


def assert_mates_landed(pipeline: Pipeline) -> None:
    keys = pipeline.key_rows()
    assert {(keys[k]["status"], keys[k]["attempts"], keys[k]["rows"]) for k in MATES} == {(SUCCESS, 0, 100)}
    assert all(rows_by_key(pipeline)[k] == 100 for k in MATES)


def test_a_line_nested_100000_levels_deep_is_quarantined_and_its_neighbours_land(pipeline: Pipeline) -> None:
    poison = ndjson(
        *(good("dev1", s) for s in range(20)), deep_line(100_000), *(good("dev1", s) for s in range(20, 40))
    )
    with_mates(pipeline, poison)

    (report,) = pipeline.run()  # one batch: the reader died on the fast path, the batch went on

    assert (report.keys, report.failed_keys, report.rows) == (3, 0, 240)
    assert_mates_landed(pipeline)
    assert rows_by_key(pipeline)[POISON] == 40
    ((source, line, reason),) = [(r["source_file"], r["line_number"], r["reason"]) for r in pipeline.rows("quarantine")]
    assert (source, line, reason) == (POISON, 21, TOO_DEEP)
    key = pipeline.key_rows()[POISON]
    assert (key["status"], key["attempts"], key["quarantined_lines"]) == (SUCCESS, 0, 1)


def test_a_100_mb_line_is_quarantined_with_its_first_bytes(
    tmp_path: Path, sqlite_engine: sa.Engine, duck_factory: Any
) -> None:
    raw, lake = LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "lake")
    pipeline = Pipeline(raw, lake, sqlite_engine, duck_factory)
    blob = '{"device_id":"dev1","heartbeat":1762000100,"blob":"' + "a" * (100 << 20) + '"}'
    with_mates(pipeline, ndjson(*(good("dev1", s) for s in range(20)), blob, *(good("dev1", s) for s in range(20, 40))))
    del blob

    (report,) = pipeline.run()

    assert (report.keys, report.rows, report.quarantined_lines) == (3, 240, 1)
    assert_mates_landed(pipeline)
    assert rows_by_key(pipeline)[POISON] == 40
    (record,) = pipeline.rows("quarantine")
    assert (record["line_number"], record["reason"], len(record["raw_line"])) == (21, LINE_TOO_LONG, LINE_HEAD_BYTES)
    assert record["raw_line"].startswith('{"device_id":"dev1","heartbeat":1762000100,"blob":"aaaa')


@pytest.mark.parametrize("shape", ["one wide record", "rare fields"])
def test_a_file_with_5000_field_names_is_quarantined_whole(pipeline: Pipeline, shape: str) -> None:
    """One record with 5,000 fields beside ordinary ones, or 5,000 records of one rare field each
    (which DuckDB would otherwise read as a map and refuse as records)."""
    if shape == "one wide record":
        lines = [good("dev1", 0, **{f"f{i}": i for i in range(5000)}), *(good("dev1", s) for s in range(1, 40))]
    else:
        lines = [good("dev1", s, **{f"f{s}": s}) for s in range(5000)]
    with_mates(pipeline, ndjson(*lines))

    (report,) = pipeline.run()

    assert (report.keys, report.rows, report.quarantined_keys) == (3, 200, 1)
    assert_mates_landed(pipeline)
    assert POISON not in rows_by_key(pipeline)
    key = pipeline.key_rows()[POISON]
    assert key["status"] == QUARANTINED and key["attempts"] == 0
    assert (
        key["error"].startswith("too_many_fields: its records carry 500")
        and "DATALOG_MAX_FIELDS (1000)" in key["error"]
    )
    with pipeline.engine.connect() as conn:
        known = set(conn.execute(sa.select(schema_fields.c.field)).scalars())
    assert known == {"device_id", "heartbeat", "seq"}


@pytest.mark.parametrize(
    ("breaks", "reason"),
    [
        (signal.SIGSEGV, "crashed the reader: the reader process killed by SIGSEGV"),
        (signal.SIGABRT, "crashed the reader: the reader process killed by SIGABRT"),
        (duckdb.OutOfMemoryException("out of memory"), "exhausted the reader: OutOfMemoryException: out of memory"),
        (duckdb.BinderException("no such column"), "broke the reader: BinderException: no such column"),
    ],
    ids=["segfault", "abort", "out-of-memory", "binder-error"],
)
def test_a_file_that_breaks_the_reader_on_both_paths_fails_alone(
    tmp_path: Path, sqlite_engine: sa.Engine, duck_factory: Any, breaks: Any, reason: str
) -> None:
    """The file segfaults DuckDB's reader (it is nested 100,000 levels deep), and its read on the
    line path breaks the reader too: it is FAILED with the cause, once, and its batch-mates land in
    the same batch at no cost."""
    raw = BreakingStore(tmp_path / "raw", keys=[POISON], breaks=breaks)
    pipeline = Pipeline(raw, LocalStore(tmp_path / "lake"), sqlite_engine, duck_factory)
    with_mates(pipeline, ndjson(good("dev1", 0), deep_line(100_000)))

    (report,) = pipeline.run()

    assert (report.keys, report.failed_keys, report.rows) == (3, 1, 200)
    assert_mates_landed(pipeline)
    key = pipeline.key_rows()[POISON]
    assert (key["status"], key["attempts"], key["rows"]) == (FAILED, 1, None)
    assert key["error"] == f"{reason} while reading {raw.uri(POISON)}"
    assert POISON not in rows_by_key(pipeline)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 512 KiB (tests run as root), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_lake_disk_costs_the_keys_no_attempt(
    tmp_path: Path, small_disk: Path, sqlite_engine: sa.Engine, duck_factory: Any
) -> None:
    """The COPY meets a full disk: the batch is handed back whole and unchanged (no attempt, so no
    smaller batch next time); once the disk has room the same keys land in one batch."""
    raw: ObjectStore = LocalStore(tmp_path / "raw")
    pipeline = Pipeline(raw, LocalStore(small_disk / "lake"), sqlite_engine, duck_factory)
    noise = os.urandom(1 << 20).hex()  # about 2 MB that no compression makes small
    with_mates(pipeline, ndjson(*(good("dev1", s, noise=noise[s * 20_000 : (s + 1) * 20_000]) for s in range(100))))

    with pytest.raises(Exception, match="No space left on device"):
        pipeline.run()
    keys = pipeline.key_rows()
    assert {(k["status"], k["attempts"]) for k in keys.values()} == {(PENDING, 0)}
    assert "No space left on device" in keys[POISON]["error"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    (report,) = pipeline.run()
    assert report.keys == 3
    assert rows_by_key(pipeline) == {POISON: 100, MATES[0]: 100, MATES[1]: 100}
    assert registration.status_counts(pipeline.engine)["by_status"] == {SUCCESS: 3}
