"""Where the analytics tables go and how strict the partition checks are, as Dagster resources."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
import sqlalchemy as sa
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.ledger.engine import database_engine
from datalog_platform.core.transform.timestamps import install_macros
from datalog_platform.core.warehouse import create_warehouse_schema
from datalog_platform.resources.stores import StoresResource


class WarehouseResource(dg.ConfigurableResource):
    """The SQL database the analytics tables are loaded into (MSSQL, PostgreSQL or SQLite).

    Example:
        WarehouseResource(url=dg.EnvVar("DATALOG_WAREHOUSE_URL"))
    """

    url: str = Field(description="SQLAlchemy URL (DATALOG_WAREHOUSE_URL; default: the ledger's database)")

    def get_engine(self) -> sa.Engine:
        engine = database_engine(self.url)
        create_warehouse_schema(engine)
        return engine


class QualityResource(dg.ConfigurableResource):
    """Thresholds of the checks on `datalog_parquet` partitions."""

    quarantine_warn_rate: float = Field(
        default=0.01, description="Quarantined share of lines above which the check warns"
    )
    quarantine_fail_rate: float = Field(
        default=0.10, description="Quarantined share of lines above which the check fails"
    )
    pending_max_age_minutes: int = Field(
        default=180, description="A PENDING key older than this fails the partition's freshness check"
    )


@contextmanager
def lake_connection(duckdb_resource: DuckDBResource, stores: StoresResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """A run's DuckDB connection with the platform's macros and, for an S3 lake, httpfs."""
    access = stores.s3_access()
    with duckdb_resource.get_connection() as conn:
        install_macros(conn)
        if access is not None:
            enable_s3(conn, access)
        yield conn
