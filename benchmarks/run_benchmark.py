"""Throughput and memory of `datalog ingest` against bare DuckDB, pyarrow and Spark, in one run.

    .venv/bin/python benchmarks/run_benchmark.py                      # everything (`make bench`)
    .venv/bin/python benchmarks/run_benchmark.py --sets peers,growing  # some parts only

Parts (`--sets`, default all):
- standard: 50 devices x 24 hours x 2,000 rows (2.4 M rows, about 390 MB of NDJSON) in 3 regions.
  Bare DuckDB converts every file to hive Parquet with one COPY (same columns, same timestamp
  rules, no ledger, no quarantine, no Dagster), naive and schema-safe; then a fresh
  `datalog ingest` does the whole job in a child process with DATALOG_RAM_LIMIT=--ram-limit.
- peers: pyarrow file by file and Spark local[2] on the standard set (benchmarks/bench_peers.py).
- small: 20,000 files of 5 rows, bare DuckDB and `datalog ingest`.
- scaling: `datalog ingest` at 1, 2 and 4 times the standard set (copies under new device ids).
- bigfile: one raw file of --bigfile-mb with DATALOG_RAM_LIMIT=--bigfile-ram-limit, fresh home.
- growing: 24 hourly batches into one date x region partition, `datalog ingest` after each hour.

Every child's peak RSS is its own (bench_measure.run_child). The figures go to benchmarks/results.json (a run
of some parts keeps the other parts' figures of the last run there), benchmarks/scaling.png and
between the figures markers of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import bench_data
import bench_measure
import duckdb
import pyarrow
from bench_data import DataSet
from bench_plot import plot_scaling
from bench_report import render, replace_figures

HERE = Path(__file__).resolve().parent
SETS = ("standard", "peers", "small", "scaling", "bigfile", "growing")
SCALING_FACTORS = (1, 2, 4)


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


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
    try:
        from importlib.metadata import version

        pyspark = version("pyspark")
    except ImportError:
        pyspark = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "pyspark": pyspark,
    }


def timed_set(make: Callable[[], DataSet]) -> DataSet:
    started = time.perf_counter()
    data = make()
    data.seconds = time.perf_counter() - started
    return data


def bare_and_ingest(name: str, data: DataSet, work: Path, ram_limit: str) -> dict:
    bench_measure.warm_page_cache(data.raw)
    log(f"{name}: bare DuckDB COPY, naive and schema-safe")
    naive = bench_measure.bare_copy(data.raw, data.devices, work / "bare", ram_limit, schema_safe=False)
    safe = bench_measure.bare_copy(data.raw, data.devices, work / "bare", ram_limit, schema_safe=True)
    shutil.rmtree(work / "bare", ignore_errors=True)
    log(f"{name}: datalog ingest")
    ingest = bench_measure.fresh_ingest(work / "home", data.raw, data.registry_path, ram_limit)
    log(f"{name}: {ingest.get('rows', 0):,} rows in {ingest['wall_seconds']:.1f} s")
    return {"generated": data.generated(), "bare_naive": naive, "bare_schema_safe": safe, "ingest": ingest}


def peer(kind: str, data: DataSet, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    bench_measure.warm_page_cache(data.raw)
    log(f"peers: {kind}")
    child = bench_measure.run_child(
        [sys.executable, str(HERE / "bench_peers.py"), kind, str(data.raw), str(data.registry_path), str(out)]
    )
    if child.code:
        log(f"peers: {kind} failed")
        return {"error": bench_measure.first_error(child.stderr), "wall_seconds": child.seconds}
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(wall_seconds=child.seconds, peak_rss_mb=child.peak_rss_mb, rows=bench_measure.parquet_rows(out))
    log(f"peers: {kind}: {result['rows']:,} rows in {child.seconds:.1f} s")
    shutil.rmtree(out, ignore_errors=True)
    return result


def scaling_point(data: DataSet, ingest: dict) -> dict:
    rows = ingest.get("rows") or 0
    return {
        "rows": data.rows,
        "rows_ingested": rows,
        "files": data.files,
        "runs": ingest.get("runs"),
        "wall_seconds": ingest["wall_seconds"],
        "step_seconds": ingest.get("step_seconds"),
        "end_to_end_s_per_m": ingest["wall_seconds"] / (data.rows / 1e6),
        "step_s_per_m": (ingest.get("step_seconds") or 0) / (data.rows / 1e6) or None,
        "peak_rss_mb": ingest["peak_rss_mb"],
        "phase_seconds": ingest.get("phase_seconds"),
        "error": ingest.get("error"),
    }


def measure_scaling(std: DataSet, standard_ingest: dict | None, work: Path, ram_limit: str) -> dict:
    log("scaling: copies of the standard set")
    started = time.perf_counter()
    sets = bench_data.scaled_sets(std, work / "scaling", [f for f in SCALING_FACTORS if f > 1])
    copy_seconds = time.perf_counter() - started
    points = []
    for factor in SCALING_FACTORS:
        if factor == 1 and standard_ingest is not None:
            points.append(scaling_point(std, standard_ingest))
            continue
        data = std if factor == 1 else sets[factor]
        bench_measure.warm_page_cache(data.raw)
        log(f"scaling: datalog ingest of {data.rows:,} rows")
        ingest = bench_measure.fresh_ingest(work / "scaling" / f"home{factor}", data.raw, data.registry_path, ram_limit)
        points.append(scaling_point(data, ingest))
        log(f"scaling: {data.rows:,} rows in {ingest['wall_seconds']:.1f} s, peak {ingest['peak_rss_mb']:,.0f} MB")
        shutil.rmtree(work / "scaling" / f"home{factor}", ignore_errors=True)
    shutil.rmtree(work / "scaling", ignore_errors=True)
    return {
        "ram_limit": ram_limit,
        "ram_limit_mb": megabytes(ram_limit),
        "copy_seconds": copy_seconds,
        "points": points,
    }


def measure_bigfile(std: DataSet, work: Path, target_mb: int, ram_limit: str, timeout: float) -> dict:
    log(f"bigfile: one raw file of {target_mb:,} MB")
    data = timed_set(lambda: bench_data.big_file(std, work / "bigfile", target_mb * 1_000_000))
    bench_measure.warm_page_cache(data.raw)
    log(f"bigfile: datalog ingest of {data.rows:,} lines, DATALOG_RAM_LIMIT={ram_limit}")
    ingest = bench_measure.fresh_ingest(work / "bigfile" / "home", data.raw, data.registry_path, ram_limit, timeout)
    rows = ingest.get("rows") or 0
    success = ingest["exit_code"] == 0 and not ingest.get("failed_runs") and rows == data.rows
    log(f"bigfile: {'success' if success else 'failed'}, {rows:,} rows, peak {ingest['peak_rss_mb']:,.0f} MB")
    shutil.rmtree(work / "bigfile", ignore_errors=True)
    return {
        "bytes": data.bytes,
        "rows": data.rows,
        "build_seconds": data.seconds,
        "ram_limit": ram_limit,
        "success": success,
        "rows_ingested": rows,
        "peak_rss_mb": ingest["peak_rss_mb"],
        "wall_seconds": ingest["wall_seconds"],
        "step_seconds": ingest.get("step_seconds"),
        "error": ingest.get("error"),
        "ingest": ingest,
    }


def measure_growing(work: Path, devices: int, hours: int, rows: int, ram_limit: str) -> dict:
    log(f"growing: {devices} devices x {hours} hours x {rows:,} rows")
    grown = bench_data.growing_partition(work / "growing", devices, hours, rows)
    env = bench_measure.datalog_env(work / "growing" / "home", grown.raw, ram_limit)
    bench_measure.load_devices(env, grown.registry_path)
    batches = []
    for hour in grown.hours:
        grown.deliver(hour)
        ingest = bench_measure.ingest(env)
        batches.append(
            {
                "hour": f"{hour:%Y-%m-%d %H}:00 UTC",
                "keys": ingest.get("keys"),
                "rows": ingest.get("rows"),
                "runs": ingest.get("runs"),
                "step_seconds": ingest.get("step_seconds"),
                "wall_seconds": ingest["wall_seconds"],
                "peak_rss_mb": ingest["peak_rss_mb"],
                "phase_seconds": ingest.get("phase_seconds"),
                "error": ingest.get("error"),
            }
        )
    steps = [b["step_seconds"] for b in batches]
    ratio = steps[-1] / steps[0] if steps[0] and steps[-1] else None
    first3, last3 = steps[:3], steps[-3:]
    ratio_of_3 = statistics.mean(last3) / statistics.mean(first3) if all(first3) and all(last3) else None
    log(f"growing: first step {steps[0]}, last {steps[-1]}")
    shutil.rmtree(work / "growing", ignore_errors=True)
    return {
        "devices": devices,
        "rows_per_file": rows,
        "partition": f"{bench_data.GROWING_LOCAL_DATE} x {bench_data.GROWING_REGION}",
        "rows_in_partition": sum(b["rows"] or 0 for b in batches),
        "batches": batches,
        "ratio": ratio,
        "ratio_of_3": ratio_of_3,
    }


def parse_sets(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    return [s for s in SETS if s in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=parse_sets, default=list(SETS), help=f"comma-separated: {','.join(SETS)}")
    parser.add_argument("--workdir", type=Path, default=HERE / "data")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--ram-limit", default="1GB")
    parser.add_argument("--small-devices", type=int, default=1000)
    parser.add_argument("--small-hours", type=int, default=20)
    parser.add_argument("--small-rows", type=int, default=5)
    parser.add_argument("--bigfile-mb", type=int, default=1200)
    parser.add_argument("--bigfile-ram-limit", default="512MB")
    parser.add_argument(
        "--bigfile-timeout", type=float, default=900, help="seconds before the big file's ingest is killed"
    )
    parser.add_argument("--growing-devices", type=int, default=10)
    parser.add_argument("--growing-hours", type=int, default=24)
    parser.add_argument("--growing-rows", type=int, default=5000)
    parser.add_argument("--report", type=Path, default=HERE / "REPORT.md", help="scaling.png goes next to it")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    started = time.perf_counter()
    work: Path = args.workdir.resolve()
    sets: list[str] = args.sets
    results: dict = {}
    if set(sets) != set(SETS) and args.results.exists():
        results = json.loads(args.results.read_text())
    results.setdefault("measured", {}).update({part: datetime.now(UTC).strftime("%Y-%m-%d %H:%M") for part in sets})
    results.update(
        {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "sets": sets,
            "machine": machine(),
            "ram_limit_mb": megabytes(args.ram_limit),
        }
    )
    std = None
    if {"standard", "peers", "scaling", "bigfile"} & set(sets):
        log("standard: generating")
        std = timed_set(lambda: bench_data.generated_set(work / "standard", args.devices, args.hours, args.rows))
    if "standard" in sets:
        results["standard"] = bare_and_ingest("standard", std, work / "standard", args.ram_limit)
        results["startup"] = bench_measure.startup(bench_measure.datalog_env(work / "startup", std.raw, args.ram_limit))
    if "peers" in sets:
        results["peers"] = {kind: peer(kind, std, work / "peers" / kind) for kind in ("pyarrow", "spark")}
    if "small" in sets:
        log("small files: generating")
        small = timed_set(
            lambda: bench_data.generated_set(
                work / "small_files", args.small_devices, args.small_hours, args.small_rows
            )
        )
        results["small_files"] = bare_and_ingest("small files", small, work / "small_files", args.ram_limit)
    if "scaling" in sets:
        standard_ingest = results["standard"]["ingest"] if "standard" in sets else None
        results["scaling"] = measure_scaling(std, standard_ingest, work, args.ram_limit)
    if "bigfile" in sets:
        results["bigfile"] = measure_bigfile(std, work, args.bigfile_mb, args.bigfile_ram_limit, args.bigfile_timeout)
    if "growing" in sets:
        results["growing"] = measure_growing(
            work, args.growing_devices, args.growing_hours, args.growing_rows, args.ram_limit
        )
    results["total_seconds"] = time.perf_counter() - started
    args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_scaling(results, args.report.parent / "scaling.png")
    figures = render(results)
    print(figures)
    report = args.report.read_text() if args.report.exists() else "# Benchmark report\n"
    args.report.write_text(replace_figures(report, figures))
    log(f"done in {results['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
