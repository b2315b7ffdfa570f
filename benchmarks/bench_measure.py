"""Child processes timed and measured one by one, and the bare DuckDB COPY that every contender
is compared with.

Every contender except the bare COPY runs in a child process of its own, started by a small
wrapper process that reports the child's wall time and `ru_maxrss` (`RUSAGE_CHILDREN` of the
wrapper, whose only child it is), so one child's peak never mixes with another's or with the
benchmark's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from datalog_platform.core.transform.timestamps import install_macros, with_instant


@dataclass
class Child:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


# Runs the command given after the result path, then writes its exit code, wall seconds and
# ru_maxrss (KB) there. The command is forked from this small process: a child forked straight
# from the benchmark process would start with the benchmark's own resident set (1 GB after a bare
# COPY) as its ru_maxrss.
_WRAPPER = """
import json, resource, subprocess, sys, time
path, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
try:
    code = subprocess.run(command, timeout=timeout or None).returncode
except subprocess.TimeoutExpired:
    code = -9
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(path, "w") as f:
    json.dump({"code": code, "seconds": seconds, "maxrss_kb": peak}, f)
"""


def run_child(command: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> Child:
    """Run `command` to its end: exit code, output, wall seconds and the child's own peak RSS.
    After `timeout` seconds the child is killed (exit code -9)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        wrapper = [sys.executable, "-c", _WRAPPER, str(result), str(timeout or 0), *command]
        subprocess.run(wrapper, env=env, stdout=out, stderr=err, check=True)
        measured = json.loads(result.read_text())
        out.seek(0)
        err.seek(0)
        return Child(
            code=measured["code"],
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            seconds=measured["seconds"],
            peak_rss_mb=measured["maxrss_kb"] / 1024,  # KB on Linux
        )


def datalog_env(home: Path, raw: Path, ram_limit: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATALOG_HOME": str(home),
        "DATALOG_RAW_URL": str(raw),
        "DATALOG_RAM_LIMIT": ram_limit,
        "DAGSTER_HOME": str(home / "dagster"),
    }


def datalog(args: list[str], env: dict[str, str], timeout: float | None = None) -> Child:
    return run_child([sys.executable, "-m", "datalog_platform.cli", *args], env, timeout)


def load_devices(env: dict[str, str], registry_path: Path) -> float:
    """`datalog devices load`; its wall seconds. A failure here is the benchmark's own error."""
    child = datalog(["devices", "load", str(registry_path)], env)
    if child.code:
        raise RuntimeError(f"datalog devices load failed: {child.stderr.strip()}")
    return child.seconds


_EXCEPTION_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception)\b:? ")


def first_error(stderr: str) -> str:
    """The first line of stderr that names an exception other than Dagster's wrapper of a
    failed step; else the first line that mentions an error; else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith("dagster.")]
    mentioned = [line for line in lines if "Error" in line or line.startswith("datalog:")]
    return (named or mentioned or lines[-1:] or [""])[0][:500]


def ledger_errors(home: Path, limit: int = 3) -> list[str]:
    """Distinct `error` texts of the keys and batches of a SQLite ledger (empty if none)."""
    path = home / "ledger.db"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT error FROM keys WHERE error IS NOT NULL UNION SELECT error FROM batches "
                "WHERE error IS NOT NULL LIMIT ?",
                [limit],
            ).fetchall()
    except sqlite3.Error:
        return []
    return [str(error).strip().splitlines()[0][:500] for (error,) in rows if str(error).strip()]


def ingest(env: dict[str, str], timeout: float | None = None) -> dict:
    """One `datalog ingest --json` child: its summary (if it printed one) with `wall_seconds`,
    `peak_rss_mb`, `exit_code` and, when it failed, `error`."""
    child = datalog(["ingest", "--json"], env, timeout)
    try:
        summary = json.loads(child.stdout)
    except json.JSONDecodeError:
        summary = {}
    summary.update(wall_seconds=child.seconds, peak_rss_mb=child.peak_rss_mb, exit_code=child.code)
    if child.code or summary.get("failed_runs"):
        errors = ledger_errors(Path(env["DATALOG_HOME"]))
        if child.code == -9 and timeout:
            summary["error"] = f"killed after the benchmark's time limit of {timeout:.0f} s"
        else:
            summary["error"] = errors[0] if errors else first_error(child.stderr)
        summary["ledger_errors"] = errors
    return summary


def fresh_ingest(home: Path, raw: Path, registry_path: Path, ram_limit: str, timeout: float | None = None) -> dict:
    """A fresh `datalog ingest` (new ledger, lake and Dagster instance) timed end to end; the
    devices are loaded first, by a child of their own."""
    shutil.rmtree(home, ignore_errors=True)
    env = datalog_env(home, raw, ram_limit)
    devices_seconds = load_devices(env, registry_path)
    return {**ingest(env, timeout), "devices_load_seconds": devices_seconds}


def startup(env: dict[str, str]) -> dict:
    """Start-up on its own: `datalog --help`, and a child that only imports what an ingest run
    imports (the CLI, Dagster, the definitions)."""
    help_child = datalog(["--help"], env)
    imports = run_child(
        [sys.executable, "-c", "import datalog_platform.cli, dagster, datalog_platform.defs.wiring"], env
    )
    return {"help_seconds": help_child.seconds, "import_seconds": imports.seconds}


def source_files(raw: Path) -> list[str]:
    return sorted(str(p) for p in raw.rglob("*.json*") if "_registry" not in p.parts)


def bare_copy(raw: Path, registry: list[tuple[str, str]], out: Path, ram_limit: str, schema_safe: bool) -> dict:
    """One DuckDB COPY of every raw file to hive Parquet: the conversion without the platform.

    schema_safe=False is what a hand-written COPY does (types from the first 32 files);
    schema_safe=True infers from every line of every file, as the platform must so that no
    field is silently dropped.
    """
    shutil.rmtree(out, ignore_errors=True)
    files = source_files(raw)
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
    conn.close()
    return {"rows": count, "files": len(files), "seconds": seconds}


def parquet_rows(root: Path) -> int:
    """Rows of every Parquet file under `root` (0 if there is none)."""
    if not any(root.rglob("*.parquet")):
        return 0
    (count,) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet')").fetchone()
    return count


def warm_page_cache(raw: Path) -> None:
    """Every contender then reads the files from memory, whichever goes first."""
    for path in raw.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass
