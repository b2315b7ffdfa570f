"""Throughput of `datalog ingest` against bare DuckDB on the same files, in one run.

    .venv/bin/python benchmarks/run_benchmark.py            # standard set, ~5 minutes on 2 cores

Sets: (1) 50 devices x 24 hours x 2,000 rows (2.4 M rows, about 470 MB of NDJSON) in 3 regions;
(2) 20,000 files of 5 rows. For each set, bare DuckDB converts every file to hive Parquet with one
COPY (same columns, same timestamp rules, no ledger, no quarantine, no Dagster), then a fresh
`datalog ingest` does the whole job end to end in a child process with DATALOG_RAM_LIMIT set.
The figures go to benchmarks/results.json and between the markers of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from datalog_platform.core.generate import generate, registry_csv
from datalog_platform.core.store import LocalStore
from datalog_platform.core.transform.timestamps import install_macros, with_instant

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def bare_copy(raw: Path, registry: list[tuple[str, str]], out: Path, ram_limit: str, schema_safe: bool) -> dict:
    """One DuckDB COPY of every raw file to hive Parquet: the conversion without the platform.

    schema_safe=False is what a hand-written COPY does (types from the first 32 files);
    schema_safe=True infers from every line of every file, as the platform must so that no
    field is silently dropped.
    """
    shutil.rmtree(out, ignore_errors=True)
    files = sorted(str(p) for p in raw.rglob("*.json*") if "_registry" not in p.parts)
    conn = duckdb.connect(
        config={"memory_limit": ram_limit, "threads": os.cpu_count() or 2, "preserve_insertion_order": False}
    )
    install_macros(conn)
    conn.execute(
        "CREATE TABLE registry AS SELECT unnest(?) AS device_id, unnest(?) AS dstrct_code",
        [[d for d, _ in registry], [r for _, r in registry]],
    )
    options = "union_by_name = true, sample_size = -1" if schema_safe else "union_by_name = false"
    source = (
        "SELECT * FROM read_json($files, format = 'newline_delimited', ignore_errors = true, "
        f"filename = 'source_file', hive_partitioning = false, {options})"
    )
    rows = with_instant(source, "to_json(heartbeat)", "JSON", "__ts")
    started = time.perf_counter()
    (count,) = conn.execute(
        f"""COPY (SELECT j.* EXCLUDE (__ts), j.__ts + INTERVAL 8 HOUR AS datetime_wita,
                strftime(j.__ts + INTERVAL 8 HOUR, '%Y-%m-%d') AS hiveperiod, r.dstrct_code
            FROM ({rows}) j JOIN registry r USING (device_id) WHERE j.__ts IS NOT NULL)
        TO $target (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (hiveperiod, dstrct_code))""",
        {"files": files, "target": str(out)},
    ).fetchone()
    seconds = time.perf_counter() - started
    return {"rows": count, "files": len(files), "seconds": seconds}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datalog_platform.cli", *args], env=env, capture_output=True, text=True, check=True
    )


def datalog_ingest(home: Path, raw: Path, registry_path: Path, ram_limit: str) -> dict:
    """A fresh `datalog ingest` (new ledger, lake and Dagster instance) timed end to end."""
    shutil.rmtree(home, ignore_errors=True)
    env = {
        **os.environ,
        "DATALOG_HOME": str(home),
        "DATALOG_RAW_URL": str(raw),
        "DATALOG_RAM_LIMIT": ram_limit,
        "DAGSTER_HOME": str(home / "dagster"),
    }
    run_cli(["devices", "load", str(registry_path)], env)
    started = time.perf_counter()
    summary = json.loads(run_cli(["ingest", "--json"], env).stdout)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def warm_page_cache(raw: Path) -> None:
    """Both contenders then read the files from memory, whichever goes first."""
    for path in raw.rglob("*"):
        if path.is_file():
            path.read_bytes()


def megabytes(size: str) -> int:
    """`1GB` / `512MB` (DuckDB's memory_limit notation) -> MB."""
    number, unit = size.upper().rstrip("B").rstrip("GM"), size.upper().rstrip("B")[-1]
    return int(float(number) * (1024 if unit == "G" else 1))


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
    }


