"""`dagster definitions validate` accepts the code location, run as a user runs it.

Real parts only: the virtualenv's `dagster` command in a child process, with DAGSTER_HOME and
DATALOG_HOME in tmp_path. Nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from datalog_platform_tests.support import cli_helpers


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    """`dagster definitions validate -m datalog_platform.definitions` accepts the code location."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = cli_helpers.cli_env(tmp_path / "home", DAGSTER_HOME=str(dagster_home))
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "datalog_platform.definitions"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, cli_helpers.describe(proc)
    assert "Validation successful" in proc.stdout + proc.stderr, cli_helpers.describe(proc)
