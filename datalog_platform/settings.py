"""DATALOG_* environment -> typed settings, with embedded defaults so a new user needs nothing.

Every value is checked when it is read: a bad one raises `SettingsError`, which names the variable,
the value (a database URL with its password masked) and what is expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import sqlalchemy as sa

from datalog_platform.core.ledger.versions import REINGEST, REWRITE_POLICIES

# DuckDB's `memory_limit`: a number and a unit (1000^i or 1024^i), e.g. 2GB, 1.5GB, 512MiB.
_MEMORY_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*[kmgt](?:i?b)?\s*", re.IGNORECASE)
# A store URL with a scheme; only s3:// is one (anything else is a local directory).
_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]+:/", re.IGNORECASE)
# S3 bucket naming rules (general purpose buckets).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


_Number = TypeVar("_Number", int, float)


DEFAULT_TZ_OFFSET_HOURS = 8
DEFAULT_PARTITIONS_START_DATE = "2020-01-01"
# DuckDB's own `maximum_object_size`, which it does not go below.
DEFAULT_MAX_LINE_SIZE = "16MiB"
DEFAULT_MAX_FIELDS = 1000


class SettingsError(ValueError):
    """A DATALOG_* environment variable holds a value the platform cannot use."""


@dataclass(frozen=True)
class Settings:
    home: Path
    raw_url: str
    lake_url: str
    ledger_url: str
    s3_endpoint_url: str | None
    aws_region: str
    tz_offset_hours: int
    ram_limit: str
    threads: int
    key_limit_per_run: int
    batch_mb: int
    lease_seconds: int
    max_attempts: int
    partitions_start_date: str
    max_runs_per_tick: int = 20
    compaction_min_files: int = 8
    compaction_target_mb: int = 256
    warehouse_url: str = ""
    quarantine_warn_rate: float = 0.01
    quarantine_fail_rate: float = 0.10
    pending_max_age_minutes: int = 180
    discovery_max_requests: int = 200
    discovery_max_keys: int = 50_000
    discovery_window_hours: int = 6
    discovery_cold_requests: int = 10
    discovery_prefixes_per_tick: int = 10_000
    # An SQS queue receiving the raw bucket's ObjectCreated events; None: discovery by listing only.
    s3_events_queue_url: str | None = None
    # What a new version of an ingested object does (`ledger.versions`): reingest, ignore, quarantine.
    rewrite_policy: str = REINGEST
    # The longest line a raw file may have (longer ones are quarantined), a DuckDB memory size.
    max_line_size: str = DEFAULT_MAX_LINE_SIZE
    # The most distinct top-level field names the records of one raw file may carry.
    max_fields: int = DEFAULT_MAX_FIELDS
    # The variables these settings were read from that the process environment holds: the
    # definitions pass those that may carry credentials to Dagster by name (EnvVar), never by value.
    environ_names: frozenset[str] = frozenset()

    @property
    def spill_dir(self) -> Path:
        return self.home / "tmp" / "duckdb"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster").resolve()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of `env` (default: the process environment) over those recorded in the
        home's settings file; `SettingsError` for a bad value."""
        environ = os.environ if env is None else env
        home = Path(_Reader(environ).directory("DATALOG_HOME", ".datalog")).resolve()
        read = _Reader({**read_home_settings(home), **environ})
        ledger_url = read.database_url("DATALOG_LEDGER_URL", f"sqlite:///{home / 'ledger.db'}")
        warn_rate = read.number("DATALOG_QUARANTINE_WARN_RATE", 0.01, 0.0, 1.0)
        raw_url = read.store_url("DATALOG_RAW_URL", str(home / "raw"))
        return cls(
            home=home,
            raw_url=raw_url,
            lake_url=read.store_url("DATALOG_LAKE_URL", str(home / "lake")),
            ledger_url=ledger_url,
            s3_endpoint_url=read.endpoint_url("DATALOG_S3_ENDPOINT_URL"),
            aws_region=read.text("AWS_REGION", read.text("AWS_DEFAULT_REGION", "us-east-1")),
            # Etc/GMT-14 .. Etc/GMT+12 are the whole-hour zones there are
            tz_offset_hours=read.integer("DATALOG_TZ_OFFSET_HOURS", DEFAULT_TZ_OFFSET_HOURS, -12, 14),
            ram_limit=read.memory_size("DATALOG_RAM_LIMIT", "2GB"),
            threads=read.integer("DATALOG_THREADS", os.cpu_count() or 2, 1),
            key_limit_per_run=read.integer("DATALOG_KEY_LIMIT_PER_RUN", 10_000, 1),
            batch_mb=read.integer("DATALOG_BATCH_MB", 1024, 1),
            lease_seconds=read.integer("DATALOG_LEASE_SECONDS", 900, 1),
            max_attempts=read.integer("DATALOG_MAX_ATTEMPTS", 3, 1),
            partitions_start_date=read.iso_date("DATALOG_PARTITIONS_START_DATE", DEFAULT_PARTITIONS_START_DATE),
            max_runs_per_tick=read.integer("DATALOG_MAX_RUNS_PER_TICK", 20, 1),
            compaction_min_files=read.integer("DATALOG_COMPACTION_MIN_FILES", 8, 1),
            compaction_target_mb=read.integer("DATALOG_COMPACTION_TARGET_MB", 256, 1),
            warehouse_url=read.database_url("DATALOG_WAREHOUSE_URL", ledger_url),
            quarantine_warn_rate=warn_rate,
            quarantine_fail_rate=read.number("DATALOG_QUARANTINE_FAIL_RATE", 0.10, warn_rate, 1.0),
            pending_max_age_minutes=read.integer("DATALOG_PENDING_MAX_AGE_MINUTES", 180, 1),
            discovery_max_requests=read.integer("DATALOG_DISCOVERY_MAX_REQUESTS", 200, 1),
            discovery_max_keys=read.integer("DATALOG_DISCOVERY_MAX_KEYS", 50_000, 1),
            discovery_window_hours=read.integer("DATALOG_DISCOVERY_WINDOW_HOURS", 6, 1),
            discovery_cold_requests=read.integer("DATALOG_DISCOVERY_COLD_REQUESTS", 10, 0),
            discovery_prefixes_per_tick=read.integer("DATALOG_DISCOVERY_PREFIXES_PER_TICK", 10_000, 1),
            s3_events_queue_url=read.queue_url("DATALOG_S3_EVENTS_QUEUE_URL", raw_url),
            rewrite_policy=read.choice("DATALOG_REWRITE_POLICY", REINGEST, REWRITE_POLICIES),
            max_line_size=read.memory_size("DATALOG_MAX_LINE_SIZE", DEFAULT_MAX_LINE_SIZE),
            max_fields=read.integer("DATALOG_MAX_FIELDS", DEFAULT_MAX_FIELDS, 1),
            environ_names=frozenset(n for n, v in environ.items() if env is None and n.startswith("DATALOG_") and v),
        )


