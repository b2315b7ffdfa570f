"""The ingest path in this process, as a run takes it: register keys, claim per partition, ingest
each batch; and a rebuild of a partition.

Real parts only: a SQLite (or PostgreSQL) ledger, in-memory DuckDB with the platform's macros (httpfs
pointed at moto's S3 server when the stores are S3) and the local or S3 stores.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

from datalog_platform.core.duckdb_setup import ReaderSettings, enable_s3, memory_bytes
from datalog_platform.core.ingest import BatchReport, ingest_batch
from datalog_platform.core.ledger import claims, protocol, registration, swap
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import ObjectStore, S3Store
from datalog_platform.core.transform.read import ReadLimits
from datalog_platform.core.transform.timestamps import install_macros
from datalog_platform.settings import DEFAULT_MAX_FIELDS, DEFAULT_MAX_LINE_SIZE
from datalog_platform_tests.support.ledger_helpers import key_rows

TZ_OFFSET_HOURS = 8
LEASE_SECONDS = 60
MAX_ATTEMPTS = 3
RAM_LIMIT = "2GB"
DEFAULT_LIMITS = ReadLimits(memory_bytes(DEFAULT_MAX_LINE_SIZE), DEFAULT_MAX_FIELDS)


def reader_for(
    store: ObjectStore | None, limits: ReadLimits = DEFAULT_LIMITS, ram_limit: str = RAM_LIMIT
) -> ReaderSettings:
    """A batch reader's settings as a run has them: two threads, a spill directory of its own,
    httpfs pointed at the store's S3 endpoint."""
    spill = Path(tempfile.mkdtemp(prefix="datalog-spill-"))
    access = store.access if isinstance(store, S3Store) else None
    return ReaderSettings(ram_limit, 2, spill, limits, access)


def duckdb_for(store: ObjectStore | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the heartbeat macros; httpfs pointed at the store's S3 endpoint."""
    conn = duckdb.connect(
        ":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    install_macros(conn)
    if isinstance(store, S3Store):
        enable_s3(conn, store.access)
    return conn


class Pipeline:
    """The ingest path as a run takes it: register keys, claim per partition, ingest each batch.

    Talks to a real SQLite ledger, real DuckDB and the (local or moto S3) stores.
    """

    def __init__(
        self,
        raw: ObjectStore,
        lake: ObjectStore,
        engine: sa.Engine,
        make_duck: Callable[[ObjectStore | None], duckdb.DuckDBPyConnection],
    ) -> None:
        self.raw = raw
        self.lake = lake
        self.tz_offset_hours = TZ_OFFSET_HOURS
        self.engine = engine
        self.conn = make_duck(lake)
        self.reader = reader_for(lake if isinstance(lake, S3Store) else raw)
        self.policy = REINGEST

    def devices(self, rows: Iterable[tuple[str, str]]) -> None:
        registration.upsert_devices(self.engine, rows)

    def run(self, limit: int = 1000) -> list[BatchReport]:
        """Register every raw key, then claim and ingest batches until nothing is pending."""
        self.register()
        reports = []
        for part in registration.pending_partitions(self.engine):
            while batch := protocol.claim_batch(
                self.engine, part.part_date, part.dstrct_code, limit, None, LEASE_SECONDS
            ):
                reports.append(self.ingest(batch))
        return reports

    def register(self) -> registration.RegisterResult:
        """Register every raw object, as a full listing does (new keys and new versions)."""
        return registration.register_keys(self.engine, self.raw.list(), TZ_OFFSET_HOURS, self.policy)

    def ingest(self, batch: claims.Batch) -> BatchReport:
        """`ingest_batch` of one claimed batch (an ingest or a rebuild), as a run does it."""
        return ingest_batch(
            self.engine,
            self.reader,
            self.raw,
            self.lake,
            batch,
            TZ_OFFSET_HOURS,
            LEASE_SECONDS,
            MAX_ATTEMPTS,
            self.policy,
        )

    def rebuild(self, part_date: str, region: str) -> claims.Batch:
        """Claim the rebuild of one date x region partition and ingest it: its files are replaced."""
        batch = swap.claim_rebuild(self.engine, part_date, region, None, LEASE_SECONDS)
        assert batch is not None
        self.ingest(batch)
        return batch

    def glob(self, dataset: str) -> str:
        return f"{self.lake.uri(dataset)}/**/*.parquet"

    def has_files(self, dataset: str) -> bool:
        return any(o.key.endswith(".parquet") for o in self.lake.list(f"{dataset}/"))

    def rows(self, dataset: str = "datalog_v2", order_by: str = "source_file") -> list[dict[str, Any]]:
        """Every row of a lake dataset (hive columns included), as dicts; [] if it has no files."""
        if not self.has_files(dataset):
            return []
        cursor = self.conn.execute(
            f"SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true) ORDER BY {order_by}",
            [self.glob(dataset)],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def key_rows(self) -> dict[str, dict[str, Any]]:
        """The ledger's keys table by key."""
        return key_rows(self.engine)
