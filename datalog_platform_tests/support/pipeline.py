"""The ingest path in this process, as a run takes it: register keys, claim per partition, ingest
each batch; and a rebuild of a partition.

Real parts only: a SQLite (or PostgreSQL) ledger, in-memory DuckDB with the platform's macros (httpfs
pointed at moto's S3 server when the stores are S3) and the local or S3 stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import sqlalchemy as sa

from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.ingest import BatchReport, ingest_batch
from datalog_platform.core.ledger import protocol, registration, swap
from datalog_platform.core.store import ObjectStore, S3Store
from datalog_platform.core.transform.timestamps import install_macros
from datalog_platform_tests.support.ledger_helpers import key_rows

TZ_OFFSET_HOURS = 8
LEASE_SECONDS = 60
MAX_ATTEMPTS = 3


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

    def devices(self, rows: Iterable[tuple[str, str]]) -> None:
        registration.upsert_devices(self.engine, rows)

    def run(self, limit: int = 1000) -> list[BatchReport]:
        """Register every raw key, then claim and ingest batches until nothing is pending."""
        registration.register_keys(self.engine, self.raw.list(), TZ_OFFSET_HOURS)
        reports = []
        for part in registration.pending_partitions(self.engine):
            while batch := protocol.claim_batch(
                self.engine, part.part_date, part.dstrct_code, limit, None, LEASE_SECONDS
            ):
                reports.append(self.ingest(batch))
        return reports

    def ingest(self, batch: protocol.Batch) -> BatchReport:
        """`ingest_batch` of one claimed batch (an ingest or a rebuild), as a run does it."""
        return ingest_batch(
            self.engine,
            self.conn,
            self.raw,
            self.lake,
            batch,
            TZ_OFFSET_HOURS,
            LEASE_SECONDS,
            MAX_ATTEMPTS,
        )

    def rebuild(self, part_date: str, region: str) -> protocol.Batch:
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
