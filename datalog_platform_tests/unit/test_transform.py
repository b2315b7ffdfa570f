"""JSON lines -> hive-partitioned Parquet | quarantine, end to end on the local and the S3 store.

Covers the good/quarantine split (malformed JSON, arrays and scalars, invalid heartbeats, blank
lines, line numbers and raw lines), gzip and corrupt gzip files, empty files and empty batches,
keys with quotes, spaces, unicode and glob characters, the output columns and their types,
per-row local-date partitions, zstd compression, readers (DuckDB, pyarrow.dataset, polars),
later batches writing into the same hive directory, schema drift past read_json's sample,
and an idempotent rerun.

Real parts: raw files written through the store (local directory, or moto's S3 HTTP server), a
SQLite ledger (register, claim, commit), DuckDB's read_json / COPY / read_parquet (httpfs against
moto for S3), pyarrow and polars reading the local lake.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.dataset as ds
import pytest

from datalog_platform.core.ledger.schema import QUARANTINED, SUCCESS
from datalog_platform.core.store import LocalStore, S3Store
from datalog_platform.core.transform import lines as line_path
from datalog_platform.core.transform.lines import INVALID_TIMESTAMP, MALFORMED_JSON
from datalog_platform_tests.support.raw_data import epoch_seconds, ndjson

if TYPE_CHECKING:
    from datalog_platform_tests.support.pipeline import Pipeline

REGION = "RG"
HOUR_KEY = "2026110100"  # UTC hour in the key; local date 2026-11-01 at +8
BASE = datetime(2026, 11, 1, 0, 0, 0)  # UTC


def good(device: str, seq: int, at: datetime | None = None, **extra: Any) -> str:
    """One valid record whose heartbeat is `at` (UTC) as epoch seconds."""
    instant = at if at is not None else BASE + timedelta(minutes=seq)
    epoch = epoch_seconds(instant)
    rec = {"device_id": device, "heartbeat": epoch, "seq": seq, "temperature": 20.5 + seq}
    rec.update(extra)
    return json.dumps(rec, separators=(",", ":"))


def lake_keys(pipeline: Pipeline) -> list[str]:
    return [o.key for o in pipeline.lake.list()]


def test_mixed_good_and_bad_lines(pipeline: Pipeline) -> None:
    """(a) good file + file with a malformed line, an invalid heartbeat and blank lines."""
    pipeline.devices([("dev1", REGION)])
    good_key = f"dev1/{HOUR_KEY}/a-good.json"
    mixed_key = f"dev1/{HOUR_KEY}/b-mixed.json"
    malformed = '{"device_id":"dev1","heartbeat": 17'
    invalid = '{"device_id":"dev1","heartbeat":"not a time","seq":102}'
    pipeline.raw.write_bytes(good_key, ndjson(*(good("dev1", i) for i in range(3))))
    pipeline.raw.write_bytes(
        mixed_key,
        ndjson(good("dev1", 100), "", malformed, invalid, "   ", good("dev1", 105)),
    )
    (report,) = pipeline.run()
    assert report.rows == 5
    assert report.quarantined_lines == 2
    assert report.line_path_files == 1  # only the mixed file left the fast path

    rows = pipeline.rows(order_by="seq")
    assert [(r["seq"], r["source_file"]) for r in rows] == [
        (0, good_key),
        (1, good_key),
        (2, good_key),
        (100, mixed_key),
        (105, mixed_key),
    ]
    bad = pipeline.rows("quarantine", order_by="line_number")
    assert [(r["source_file"], r["line_number"], r["raw_line"], r["reason"]) for r in bad] == [
        (mixed_key, 3, malformed, MALFORMED_JSON),
        (mixed_key, 4, invalid, INVALID_TIMESTAMP),
    ]
    assert {r["batch_id"] for r in bad} == {report.batch_id}
    assert {(str(r["hiveperiod"]), r["dstrct_code"]) for r in bad} == {("2026-11-01", REGION)}

    ledger = pipeline.key_rows()
    assert ledger[good_key]["status"] == SUCCESS and ledger[good_key]["rows"] == 3
    assert ledger[mixed_key]["status"] == SUCCESS
    assert (ledger[mixed_key]["rows"], ledger[mixed_key]["quarantined_lines"]) == (2, 2)


def test_crlf_and_non_utf8_lines(pipeline: Pipeline) -> None:
    """CRLF line ends are not part of a line; a line that is not UTF-8 is malformed_json."""
    pipeline.devices([("dev1", REGION)])
    key = f"dev1/{HOUR_KEY}/crlf.json"
    data = (good("dev1", 1) + "\r\n").encode() + b'{"heartbeat": "\xff\xfe"}\r\n' + good("dev1", 3).encode()
    pipeline.raw.write_bytes(key, data)
    (report,) = pipeline.run()
    assert [r["seq"] for r in pipeline.rows(order_by="seq")] == [1, 3]
    (bad,) = pipeline.rows("quarantine")
    assert (bad["line_number"], bad["reason"]) == (2, MALFORMED_JSON)
    assert report.quarantined_lines == 1


def test_gzip_and_corrupt_gzip(pipeline: Pipeline) -> None:
    """(b) .json.gz is read; a corrupt gzip is QUARANTINED with an error, the rest SUCCESS."""
    pipeline.devices([("dev1", REGION)])
    gz_key = f"dev1/{HOUR_KEY}/a.json.gz"
    gz_bad_line_key = f"dev1/{HOUR_KEY}/b.json.gz"
    plain_key = f"dev1/{HOUR_KEY}/c.json"
    corrupt_key = f"dev1/{HOUR_KEY}/x.json.gz"
    pipeline.raw.write_bytes(gz_key, gzip.compress(ndjson(good("dev1", 1), good("dev1", 2))))
    pipeline.raw.write_bytes(gz_bad_line_key, gzip.compress(ndjson(good("dev1", 3), "{oops")))
    pipeline.raw.write_bytes(plain_key, ndjson(good("dev1", 4)))
    pipeline.raw.write_bytes(corrupt_key, b"\x1f\x8b garbage")
    (report,) = pipeline.run()
    assert report.quarantined_keys == 1

    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [
        (1, gz_key),
        (2, gz_key),
        (3, gz_bad_line_key),
        (4, plain_key),
    ]
    (bad,) = pipeline.rows("quarantine")
    assert (bad["source_file"], bad["line_number"], bad["raw_line"]) == (gz_bad_line_key, 2, "{oops")

    ledger = pipeline.key_rows()
    assert ledger[corrupt_key]["status"] == QUARANTINED
    assert ledger[corrupt_key]["error"]
    for key in (gz_key, gz_bad_line_key, plain_key):
        assert ledger[key]["status"] == SUCCESS, key
        assert not ledger[key]["error"]


def test_line_path_streams_files_in_blocks(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The line path reads a file in blocks, not whole: with blocks shorter than one line, every
    line still keeps its number and text, the last line needs no newline, and a gzip that breaks
    after some blocks were read leaves nothing of its file behind."""
    monkeypatch.setattr(line_path, "LINE_BLOCK_BYTES", 37)
    pipeline.devices([("dev1", REGION)])
    plain_key = f"dev1/{HOUR_KEY}/a-plain.json"
    gz_key = f"dev1/{HOUR_KEY}/b-zipped.json.gz"
    broken_key = f"dev1/{HOUR_KEY}/c-broken.json.gz"
    lines = [good("dev1", i) for i in range(12)]
    lines[0], lines[6] = "{oops", '{"device_id":"dev1","heartbeat":"never"}'
    text = "\r\n".join(lines[:9]) + "\n\n" + "\n".join(lines[9:])  # CRLF, a blank line, no final newline
    pipeline.raw.write_bytes(plain_key, text.encode())
    pipeline.raw.write_bytes(gz_key, gzip.compress(ndjson(good("dev1", 50), "{oops", good("dev1", 51))))
    pipeline.raw.write_bytes(broken_key, gzip.compress(ndjson(*(good("dev1", 60 + i) for i in range(40))))[:-30])
    (report,) = pipeline.run()

    assert report.line_path_files == 3
    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [
        *((i, plain_key) for i in range(1, 12) if i != 6),
        (50, gz_key),
        (51, gz_key),
    ]
    bad = pipeline.rows("quarantine", order_by="source_file, line_number")
    assert [(r["source_file"], r["line_number"], r["raw_line"], r["reason"]) for r in bad] == [
        (plain_key, 1, "{oops", MALFORMED_JSON),
        (plain_key, 7, lines[6], INVALID_TIMESTAMP),
        (gz_key, 2, "{oops", MALFORMED_JSON),
    ]
    ledger = pipeline.key_rows()
    assert (ledger[plain_key]["rows"], ledger[plain_key]["quarantined_lines"]) == (10, 2)
    assert ledger[broken_key]["status"] == QUARANTINED and "unreadable" in ledger[broken_key]["error"]
    assert (ledger[broken_key]["rows"], ledger[broken_key]["quarantined_lines"]) == (0, 0)