def measure_set(name: str, work: Path, devices: int, hours: int, rows: int, ram_limit: str) -> dict:
    raw = work / name / "raw"
    shutil.rmtree(work / name, ignore_errors=True)
    gen = generate(LocalStore(raw), devices=devices, hours=hours, rows=rows, seed=42, gzip_share=0.0)
    registry_path = work / name / "devices.csv"
    registry_path.write_bytes(registry_csv(gen.devices))
    warm_page_cache(raw)
    naive = bare_copy(raw, gen.devices, work / name / "bare", ram_limit, schema_safe=False)
    safe = bare_copy(raw, gen.devices, work / name / "bare", ram_limit, schema_safe=True)
    ingest = datalog_ingest(work / name / "home", raw, registry_path, ram_limit)
    return {
        "generated": {"files": gen.files, "rows": gen.rows, "bad_lines": gen.bad_lines, "bytes": gen.bytes},
        "bare_naive": naive,
        "bare_schema_safe": safe,
        "ingest": ingest,
    }


def render(results: dict) -> str:
    std, small = results["standard"], results["small_files"]
    ram_mb = results["ram_limit_mb"]
    peak_mb = results["ingest_peak_rss_mb"]

    def rate(part: dict, key: str = "rows", seconds: str = "seconds") -> float:
        return part[key] / part[seconds] if part[seconds] else 0.0

    bare = rate(std["bare_naive"])
    bare_safe = rate(std["bare_schema_safe"])
    step = std["ingest"]["rows"] / std["ingest"]["step_seconds"]
    end = std["ingest"]["rows"] / std["ingest"]["wall_seconds"]
    bare_files = rate(small["bare_naive"], "files")
    end_files = small["ingest"]["keys"] / small["ingest"]["wall_seconds"]
    m = results["machine"]
    g = std["generated"]

    def line(label: str, value: str, ratio: float | None = None, target: float | None = None) -> str:
        verdict = "" if target is None else ("met" if ratio >= target else "missed")
        shown = "" if ratio is None else f"{ratio:.2f} x"
        return f"| {label} | {value} | {shown} | {'' if target is None else f'>= {target} x'} | {verdict} |"

    rows = [
        "| measure | value | ratio to bare DuckDB | target | |",
        "|---|---|---|---|---|",
        line("bare DuckDB COPY, types from the first 32 files", f"{bare:,.0f} rows/s"),
        line("bare DuckDB COPY, types from every line (schema-safe)", f"{bare_safe:,.0f} rows/s", bare_safe / bare),
        line("`datalog_parquet` step's own rows/s", f"{step:,.0f} rows/s", step / bare, 0.8),
        line("... against the schema-safe bare COPY", f"{step:,.0f} rows/s", step / bare_safe, 0.8),
        line(
            "`datalog ingest` end to end", f"{end:,.0f} rows/s ({std['ingest']['wall_seconds']:.1f} s)", end / bare, 0.5
        ),
        line("20,000 files x 5 rows: bare DuckDB", f"{bare_files:,.0f} files/s"),
        line(
            "20,000 files x 5 rows: `datalog ingest` end to end",
            f"{end_files:,.0f} files/s ({small['ingest']['wall_seconds']:.1f} s, {small['ingest']['runs']} runs)",
            end_files / bare_files,
            0.3,
        ),
        f"| peak memory of `datalog ingest` (limit {ram_mb} MB) | {peak_mb:,.0f} MB | | "
        f"<= {ram_mb + 400} MB | {'met' if peak_mb <= ram_mb + 400 else 'missed'} |",
    ]
    return "\n".join(
        [
            BEGIN,
            f"Measured {results['date']} with `{results['command']}`.",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, "
            f"DuckDB {m['duckdb']}.",
            f"Standard set: {g['files']:,} files, {g['rows']:,} rows (+{g['bad_lines']} bad lines), "
            f"{g['bytes'] / 1e6:,.0f} MB; {std['ingest']['runs']} runs, "
            f"{std['ingest']['quarantined_lines']} lines quarantined.",
            "",
            *rows,
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=HERE / "data")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--ram-limit", default="1GB")
    parser.add_argument("--report", type=Path, default=HERE / "REPORT.md")
    args = parser.parse_args()
    work: Path = args.workdir.resolve()
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(),
        "ram_limit_mb": megabytes(args.ram_limit),
        "standard": measure_set("standard", work, args.devices, args.hours, args.rows, args.ram_limit),
        "small_files": measure_set("small_files", work, 1000, 20, 5, args.ram_limit),
    }
    # ru_maxrss of waited-for children: the largest `datalog` process of the run, in KB on Linux.
    results["ingest_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    figures = render(results)
    print(figures)
    report = args.report.read_text() if args.report.exists() else f"# Benchmark report\n\n{BEGIN}\n{END}\n"
    before, _, rest = report.partition(BEGIN)
    _, _, after = rest.partition(END)
    args.report.write_text(before + figures + after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
