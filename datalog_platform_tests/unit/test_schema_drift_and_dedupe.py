"""Schema drift and deduplication, on the local and the S3 store with a SQLite ledger.

Type conflicts and new fields across files and batches (cast where lossless, `_rescued`
otherwise, numeric widening, `schema_fields`), and the same record uploaded twice in one file,
in two files of a batch and in two batches (kept once), next to records that only share the
device and instant (kept, conflicts), and a rebuild keeping each record once. `schema_fields` on
PostgreSQL: the first batch's type wins.

Real parts: conftest's `pipeline` (the local and the moto S3 stores, a SQLite ledger, DuckDB writing
and reading Parquet) and the running PostgreSQL named by DATALOG_TEST_POSTGRES_URL (a fresh schema,
skipped with a visible reason when unset).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import fields
from datalog_platform.core.ledger.records import DATASET
from datalog_platform.core.ledger.schema import create_schema, keys, schema_fields
from datalog_platform_tests.support.ledger_helpers import postgres_schema, postgres_url
from datalog_platform_tests.support.raw_data import epoch_seconds, ndjson

if TYPE_CHECKING:
    from datalog_platform_tests.support.pipeline import Pipeline

REGION = "RG"
BASE = datetime(2026, 11, 1, 0, 0, 0)  # UTC; local date 2026-11-01 at +8


def line(seq: int, heartbeat: Any = None, device: str = "dev1", **values: Any) -> str:
    instant = BASE + timedelta(minutes=seq)
    record = {"device_id": device, "heartbeat": heartbeat or epoch_seconds(instant)}
    record.update({"seq": seq, **values})
    return json.dumps(record, separators=(",", ":"))


def upload(pipeline: Pipeline, name: str, *lines: str, hour: str = "2026110100") -> str:
    key = f"dev1/{hour}/{name}.json"
    pipeline.raw.write_bytes(key, ndjson(*lines))
    return key


def field_rows(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    with pipeline.engine.connect() as conn:
        return {r.field: dict(r._mapping) for r in conn.execute(sa.select(schema_fields)).all()}


def file_types(pipeline: Pipeline, column: str) -> set[str]:
    """The type `column` has in each data file that holds it, read from the Parquet footers."""
    return {
        t
        for (t,) in pipeline.conn.execute(
            "SELECT DISTINCT type FROM parquet_schema(?) WHERE name = ?", [pipeline.glob(DATASET), column]
        ).fetchall()
    }


def test_conflicting_types_across_batches_are_cast_or_rescued(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    first = upload(pipeline, "a", line(1, temperature=20.5), line(2, temperature=21.0))
    (report1,) = pipeline.run()
    second_number = upload(pipeline, "b", line(3, temperature=22.25), hour="2026110101")
    second_text = upload(
        pipeline, "c", line(4, temperature="21.5"), line(5, temperature="warm", firmware="v2"), hour="2026110101"
    )
    (report2,) = pipeline.run()

    rows = {r["seq"]: (r["temperature"], r["_rescued"]) for r in pipeline.rows(order_by="seq")}
    assert rows == {
        1: (20.5, None),
        2: (21.0, None),
        3: (22.25, None),
        4: (21.5, None),  # "21.5" casts to the DOUBLE without loss
        5: (None, '{"temperature":"warm"}'),
    }
    assert file_types(pipeline, "temperature") == {"DOUBLE"}
    assert report1.new_fields == ["device_id", "heartbeat", "seq", "temperature"]
    assert (report2.new_fields, report2.rescued_values) == (["firmware"], {"temperature": 1})
    known = field_rows(pipeline)
    assert {f: r["type"] for f, r in known.items()} == {
        "device_id": "VARCHAR",
        "heartbeat": "VARCHAR",
        "seq": "BIGINT",
        "temperature": "DOUBLE",
        "firmware": "VARCHAR",
    }
    assert (known["temperature"]["first_key"], known["temperature"]["first_batch_id"]) == (first, report1.batch_id)
    assert (known["firmware"]["first_key"], known["firmware"]["first_batch_id"]) == (second_text, report2.batch_id)
    assert second_number != second_text
    changes = fields.schema_changes(pipeline.engine, DATASET, "2026-11-01", REGION)
    assert [(c.field, c.previous_type) for c in changes] == [
        ("device_id", None),
        ("firmware", None),
        ("heartbeat", None),
        ("seq", None),
        ("temperature", None),
    ]


def test_numbers_widen_and_lossy_integer_casts_are_rescued(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    upload(pipeline, "a", line(1, humidity=55, level=3))
    pipeline.run()
    upload(pipeline, "b", line(2, humidity=55.5, level="4"), line(3, humidity=56, level="3.7"), hour="2026110101")
    (report,) = pipeline.run()

    rows = {r["seq"]: (r["humidity"], r["level"], r["_rescued"]) for r in pipeline.rows(order_by="seq")}
    assert rows == {1: (55.0, 3, None), 2: (55.5, 4, None), 3: (56.0, None, '{"level":"3.7"}')}
    known = field_rows(pipeline)
    assert (known["humidity"]["type"], known["humidity"]["previous_type"]) == ("DOUBLE", "BIGINT")
    assert known["humidity"]["changed_by_batch_id"] == report.batch_id
    assert (known["level"]["type"], report.widened_fields, report.rescued_values) == (
        "BIGINT",
        ["humidity"],
        {"level": 1},
    )
    assert file_types(pipeline, "humidity") == {"INT64", "DOUBLE"}  # each file as written; readers see DOUBLE


def test_a_field_without_any_value_is_not_typed_yet(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    upload(pipeline, "a", line(1, spare=None))
    pipeline.run()
    assert "spare" not in field_rows(pipeline) and "spare" not in pipeline.rows()[0]
    upload(pipeline, "b", line(2, spare=7), hour="2026110101")
    pipeline.run()
    assert field_rows(pipeline)["spare"]["type"] == "BIGINT"
    assert [r["spare"] for r in pipeline.rows(order_by="seq")] == [None, 7]


def test_duplicates_in_a_file_and_across_files_of_a_batch_are_written_once(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    same = line(1, temperature=20.5)
    a = upload(pipeline, "a", same, same, line(2, temperature=20.5))
    b = upload(pipeline, "b", same, line(3, temperature=1.0))
    (report,) = pipeline.run()

    assert sorted(r["seq"] for r in pipeline.rows()) == [1, 2, 3]
    assert (report.rows, report.duplicate_rows) == (3, 2)
    ledger = pipeline.key_rows()
    assert (ledger[a]["rows"], ledger[a]["duplicate_rows"]) == (2, 1)  # the first key keeps the record
    assert (ledger[b]["rows"], ledger[b]["duplicate_rows"]) == (1, 1)


def test_duplicates_across_batches_are_dropped_and_conflicts_kept(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    upload(pipeline, "a", line(1, temperature=20.5, humidity=50), line(2, temperature=20.5))
    pipeline.run()
    iso = (BASE + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = upload(
        pipeline,
        "b",
        line(1, heartbeat=iso, temperature="20.5", humidity=50),  # the same record: other heartbeat text
        line(2, temperature=99.0),  # same device and instant as seq 2, other payload: a conflict
        line(2, device="dev2", temperature=20.5),  # same instant and payload, another device
        hour="2026110101",
    )
    (report,) = pipeline.run()

    assert (report.rows, report.duplicate_rows) == (2, 1)
    assert pipeline.key_rows()[later]["duplicate_rows"] == 1
    rows = sorted((r["device_id"], r["seq"], r["temperature"]) for r in pipeline.rows())
    assert rows == [("dev1", 1, 20.5), ("dev1", 2, 20.5), ("dev1", 2, 99.0), ("dev2", 2, 20.5)]
    # a rebuild reads every key again: still each record once
    pipeline.rebuild("2026-11-01", REGION)
    assert sorted((r["device_id"], r["seq"], r["temperature"]) for r in pipeline.rows()) == rows
    with pipeline.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.sum(keys.c.duplicate_rows))).scalar_one() == 1


@pytest.mark.parametrize("stored_as", ["another scheme", "no hash"])
def test_records_stored_under_another_hash_scheme_still_dedupe(
    pipeline: Pipeline, stored_as: str, tmp_path: Path
) -> None:
    """Rows hashed by another DuckDB (or the MD5 of earlier lakes), and rows of lakes from before
    records were hashed, are compared by their hash recomputed from their columns."""
    pipeline.devices([("dev1", REGION)])
    upload(pipeline, "a", line(1, temperature=20.5, status={"battery": 9}), line(2, temperature=21, note="x"))
    pipeline.run()
    if stored_as == "another scheme":
        rewrite = "* REPLACE (_record_hash + 1 AS _record_hash, 'md5' AS _record_hash_scheme)"
    else:
        rewrite = "* EXCLUDE (_record_hash, _record_hash_scheme)"
    for stored in [o.key for o in pipeline.lake.list(f"{DATASET}/")]:
        local = tmp_path / "rewritten.parquet"
        pipeline.conn.execute(
            f"COPY (SELECT {rewrite} FROM read_parquet(?)) TO '{local}' (FORMAT parquet)", [pipeline.lake.uri(stored)]
        )
        pipeline.lake.write_bytes(stored, local.read_bytes())

    later = upload(
        pipeline,
        "b",
        line(1, temperature=20.5, status={"battery": 9}),
        line(2, temperature=21.0, note="x"),  # the same number, read as DOUBLE this time
        line(3, temperature=22.5, pressure=1013),  # new, with a field the stored files lack
        hour="2026110101",
    )
    (report,) = pipeline.run()

    assert (report.rows, report.duplicate_rows) == (1, 2)
    assert pipeline.key_rows()[later]["duplicate_rows"] == 2
    assert sorted(r["seq"] for r in pipeline.rows()) == [1, 2, 3]


def test_first_batch_to_record_a_field_fixes_its_type_on_postgres() -> None:
    with postgres_schema(postgres_url()) as (engine, _):
        create_schema(engine)
        seen = [fields.FieldSeen("temperature", "DOUBLE", "dev1/2026110100/a.json")]
        assert fields.record_fields(engine, DATASET, "b1", "2026-11-01", REGION, seen, {}) == {"temperature": "DOUBLE"}
        late = [fields.FieldSeen("temperature", "VARCHAR", "dev1/2026110101/b.json")]
        assert fields.record_fields(engine, DATASET, "b2", "2026-11-01", REGION, late, {})["temperature"] == "DOUBLE"
        widened = fields.record_fields(
            engine, DATASET, "b3", "2026-11-02", REGION, [], {"temperature": ("DOUBLE", "X")}
        )
        assert widened == {"temperature": "X"}
        # a widening decided on a type that changed meanwhile does not apply
        stale = fields.record_fields(engine, DATASET, "b4", "2026-11-02", REGION, [], {"temperature": ("DOUBLE", "Y")})
        assert stale == {"temperature": "X"}
        changes = fields.schema_changes(engine, DATASET, "2026-11-02", REGION)
        assert [(c.field, c.type, c.previous_type, c.batch_id) for c in changes] == [
            ("temperature", "X", "DOUBLE", "b3")
        ]
