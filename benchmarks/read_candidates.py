"""What reading the raw files costs with each way of not losing a field, and what a record's identity costs.

    .venv/bin/python benchmarks/read_candidates.py          # about 2 minutes on 2 cores

On the standard set of `make bench` (generated here if missing), each candidate runs twice in
one DuckDB connection (1GB, the machine's cores) and its faster run is kept; the figures go to
benchmarks/REPORT.md between its own markers. Reading a field the ledger does not know yet must
not drop it, so a read either infers types from every line (the sniff) or reads the known columns
and finds unknown keys some other way (a census of every line's keys):

- default sample: `read_json` as a hand-written COPY does it (types from a sample; unsafe);
- known columns, typed: `read_json` with the ledger's columns and types given, no inference
  (unsafe alone: it drops keys it was not given, and casts what does not fit, see below);
- known columns as JSON: the same with every column JSON (keeps each value's text, untyped);
- full sniff: `union_by_name`, `sample_size = -1`, what the platform reads with;
- key census by `json_keys`: the distinct key lists of the lines, to pair with a known-columns read;
- key census by a regular expression over the lines (RE2 in DuckDB);
- type census: the JSON types each field's values have, over the JSON read, which the typed read
  would need to keep the sniff's rules;
- key and type census in one query: `json_keys` of the record and of its struct fields and
  `json_type` of every known path, over the raw lines (what the typed read would need beside it);
- every known field read as text (structs as JSON) and cast to its type in the same statement,
  so that a value that does not fit is seen instead of converted;
- the sniff's inference alone: `DESCRIBE` of the full sniff's read (DuckDB infers while binding).

Every read materializes all its columns into a table; a query of one column would let DuckDB's
reader skip parsing the others.

Identity: the MD5 of the record's text (the platform's `_record_hash` before) against the XOR of
DuckDB's `hash()` of each field (now), over the same typed rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data import generated_set  # noqa: E402
from report_sections import write_section  # noqa: E402

BEGIN, END = "<!-- read-candidates:begin -->", "<!-- read-candidates:end -->"
KNOWN_TYPES = {
    "device_id": "VARCHAR",
    "heartbeat": "JSON",
    "temperature": "DOUBLE",
    "humidity": "DOUBLE",
    "pcv_temperature": "DOUBLE",
    "status": "STRUCT(battery BIGINT, rssi BIGINT)",
    "seq": "BIGINT",
}


def columns(types: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in types.items()) + "}"


KNOWN = columns(KNOWN_TYPES)
AS_JSON = columns(dict.fromkeys(KNOWN_TYPES, "JSON"))
AS_TEXT = columns({name: "JSON" if kind.startswith("STRUCT") else "VARCHAR" for name, kind in KNOWN_TYPES.items()})
KNOWN_PATHS = "[" + ", ".join(f"'$.{name}'" for name in KNOWN_TYPES) + ", '$.status.battery', '$.status.rssi']"


def cast_from_text(name: str, kind: str) -> str:
    """A known field read as text (a struct as JSON) to its type, keeping what does not fit
    visible: an integer's text must cast to the same number as a DOUBLE and as a BIGINT (21.7
    does not), a struct must be a JSON object."""
    if kind == "DOUBLE":
        return f"TRY_CAST({name} AS DOUBLE) AS {name}"
    if kind == "BIGINT":
        whole = f"TRY_CAST({name} AS BIGINT)"
        return f"CASE WHEN TRY_CAST({name} AS DOUBLE) = {whole} THEN {whole} END AS {name}"
    if kind.startswith("STRUCT"):
        leaves = """'{"battery": "VARCHAR", "rssi": "VARCHAR"}'"""
        return f"json_type({name}) = 'OBJECT' AS {name}_is_object, json_transform({name}, {leaves}) AS {name}"
    return name


CAST_FROM_TEXT = ", ".join(cast_from_text(name, kind) for name, kind in KNOWN_TYPES.items())
FILES = "getvariable('files'), format = 'newline_delimited', ignore_errors = true, hive_partitioning = false"
INFERENCE = "the sniff's inference alone (DESCRIBE of the full sniff's read)"
# Every read materializes every column: a query of one column would let the reader skip the others.
READS = {
    "default sample (unsafe)": f"CREATE OR REPLACE TEMP TABLE r AS SELECT * FROM read_json({FILES})",
    "known columns, typed, no inference (lossy alone)": (
        f"CREATE OR REPLACE TEMP TABLE r AS SELECT * FROM read_json({FILES}, columns = {KNOWN})"
    ),
    "known columns as JSON, no inference (untyped)": (
        f"CREATE OR REPLACE TEMP TABLE r AS SELECT * FROM read_json({FILES}, columns = {AS_JSON})"
    ),
    "full sniff: union_by_name, sample_size = -1 (the platform)": (
        f"CREATE OR REPLACE TEMP TABLE r AS SELECT * FROM read_json({FILES}, union_by_name = true, sample_size = -1)"
    ),
    "key census: the distinct key lists of the lines (json_keys)": (
        "SELECT DISTINCT json_keys(json) FROM read_ndjson_objects(getvariable('files'), ignore_errors = true)"
    ),
    "key and type census in one query: json_keys and json_type of every known path": (
        "SELECT json_keys(json, ['$', '$.status']), json_type(json, " + KNOWN_PATHS + "), count(*) "
        "FROM read_ndjson_objects(getvariable('files'), ignore_errors = true) GROUP BY ALL"
    ),
    "every known field as text, cast to its type in the same statement": (
        f"CREATE OR REPLACE TEMP TABLE r AS SELECT {CAST_FROM_TEXT} FROM read_json({FILES}, columns = {AS_TEXT})"
    ),
    INFERENCE: f"DESCRIBE SELECT * FROM read_json({FILES}, union_by_name = true, sample_size = -1)",
    "key census: regular expression over every line": (
        """SELECT count(DISTINCT k) FROM (
            SELECT unnest(regexp_extract_all(line, '"((?:[^"\\\\]|\\\\.)*)"\\s*:', 1)) AS k
        FROM read_csv(getvariable('files'), columns = {'line': 'VARCHAR'}, delim = E'\\x01', quote = '',
            escape = '', header = false, auto_detect = false))"""
    ),
}
# After the JSON read above, in table `r`: which JSON types each field's values have.
TYPE_CENSUS = "SELECT " + ", ".join(f"list(DISTINCT json_type({name}))" for name in KNOWN_TYPES) + " FROM r"
# Values that do not fit their known column, and what the typed read makes of each.
LOSSY = (
    ("temperature", '"warm"'),
    ("temperature", "true"),
    ("seq", "21.7"),
    ("seq", "1e20"),
    ("status", '{"battery": 1.5, "rssi": -80}'),
    ("status", '{"battery": 40, "rssi": -80, "charging": true}'),
    ("status", '"ok"'),
)
TEXT = (
    "concat_ws(chr(31), CAST(ts AS VARCHAR), 'device_id=' || device_id, 'humidity=' || CAST(humidity AS VARCHAR), "
    "'pcv_temperature=' || CAST(pcv_temperature AS VARCHAR), 'seq=' || CAST(CAST(seq AS DOUBLE) AS VARCHAR), "
    "'status=' || CAST(status AS VARCHAR), 'temperature=' || CAST(temperature AS VARCHAR))"
)
XOR = "hash(ts)"
for name, value in (
    ("device_id", "device_id"),
    ("humidity", "humidity"),
    ("pcv_temperature", "pcv_temperature"),
    ("seq", "CAST(seq AS DOUBLE)"),
    ("status", "status"),
    ("temperature", "temperature"),
):
    XOR = f"xor({XOR}, CASE WHEN {name} IS NOT NULL THEN hash('{name}', {value}) ELSE 0::UBIGINT END)"
IDENTITIES = {
    "MD5 of the record's text (before)": f"SELECT sum(md5_number_lower({TEXT}) & 1) FROM rows",
    "XOR of DuckDB hash() per field (now)": f"SELECT sum({XOR} & 1) FROM rows",
}


def best_of_two(conn: duckdb.DuckDBPyConnection, sql: str) -> float:
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        conn.execute(sql).fetchall()
        runs.append(time.perf_counter() - started)
    return min(runs)


def cpu_and_wall(conn: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, float]:
    """CPU seconds (all of this process's threads) and wall seconds of one run of `sql`."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    conn.execute(sql).fetchall()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def typed_read_of(conn: duckdb.DuckDBPyConnection, path: Path) -> list[tuple[str, str, str, str]]:
    """(field, value in the line, the value the typed read returned with `ignore_errors`, and
    without it) for each of `LOSSY`, one line a file; without `ignore_errors` a value the reader
    cannot cast fails the read, which would send the batch to the sniff, and is shown as `error`."""
    names = list(KNOWN_TYPES)
    read = []
    for n, (name, value) in enumerate(LOSSY):
        path.write_text(f'{{"device_id": "d", "heartbeat": {n}, "{name}": {value}}}\n')
        found = []
        for options in ("ignore_errors = true, ", ""):
            try:
                (row,) = conn.execute(
                    f"SELECT * FROM read_json($path, format = 'newline_delimited', {options}columns = {KNOWN})",
                    {"path": str(path)},
                ).fetchall()
                found.append(str(row[names.index(name)]))
            except duckdb.InvalidInputException:
                found.append("error")
        read.append((name, value, *found))
    return read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=HERE / "data")
    parser.add_argument("--report", type=Path, default=HERE / "REPORT.md")
    args = parser.parse_args()
    raw = args.workdir / "standard" / "raw"
    if not raw.is_dir():
        generated_set(args.workdir / "standard", devices=50, hours=24, rows=2000)
    files = sorted(str(p) for p in raw.rglob("*.json"))
    conn = duckdb.connect(
        config={"memory_limit": "1GB", "threads": os.cpu_count() or 2, "preserve_insertion_order": False}
    )
    conn.execute("SET VARIABLE files = $files", {"files": files})
    (rows,) = conn.execute(f"SELECT count(*) FROM read_json({FILES}, columns = {KNOWN})").fetchone()
    reads = {name: best_of_two(conn, sql) for name, sql in READS.items()}
    conn.execute(READS["known columns as JSON, no inference (untyped)"])
    reads["type census: the JSON types of each field, over the JSON read"] = best_of_two(conn, TYPE_CENSUS)
    inference_cpu, inference_wall = cpu_and_wall(conn, READS[INFERENCE])
    lossy = typed_read_of(conn, args.workdir / "lossy.json")
    conn.execute(
        f"CREATE TABLE rows AS SELECT *, TIMESTAMP '2026-11-01' + to_seconds(seq) AS ts "
        f"FROM read_json({FILES}, columns = {KNOWN})"
    )
    identities = {name: best_of_two(conn, sql) for name, sql in IDENTITIES.items()}
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "files": len(files),
        "rows": rows,
        "reads": reads,
        "inference_cpu_seconds": inference_cpu,
        "inference_wall_seconds": inference_wall,
        "identities": identities,
        "typed_read_of": lossy,
    }
    (HERE / "read_candidates.json").write_text(json.dumps(results, indent=2) + "\n")
    base = reads["default sample (unsafe)"]
    lines = [
        BEGIN,
        f"Measured {results['date']} with `python benchmarks/read_candidates.py`: {len(files):,} files, "
        f"{rows:,} rows, the faster of two runs each.",
        "",
        "| reading the raw files | seconds | vs the default sample |",
        "|---|---|---|",
        *(f"| {name} | {s:.2f} | {s / base:.2f} x |" for name, s in reads.items()),
        "",
        f"The sniff's inference once more, with its CPU time: {inference_cpu:.2f} s of CPU in {inference_wall:.2f} s "
        f"({inference_cpu / inference_wall:.1f} cores busy on average).",
        "",
        "What the typed read makes of a value that does not fit its known column, with `ignore_errors` "
        "(which a batch with a malformed line needs) and without it (`error`: the read fails):",
        "",
        "| field: type | value in the line | read, ignore_errors | read, strict |",
        "|---|---|---|---|",
        *(f"| {f}: {KNOWN_TYPES[f]} | `{value}` | `{read}` | `{strict}` |" for f, value, read, strict in lossy),
        "",
        "| a record's identity over the typed rows | seconds |",
        "|---|---|",
        *(f"| {name} | {s:.2f} |" for name, s in identities.items()),
        END,
    ]
    figures = "\n".join(lines)
    print(figures)
    write_section(args.report, BEGIN, END, figures, "Reading without losing a field")
    return 0


if __name__ == "__main__":
    sys.exit(main())
