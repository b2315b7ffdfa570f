"""Helpers for the CLI and Dagster tests: run `datalog` in a subprocess, read raw data and the lake back.

Everything here talks to real parts: the `datalog` command in a child Python process, local
directories, the moto S3 server (through the platform's own S3Store), DuckDB reading Parquet, and
the Dagster instance the CLI records its runs in.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.generate import device_registry, generate, registry_csv
from datalog_platform.core.ledger.schema import keys
from datalog_platform.core.store import LocalStore, ObjectStore, S3Access, S3Store
from datalog_platform.core.transform.convert import DATASET
from datalog_platform.settings import Settings

TZ_OFFSET_HOURS = 8
# Variables the platform or boto3 read; the test process's own values must not leak into a scenario.
_SCRUBBED_PREFIXES = ("DATALOG_", "DAGSTER_", "AWS_")

RowId = tuple[str, int]  # (source_file, seq): one generated record

TWO_DAYS_START = datetime(2026, 10, 5, 0, 0)  # UTC; at +8 the 26 hours cover 2026-10-05 08:00 to 2026-10-06 09:00
TWO_DAYS = ("2026-10-05", "2026-10-06")


def cli_env(home: Path, **overrides: str) -> dict[str, str]:
    """A clean environment for the `datalog` command: DATALOG_HOME and DAGSTER_HOME under `home`.

    Inherited DATALOG_*, DAGSTER_* and AWS_* variables are dropped so every scenario says what it uses.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(
        {
            "DATALOG_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster_home"),
            "DATALOG_TZ_OFFSET_HOURS": str(TZ_OFFSET_HOURS),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def run_cli(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python -m datalog_platform.cli ARGS` in a child process; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "datalog_platform.cli", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """The exit code and output of a child process, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def run_ok(env: Mapping[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI and require exit code 0."""
    proc = run_cli(env, *args, cwd=cwd)
    assert proc.returncode == 0, describe(proc)
    return proc


def run_json(env: Mapping[str, str], *args: str, expect_code: int = 0) -> dict[str, Any]:
    """Run a `--json` command, require `expect_code`, and return the JSON object it printed."""
    proc = run_cli(env, *args)
    assert proc.returncode == expect_code, describe(proc)
    return json_of(proc)


def json_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON object a `--json` command printed on stdout."""
    try:
        parsed = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:  # pragma: no cover - only on failure
        raise AssertionError(f"stdout is not one JSON object ({exc}):\n{describe(proc)}") from exc
    assert isinstance(parsed, dict), describe(proc)
    return parsed


_GENERATED = re.compile(r"generated (\d+) file\(s\), (\d+) rows \(\+(\d+) bad lines\)")


def generated_counts(stdout: str) -> tuple[int, int, int]:
    """(files, rows, bad lines) from the output of `datalog generate`."""
    match = _GENERATED.search(stdout)
    assert match, f"unexpected `datalog generate` output: {stdout!r}"
    files, rows, bad = (int(g) for g in match.groups())
    return files, rows, bad


def is_raw_log(key: str) -> bool:
    return key.endswith((".json", ".json.gz")) and not key.startswith("_")


def good_records(store: ObjectStore, key: str) -> Iterator[dict[str, Any]]:
    """The records of one raw file that should reach the lake: lines that are valid JSON with a
    usable heartbeat (the generator's two kinds of bad line are left out)."""
    data = store.read_bytes(key)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    for line in data.decode().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("heartbeat") != "not a time":
            yield record


def raw_records(store: ObjectStore) -> set[RowId]:
    """(source key, seq) of every record of the raw store that should reach the lake."""
    return {
        (obj.key, int(record["seq"]))
        for obj in store.list()
        if is_raw_log(obj.key)
        for record in good_records(store, obj.key)
    }


def raw_log_keys(store: ObjectStore) -> list[str]:
    return [o.key for o in store.list() if is_raw_log(o.key)]


def lake_rows(lake_uri: str, access: S3Access | None = None) -> list[dict[str, Any]]:
    """Every row of the lake's dataset (hive columns included), read with DuckDB."""
    conn = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    try:
        if access is not None:
            enable_s3(conn, access)
        cursor = conn.execute(
            "SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
            [f"{lake_uri.rstrip('/')}/{DATASET}/**/*.parquet"],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()


def row_ids(rows: Iterable[Mapping[str, Any]]) -> list[RowId]:
    """(source_file, seq) of each lake row, as a list so duplicates stay visible."""
    return sorted((str(r["source_file"]), int(r["seq"])) for r in rows)


def local_files(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path -> mtime in ns); {} if `root` does not exist."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def key_table(url: str) -> dict[str, dict[str, Any]]:
    """The ledger's keys table by key, read with a short-lived engine of its own."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {r.key: dict(r._mapping) for r in conn.execute(sa.select(keys)).all()}
    finally:
        engine.dispose()


def s3_lake_keys(store: S3Store) -> dict[str, str | None]:
    """Every object of an S3 store (key -> etag)."""
    return {o.key: o.etag for o in store.list()}


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class IngestedLake:
    """A DATALOG_HOME whose raw logs `datalog ingest` has put in the lake, and a prepared DAGSTER_HOME."""

    env: dict[str, str]
    settings: Settings
    regions: list[str]

    @property
    def lake(self) -> Path:
        return Path(self.settings.lake_url)

    @property
    def raw(self) -> LocalStore:
        return LocalStore(self.settings.raw_url)

    @property
    def partitions(self) -> list[tuple[str, str]]:
        return [(d, r) for d in TWO_DAYS for r in self.regions]


def ingest_two_days(tmp_path: Path, **extra_env: str) -> IngestedLake:
    """Two devices in two regions, 26 hours of clean logs from TWO_DAYS_START (two local dates, four
    partitions), loaded and ingested with the `datalog` command under tmp_path/home; DAGSTER_HOME is
    tmp_path/dagster_home, prepared by `datalog dagster-home`. `extra_env` adds variables."""
    home = tmp_path / "home"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DATALOG_HOME": str(home),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "DATALOG_TZ_OFFSET_HOURS": str(TZ_OFFSET_HOURS),
        **extra_env,
    }
    settings = Settings.from_env(env)
    run_ok(env, "dagster-home")
    registry = device_registry(2)
    regions = sorted({region for _, region in registry})
    assert len(regions) == 2
    run_ok(env, "devices", "load", str(write_csv(tmp_path / "registry.csv", registry_csv(registry).decode())))
    generate(LocalStore(settings.raw_url), devices=2, hours=26, rows=10, seed=5, start=TWO_DAYS_START, bad_file_share=0)
    run_ok(env, "ingest")
    return IngestedLake(env, settings, regions)
