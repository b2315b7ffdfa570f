"""DATALOG_* environment -> typed settings, with embedded defaults so a new user needs nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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

    @property
    def spill_dir(self) -> Path:
        return self.home / "tmp" / "duckdb"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster").resolve()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("DATALOG_HOME", ".datalog")).resolve()
        ledger_url = env.get("DATALOG_LEDGER_URL") or f"sqlite:///{home / 'ledger.db'}"
        return cls(
            home=home,
            raw_url=env.get("DATALOG_RAW_URL") or str(home / "raw"),
            lake_url=env.get("DATALOG_LAKE_URL") or str(home / "lake"),
            ledger_url=ledger_url,
            s3_endpoint_url=env.get("DATALOG_S3_ENDPOINT_URL") or None,
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            tz_offset_hours=int(env.get("DATALOG_TZ_OFFSET_HOURS", "8")),
            ram_limit=env.get("DATALOG_RAM_LIMIT", "2GB"),
            threads=int(env.get("DATALOG_THREADS") or os.cpu_count() or 2),
            key_limit_per_run=int(env.get("DATALOG_KEY_LIMIT_PER_RUN", "1000")),
            lease_seconds=int(env.get("DATALOG_LEASE_SECONDS", "900")),
            max_attempts=int(env.get("DATALOG_MAX_ATTEMPTS", "3")),
            partitions_start_date=env.get("DATALOG_PARTITIONS_START_DATE", "2020-01-01"),
            max_runs_per_tick=int(env.get("DATALOG_MAX_RUNS_PER_TICK", "20")),
            compaction_min_files=int(env.get("DATALOG_COMPACTION_MIN_FILES", "8")),
            compaction_target_mb=int(env.get("DATALOG_COMPACTION_TARGET_MB", "256")),
            warehouse_url=env.get("DATALOG_WAREHOUSE_URL") or ledger_url,
            quarantine_warn_rate=float(env.get("DATALOG_QUARANTINE_WARN_RATE", "0.01")),
            quarantine_fail_rate=float(env.get("DATALOG_QUARANTINE_FAIL_RATE", "0.10")),
            pending_max_age_minutes=int(env.get("DATALOG_PENDING_MAX_AGE_MINUTES", "180")),
        )