# `NAME=value` lines in DATALOG_HOME that commands record for that home (`datalog demo` records the
# first date of the data it generates as DATALOG_PARTITIONS_START_DATE, so `make ui` shows its
# dates); the environment overrides them.
HOME_SETTINGS_FILE = "datalog.env"


def read_home_settings(home: Path) -> dict[str, str]:
    path = home / HOME_SETTINGS_FILE
    if not path.is_file():
        return {}
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#") and "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def record_home_setting(home: Path, name: str, value: str) -> None:
    values = {**read_home_settings(home), name: value}
    home.mkdir(parents=True, exist_ok=True)
    (home / HOME_SETTINGS_FILE).write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))


class _Reader:
    """Reads one variable at a time; a variable that is unset or empty takes its default."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name) or default

    def _error(self, name: str, shown: str, expected: str) -> SettingsError:
        return SettingsError(f"{name}={shown} is not valid: expected {expected} (or unset it for the default)")

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        text = self.env.get(name)
        if not text:
            return default
        value = _parsed(int, text)
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise self._error(name, repr(text), f"a whole number {bounds}")
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        text = self.env.get(name)
        if not text:
            return default
        value = _parsed(float, text)
        if value is None or not minimum <= value <= maximum:
            raise self._error(name, repr(text), f"a number from {minimum:g} to {maximum:g}")
        return value

    def memory_size(self, name: str, default: str) -> str:
        text = self.text(name, default)
        match = _MEMORY_SIZE.fullmatch(text)
        if not match or not float(match.group(1)):
            raise self._error(name, repr(text), "a memory size such as 2GB, 1.5GB or 512MiB")
        return text

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        text = self.text(name, default)
        if text not in choices:
            raise self._error(name, repr(text), f"one of {', '.join(choices)}")
        return text

    def iso_date(self, name: str, default: str) -> str:
        text = self.text(name, default)
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise self._error(name, repr(text), "a date YYYY-MM-DD") from None

    def directory(self, name: str, default: str) -> str:
        """A local directory, made when needed: the path must not be a file."""
        text = self.text(name, default)
        if Path(text).exists() and not Path(text).is_dir():
            raise self._error(name, repr(text), "a directory, not a file")
        return text

    def store_url(self, name: str, default: str) -> str:
        """A local directory or s3://bucket[/prefix]."""
        text = self.text(name, default)
        if not _URL_SCHEME.match(text):
            return self.directory(name, default)
        parsed = urlparse(text)
        if parsed.scheme != "s3" or not text.startswith("s3://") or not _BUCKET.fullmatch(parsed.netloc):
            raise self._error(name, repr(text), "a local directory or s3://bucket/prefix (a valid bucket name)")
        return text

    def endpoint_url(self, name: str) -> str | None:
        text = self.env.get(name)
        if not text:
            return None
        parsed = urlparse(text)
        try:
            port_ok = parsed.port is None or parsed.port > 0
        except ValueError:
            port_ok = False
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
            raise self._error(name, repr(text), "an http:// or https:// URL such as http://127.0.0.1:9000")
        return text

    def queue_url(self, name: str, raw_url: str) -> str | None:
        """An SQS queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`, or an emulator's
        `http://host:port/ACCOUNT/NAME`); it carries events of S3 objects, so the raw store must be on S3."""
        text = self.env.get(name)
        if not text:
            return None
        parsed = urlparse(text)
        segments = [s for s in parsed.path.split("/") if s]
        if parsed.scheme not in ("http", "https") or not parsed.hostname or len(segments) != 2:
            expected = "an SQS queue URL such as https://sqs.us-east-1.amazonaws.com/123456789012/raw-events"
            raise self._error(name, repr(text), expected)
        if not raw_url.startswith("s3://"):
            raise SettingsError(
                f"{name} is set, but DATALOG_RAW_URL={raw_url!r} is not on S3: S3 event notifications "
                "need the raw store at s3://bucket/prefix (or unset the queue URL to discover by listing)"
            )
        return text

    def database_url(self, name: str, default: str) -> str:
        """A SQLAlchemy URL whose dialect and driver are installed; shown with its password masked."""
        text = self.text(name, default)
        expected = "a SQLAlchemy URL such as postgresql+psycopg2://user:password@host:5432/db or sqlite:///path"
        try:
            url = sa.make_url(text)
        except (sa.exc.ArgumentError, ValueError):
            raise self._error(name, "(not shown: it may hold a password)", expected) from None
        shown = repr(url.render_as_string(hide_password=True))
        try:
            url.get_dialect().import_dbapi()
        except sa.exc.NoSuchModuleError:
            raise self._error(name, shown, f"{expected}; no such dialect {url.drivername!r}") from None
        except ImportError as exc:
            raise SettingsError(
                f"{name}={shown} needs the database driver {exc.name!r}, which is not installed: "
                "install it, or use a URL with an installed driver (psycopg2, pymssql, sqlite)"
            ) from None
        return text


def _parsed(kind: Callable[[str], _Number], text: str) -> _Number | None:
    try:
        return kind(text)
    except ValueError:
        return None


def debug_requested(env: Mapping[str, str] | None = None) -> bool:
    """DATALOG_DEBUG set to anything but 0: errors show their traceback."""
    return (os.environ if env is None else env).get("DATALOG_DEBUG", "") not in ("", "0")
