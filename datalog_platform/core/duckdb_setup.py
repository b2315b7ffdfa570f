"""DuckDB per run: settings from configuration, httpfs from the PyPI wheel, S3 access as parameters."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import duckdb_extension_httpfs

from datalog_platform.core.store import S3Access
from datalog_platform.core.transform.read import ReadLimits
from datalog_platform.core.transform.timestamps import install_macros


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
# Bytes of each unit as DuckDB reads them: KB, MB, ... are powers of 1000, KiB, MiB, ... of 1024.
_UNITS = {"": 1, "b": 1}
_UNITS.update({f"{p}{suffix}": 1000 ** (i + 1) for i, p in enumerate("kmgt") for suffix in ("", "b")})
_UNITS.update({f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")})
# A reader beside a large parent still gets this share of DuckDB's part of the run's RAM limit.
_READER_FLOOR = 0.25


def duckdb_memory_limit(ram_limit: str) -> str:
    """DuckDB's memory_limit for a run limited to `ram_limit` (`2GB`, `512MiB`): DUCKDB_SHARE of it."""
    match = _MEMORY_SIZE.fullmatch(ram_limit)
    if match is None:
        raise ValueError(f"not a memory size: {ram_limit!r}")
    return f"{float(match[1]) * DUCKDB_SHARE:.4g}{match[2]}"


def memory_bytes(size: str) -> int:
    """A memory size as DuckDB reads it (`2GB`, `1.5GiB`, `512MiB`) in bytes."""
    match = _MEMORY_SIZE.fullmatch(size)
    factor = _UNITS.get(match[2].lower()) if match else None
    if match is None or factor is None:
        raise ValueError(f"not a memory size: {size!r}")
    return int(float(match[1]) * factor)


def reader_memory_limit(ram_limit: str, reserved_bytes: int) -> str:
    """DuckDB's memory_limit for a reader process beside a parent that holds `reserved_bytes`:
    DUCKDB_SHARE of the run's RAM limit less those, so that the two stay within the limit
    together; never less than a quarter of DuckDB's share."""
    share = memory_bytes(ram_limit) * DUCKDB_SHARE
    return f"{int(max(share - reserved_bytes, share * _READER_FLOOR))}B"


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def connection_config(
    ram_limit: str, threads: int, spill_dir: Path, memory_limit: str | None = None
) -> dict[str, object]:
    """DuckDB settings for one run: memory bounded by the run's RAM limit (or `memory_limit`),
    spilling to disk beyond it, no extension downloads.

    DuckDB creates only the last level of its temp directory, and only once it has to spill: on a
    new DATALOG_HOME the first spill would fail. The directory is made here, with its parents."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    return {
        "memory_limit": memory_limit or duckdb_memory_limit(ram_limit),
        "threads": threads,
        "temp_directory": str(spill_dir),
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }


@dataclass(frozen=True)
class ReaderSettings:
    """How a batch's reader process opens DuckDB (see `isolation`): the run's RAM limit and
    threads, where it spills, what one raw file may be, and S3 access when a store is on S3."""

    ram_limit: str
    threads: int
    spill_dir: Path
    limits: ReadLimits
    s3: S3Access | None = None


@contextmanager
def open_reader(settings: ReaderSettings, reserved_bytes: int = 0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection configured as the run's resource is (`connection_config`), with the
    platform's macros and, for S3, httpfs; its memory limit leaves `reserved_bytes` to the
    process that started the reader."""
    memory_limit = reader_memory_limit(settings.ram_limit, reserved_bytes)
    config = connection_config(settings.ram_limit, settings.threads, settings.spill_dir, memory_limit)
    conn = duckdb.connect(":memory:", config=config)
    try:
        install_macros(conn)
        if settings.s3 is not None:
            enable_s3(conn, settings.s3)
        yield conn
    finally:
        conn.close()


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
