"""A run's DuckDB connection settings (`core/duckdb_setup.connection_config`): bounded memory that
spills to the home's temp directory, even on a DATALOG_HOME that does not exist yet.

Real parts: an in-memory DuckDB with those settings, sorting more rows than its memory limit holds.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from datalog_platform.core.duckdb_setup import connection_config, duckdb_memory_limit


def test_a_run_on_a_new_home_can_spill(tmp_path: Path) -> None:
    """DuckDB makes only the last level of its temp directory, and only when it spills; the
    settings make the whole path, so a query larger than the memory limit spills instead of failing."""
    spill_dir = tmp_path / "new-home" / "tmp" / "duckdb"
    conn = duckdb.connect(config=connection_config("100MB", 2, spill_dir))
    (count,) = conn.execute(
        "SELECT count(*) FROM (SELECT i, md5(i::VARCHAR) AS h FROM range(6000000) t(i) ORDER BY h)"
    ).fetchone()
    assert count == 6_000_000
    assert spill_dir.is_dir()


def test_duckdb_gets_four_fifths_of_the_run_ram_limit(tmp_path: Path) -> None:
    conn = duckdb.connect(config=connection_config("1GB", 1, tmp_path))
    (limit,) = conn.execute("SELECT current_setting('memory_limit')").fetchone()
    assert (
        limit
        == duckdb.connect(config={"memory_limit": "0.8GB"})
        .execute("SELECT current_setting('memory_limit')")
        .fetchone()[0]
    )
    assert [duckdb_memory_limit(size) for size in ("512MB", "2GB", "1.5GiB", "100mb")] == [
        "409.6MB", "1.6GB", "1.2GiB", "80mb",
    ]  # fmt: skip
