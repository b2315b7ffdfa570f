"""Helpers for the CLI tests: run `datalog` in a subprocess and read what it printed; a lake filled
by `datalog ingest` for the webserver and browser tests.

Everything here talks to real parts: the `datalog` command in a child Python process, local
directories, and the Dagster instance the CLI records its runs in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from datalog_platform.core.generate import device_registry, generate, registry_csv
from datalog_platform.core.store import LocalStore
from datalog_platform.settings import Settings
from datalog_platform_tests.support.daemon_helpers import service_env

TZ_OFFSET_HOURS = 8
# Variables the platform or boto3 read; the test process's own values must not leak into a scenario.
_SCRUBBED_PREFIXES = ("DATALOG_", "DAGSTER_", "AWS_")

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


def sqlite_url(home: Path) -> str:
    """The ledger `datalog` uses under DATALOG_HOME `home` when DATALOG_LEDGER_URL is not set."""
    return f"sqlite:///{home / 'ledger.db'}"


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
    env = service_env(tmp_path / "home", tmp_path / "dagster_home", TZ_OFFSET_HOURS, **extra_env)
    settings = Settings.from_env(env)
    run_ok(env, "dagster-home")
    registry = device_registry(2)
    regions = sorted({region for _, region in registry})
    assert len(regions) == 2
    run_ok(env, "devices", "load", str(write_csv(tmp_path / "registry.csv", registry_csv(registry).decode())))
    generate(LocalStore(settings.raw_url), devices=2, hours=26, rows=10, seed=5, start=TWO_DAYS_START, bad_file_share=0)
    run_ok(env, "ingest")
    return IngestedLake(env, settings, regions)
