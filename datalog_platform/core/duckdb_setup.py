"""DuckDB per run: settings from configuration, httpfs from the PyPI wheel, S3 access as parameters."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import duckdb_extension_httpfs

from datalog_platform.core.store import S3Access


def httpfs_extension_path() -> Path:
    """The httpfs build shipped in `duckdb-extension-httpfs`; it must match duckdb's version exactly."""
    path = (
        Path(duckdb_extension_httpfs.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "httpfs.duckdb_extension"
    )
    if not path.is_file():
        raise RuntimeError(
            f"httpfs for duckdb {duckdb.__version__} not found at {path}: install "
            f"duckdb-extension-httpfs=={duckdb.__version__}"
        )
    return path


# DuckDB's memory_limit covers its buffers, not all it allocates (readers' buffers, the allocator's
# caches), nor the Python process around it: DuckDB gets this share of a run's RAM limit.
DUCKDB_SHARE = 0.8
_MEMORY_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def duckdb_memory_limit(ram_limit: str) -> str:
    """DuckDB's memory_limit for a run limited to `ram_limit` (`2GB`, `512MiB`): DUCKDB_SHARE of it."""
    match = _MEMORY_SIZE.fullmatch(ram_limit)
    if match is None:
        raise ValueError(f"not a memory size: {ram_limit!r}")
    return f"{float(match[1]) * DUCKDB_SHARE:.4g}{match[2]}"


def connection_config(ram_limit: str, threads: int, spill_dir: Path) -> dict[str, object]:
    """DuckDB settings for one run: memory bounded by the run's RAM limit, spilling to disk beyond
    it, no extension downloads.

    DuckDB creates only the last level of its temp directory, and only once it has to spill: on a
    new DATALOG_HOME the first spill would fail. The directory is made here, with its parents."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    return {
        "memory_limit": duckdb_memory_limit(ram_limit),
        "threads": threads,
        "temp_directory": str(spill_dir),
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }


def enable_s3(conn: duckdb.DuckDBPyConnection, access: S3Access) -> None:
    """Load httpfs and point it at the same endpoint and credentials as boto3 (values as parameters)."""
    conn.load_extension(str(httpfs_extension_path()))
    conn.execute("SET s3_region = ?", [access.region])
    if access.endpoint_url:
        scheme, _, host = access.endpoint_url.partition("://")
        conn.execute("SET s3_endpoint = ?", [host.rstrip("/")])
        conn.execute("SET s3_use_ssl = ?", [scheme == "https"])
        conn.execute("SET s3_url_style = 'path'")
    for setting, value in (
        ("s3_access_key_id", access.access_key_id),
        ("s3_secret_access_key", access.secret_access_key),
        ("s3_session_token", access.session_token),
    ):
        if value:
            conn.execute(f"SET {setting} = ?", [value])