@pytest.mark.parametrize("block_bytes", [line_path.LINE_BLOCK_BYTES, 250])
def test_line_path_gathers_small_files(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    """Small files on the line path are validated together, and a file that breaks among them
    takes only its own lines out, gathered or inserted: those of the files before and after it
    stay (with 250-byte blocks the broken file has lines of both kinds when it breaks)."""
    monkeypatch.setattr(line_path, "LINE_BLOCK_BYTES", block_bytes)
    pipeline.devices([("dev1", REGION)])
    before, broken, after = (f"dev1/{HOUR_KEY}/{name}" for name in ("a.json", "b-broken.json.gz", "c.json"))
    pipeline.raw.write_bytes(before, ndjson(good("dev1", 1), "{oops", good("dev1", 2)))
    pipeline.raw.write_bytes(broken, gzip.compress(ndjson(*(good("dev1", 10 + i) for i in range(40))))[:-30])
    pipeline.raw.write_bytes(after, ndjson(good("dev1", 3), '{"device_id":"dev1","heartbeat":"never"}'))
    (report,) = pipeline.run()

    assert report.line_path_files == 3
    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [
        (1, before),
        (2, before),
        (3, after),
    ]
    bad = pipeline.rows("quarantine", order_by="source_file, line_number")
    assert [(r["source_file"], r["line_number"], r["reason"]) for r in bad] == [
        (before, 2, MALFORMED_JSON),
        (after, 2, INVALID_TIMESTAMP),
    ]
    ledger = pipeline.key_rows()
    assert ledger[broken]["status"] == QUARANTINED and "unreadable" in ledger[broken]["error"]
    assert (ledger[broken]["rows"], ledger[broken]["quarantined_lines"]) == (0, 0)
    assert (ledger[before]["rows"], ledger[before]["quarantined_lines"]) == (2, 1)
    assert (ledger[after]["rows"], ledger[after]["quarantined_lines"]) == (1, 1)


def test_gzip_on_the_fast_path(pipeline: Pipeline) -> None:
    """(b) a clean .json.gz batch is read by read_json itself (httpfs on S3), no line path."""
    pipeline.devices([("dev1", REGION)])
    key = f"dev1/{HOUR_KEY}/a.json.gz"
    pipeline.raw.write_bytes(key, gzip.compress(ndjson(good("dev1", 1), good("dev1", 2))))
    (report,) = pipeline.run()
    assert (report.rows, report.line_path_files) == (2, 0)
    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [(1, key), (2, key)]


def test_empty_file_next_to_good_file(pipeline: Pipeline) -> None:
    """(c) an empty (or blank-only) file is SUCCESS with 0 rows and contributes no rows."""
    pipeline.devices([("dev1", REGION)])
    empty_key = f"dev1/{HOUR_KEY}/empty.json"
    blank_key = f"dev1/{HOUR_KEY}/blank.json"
    good_key = f"dev1/{HOUR_KEY}/good.json"
    pipeline.raw.write_bytes(empty_key, b"")
    pipeline.raw.write_bytes(blank_key, b"\n  \n\n")
    pipeline.raw.write_bytes(good_key, ndjson(good("dev1", 1)))
    (report,) = pipeline.run()
    assert report.rows == 1
    assert {r["source_file"] for r in pipeline.rows()} == {good_key}
    assert not pipeline.has_files("quarantine")
    ledger = pipeline.key_rows()
    for key in (empty_key, blank_key):
        assert (ledger[key]["status"], ledger[key]["rows"]) == (SUCCESS, 0), key
    assert len(report.files) == 1


def test_batch_of_only_empty_files_writes_nothing(pipeline: Pipeline) -> None:
    """(c) a batch whose files hold no lines commits with no file at all."""
    pipeline.devices([("dev1", REGION)])
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/empty.json", b"")
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/empty2.json.gz", gzip.compress(b""))
    (report,) = pipeline.run()
    assert (report.rows, report.files) == (0, [])
    assert lake_keys(pipeline) == []
    assert {(r["status"], r["rows"]) for r in pipeline.key_rows().values()} == {(SUCCESS, 0)}


UNUSUAL_KEYS = [
    f"dev1/{HOUR_KEY}/it's a log.json",
    f"dev1/{HOUR_KEY}/données é.json",
    f"dev1/{HOUR_KEY}/glob[1]*?.json",
    f"dev1/{HOUR_KEY}/plus+percent%20.json",
]


def test_unusual_keys(pipeline: Pipeline) -> None:
    """(d) keys with a quote, spaces, unicode, glob and URL characters are ingested; source_file
    is the key exactly. On S3 they take the line path, locally only glob characters do (a key
    read as a glob would also pull in the neighbour file it matches)."""
    pipeline.devices([("dev1", REGION)])
    for seq, key in enumerate(UNUSUAL_KEYS):
        pipeline.raw.write_bytes(key, ndjson(good("dev1", seq)))
    neighbour = f"dev1/{HOUR_KEY}/glob1ab.json"  # matched by the glob `glob[1]*?.json`
    pipeline.raw.write_bytes(neighbour, ndjson(good("dev1", 99)))
    (report,) = pipeline.run()
    assert sorted((r["seq"], r["source_file"]) for r in pipeline.rows()) == [
        *enumerate(UNUSUAL_KEYS),
        (99, neighbour),
    ]
    expected_line_path = len(UNUSUAL_KEYS) if isinstance(pipeline.raw, S3Store) else 1
    assert report.line_path_files == expected_line_path
    assert {r["status"] for r in pipeline.key_rows().values()} == {SUCCESS}


def test_hive_looking_raw_path_adds_no_column(pipeline: Pipeline) -> None:
    """A `name=value` directory in a raw key (here the device id) is not read as a hive column:
    the record's own field of that name keeps its value and no column is added."""
    pipeline.devices([("site=7", REGION)])
    key = f"site=7/{HOUR_KEY}/log.json"
    pipeline.raw.write_bytes(key, ndjson(good("site=7", 1, site="from-record"), good("site=7", 2)))
    pipeline.run()
    rows = pipeline.rows(order_by="seq")
    assert [(r["site"], r["source_file"]) for r in rows] == [("from-record", key), (None, key)]
    assert set(rows[0]) == {
        "device_id", "heartbeat", "seq", "temperature", "site",
        "datetime_wita", "source_file", "hiveperiod", "dstrct_code", "_rescued", "_record_hash",
        "_record_hash_scheme",
    }  # fmt: skip


def test_quote_key_with_bad_line(pipeline: Pipeline) -> None:
    """(d) the quarantine record of a key with a quote names the key exactly."""
    pipeline.devices([("dev1", REGION)])
    key = f"dev1/{HOUR_KEY}/it's a log.json"
    pipeline.raw.write_bytes(key, ndjson(good("dev1", 1), "not json"))
    pipeline.run()
    assert [r["source_file"] for r in pipeline.rows()] == [key]
    assert [(r["source_file"], r["line_number"]) for r in pipeline.rows("quarantine")] == [(key, 2)]


def test_array_and_scalar_lines(pipeline: Pipeline) -> None:
    """(e) a line that is a JSON array or scalar is malformed_json; the other lines are kept."""
    pipeline.devices([("dev1", REGION)])
    odd_key = f"dev1/{HOUR_KEY}/odd.json"
    clean_key = f"dev1/{HOUR_KEY}/clean.json"
    pipeline.raw.write_bytes(odd_key, ndjson(good("dev1", 1), "[1,2]", "5", '"text"', good("dev1", 5)))
    pipeline.raw.write_bytes(clean_key, ndjson(good("dev1", 10), good("dev1", 11)))
    (report,) = pipeline.run()
    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [
        (1, odd_key),
        (5, odd_key),
        (10, clean_key),
        (11, clean_key),
    ]
    bad = pipeline.rows("quarantine", order_by="line_number")
    assert [(r["line_number"], r["raw_line"], r["reason"]) for r in bad] == [
        (2, "[1,2]", MALFORMED_JSON),
        (3, "5", MALFORMED_JSON),
        (4, '"text"', MALFORMED_JSON),
    ]
    assert report.rows == 4


def test_output_columns_and_partitions(pipeline: Pipeline) -> None:
    """(f) record fields (nested object as STRUCT), datetime_wita, source_file, hiveperiod per row
    (local midnight crossing), dstrct_code from the registry, zstd, and readers."""
    pipeline.devices([("dev1", REGION)])
    key = f"dev1/{HOUR_KEY}/log.json"
    before_midnight = datetime(2026, 11, 1, 15, 59, 59)  # 23:59:59 local
    after_midnight = datetime(2026, 11, 1, 16, 0, 0)  # 00:00:00 local, next day
    pipeline.raw.write_bytes(
        key,
        ndjson(
            good("dev1", 1, before_midnight, status={"battery": 90, "rssi": -70}, dstrct_code="WRONG"),
            good("dev1", 2, after_midnight, status={"battery": 80, "rssi": -60}, datetime_wita="x"),
        ),
    )
    (report,) = pipeline.run()
    assert report.partitions == {"2026-11-01": 1, "2026-11-02": 1}

    types = dict(
        pipeline.conn.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = true))",
            [pipeline.glob("datalog_v2")],
        ).fetchall()
    )
    assert types["status"].startswith("STRUCT(")
    assert "battery" in types["status"] and "rssi" in types["status"]
    assert types["datetime_wita"] == "TIMESTAMP"  # naive local time
    assert types["temperature"] == "DOUBLE"
    assert {"device_id", "heartbeat", "seq", "source_file", "hiveperiod", "dstrct_code"} <= set(types)
    assert not [c for c in types if c.startswith("__dl")]

    rows = pipeline.rows(order_by="seq")
    assert [r["datetime_wita"] for r in rows] == [
        before_midnight + timedelta(hours=pipeline.tz_offset_hours),
        after_midnight + timedelta(hours=pipeline.tz_offset_hours),
    ]
    assert [str(r["hiveperiod"]) for r in rows] == ["2026-11-01", "2026-11-02"]
    assert {r["dstrct_code"] for r in rows} == {REGION}
    assert {r["source_file"] for r in rows} == {key}
    assert [r["status"] for r in rows] == [{"battery": 90, "rssi": -70}, {"battery": 80, "rssi": -60}]

    # each row sits in its own local date's hive directory
    files = sorted(k for k in lake_keys(pipeline) if k.endswith(".parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        f"datalog_v2/hiveperiod=2026-11-01/dstrct_code={REGION}",
        f"datalog_v2/hiveperiod=2026-11-02/dstrct_code={REGION}",
    ]
    assert sorted(f.path for f in report.files) == files
    assert sorted(f.rows for f in report.files) == [1, 1] and all(f.bytes > 0 for f in report.files)
    assert all(f.rsplit("/", 1)[1].startswith(f"part-{report.batch_id}-") for f in files)

    codecs = {
        c
        for (c,) in pipeline.conn.execute(
            "SELECT DISTINCT compression FROM parquet_metadata(?)", [pipeline.glob("datalog_v2")]
        ).fetchall()
    }
    assert codecs == {"ZSTD"}

    if isinstance(pipeline.lake, LocalStore):
        root = pipeline.lake.uri("datalog_v2")
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
        assert table.num_rows == 2
        assert {"hiveperiod", "dstrct_code", "status", "datetime_wita"} <= set(table.column_names)
        frame = pl.read_parquet(f"{root}/**/*.parquet", hive_partitioning=True).sort("seq")
        assert frame.height == 2
        assert frame["dstrct_code"].to_list() == [REGION, REGION]
        assert [str(d) for d in frame["hiveperiod"].to_list()] == ["2026-11-01", "2026-11-02"]
        assert frame["datetime_wita"].to_list() == [r["datetime_wita"] for r in rows]
        assert isinstance(frame.schema["status"], pl.Struct)


def test_second_batch_into_same_hive_dir_keeps_first(pipeline: Pipeline) -> None:
    """COPY ... OVERWRITE_OR_IGNORE into a hive directory that already holds another batch's
    files must leave those files in place (data and quarantine)."""
    pipeline.devices([("dev1", REGION)])
    first = f"dev1/{HOUR_KEY}/first.json"
    second = f"dev1/{HOUR_KEY}/second.json"
    pipeline.raw.write_bytes(first, ndjson(good("dev1", 1), good("dev1", 2), "bad 1"))
    (b1,) = pipeline.run()
    before = set(lake_keys(pipeline))
    pipeline.raw.write_bytes(second, ndjson(good("dev1", 3), "bad 2"))
    (b2,) = pipeline.run()
    assert b1.batch_id != b2.batch_id
    after = set(lake_keys(pipeline))
    assert before < after
    assert len(after) == 4  # one data and one quarantine file per batch
    assert [(r["seq"], r["source_file"]) for r in pipeline.rows(order_by="seq")] == [
        (1, first),
        (2, first),
        (3, second),
    ]
    assert [r["raw_line"] for r in pipeline.rows("quarantine", order_by="raw_line")] == ["bad 1", "bad 2"]


def test_schema_drift_across_files(pipeline: Pipeline) -> None:
    """Files of one batch with different fields and types are unioned by name."""
    pipeline.devices([("dev1", REGION)])
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/a.json", ndjson(good("dev1", 1, extra_a=1)))
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/b.json", ndjson(good("dev1", 2, extra_b="x")))
    pipeline.run()
    rows = pipeline.rows(order_by="seq")
    assert [(r["extra_a"], r["extra_b"]) for r in rows] == [(1, None), (None, "x")]


def test_type_conflict_between_fast_and_line_path(pipeline: Pipeline) -> None:
    """A field that is a number in a clean file (fast path) and a string or object in a file with
    a bad line (line path) keeps every value."""
    pipeline.devices([("dev1", REGION)])
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/a.json", ndjson(good("dev1", 1, extra=1)))
    pipeline.raw.write_bytes(
        f"dev1/{HOUR_KEY}/b.json",
        ndjson(good("dev1", 2, extra="x"), good("dev1", 3, extra={"k": 1}), "broken"),
    )
    (report,) = pipeline.run()
    assert (report.rows, report.quarantined_lines, report.line_path_files) == (3, 1, 1)
    values = [
        json.loads(v) if isinstance(v, str) and v[:1] in '{"' else v
        for (v,) in pipeline.conn.execute(
            "SELECT extra::VARCHAR FROM read_parquet(?, hive_partitioning = true) ORDER BY seq",
            [pipeline.glob("datalog_v2")],
        ).fetchall()
    ]
    assert values == ["1", "x", {"k": 1}]


def test_fields_after_the_inference_sample_are_kept(pipeline: Pipeline) -> None:
    """A field or type that first appears deep in a large file is neither dropped nor nulled."""
    pipeline.devices([("dev1", REGION)])
    lines = [good("dev1", i, BASE, level=i) for i in range(25_000)]
    lines.append(good("dev1", 25_000, BASE, level="high", late_field="here"))
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/big.json", ndjson(*lines))
    (report,) = pipeline.run()
    assert report.rows == 25_001
    (last,) = pipeline.conn.execute(
        "SELECT level::VARCHAR, late_field FROM read_parquet(?, hive_partitioning = true) WHERE seq = 25000",
        [pipeline.glob("datalog_v2")],
    ).fetchall()
    # a column of numbers and strings becomes JSON: the late string survives as JSON text
    assert (last[0].strip('"'), last[1]) == ("high", "here")


def test_rerun_with_nothing_new_writes_nothing(pipeline: Pipeline) -> None:
    """(g) a second run claims nothing and leaves the lake listing unchanged."""
    pipeline.devices([("dev1", REGION)])
    pipeline.raw.write_bytes(f"dev1/{HOUR_KEY}/log.json", ndjson(good("dev1", 1), "bad"))
    assert len(pipeline.run()) == 1
    before = [(o.key, o.size) for o in pipeline.lake.list()]
    assert pipeline.run() == []
    assert [(o.key, o.size) for o in pipeline.lake.list()] == before
    assert len(pipeline.rows()) == 1


@pytest.mark.parametrize("rows_per_file", [1, 3])
def test_many_files_each_row_once(pipeline: Pipeline, rows_per_file: int) -> None:
    """Several devices and files in one partition: every good row lands exactly once."""
    pipeline.devices([("dev1", REGION), ("dev2", REGION)])
    expected = []
    for device in ("dev1", "dev2"):
        for n in range(4):
            key = f"{device}/{HOUR_KEY}/log-{n}.json"
            seqs = [n * 10 + i for i in range(rows_per_file)]
            pipeline.raw.write_bytes(key, ndjson(*(good(device, s) for s in seqs)))
            expected += [(device, s, key) for s in seqs]
    (report,) = pipeline.run()
    assert report.rows == len(expected)
    got = [(r["device_id"], r["seq"], r["source_file"]) for r in pipeline.rows()]
    assert sorted(got) == sorted(expected)
