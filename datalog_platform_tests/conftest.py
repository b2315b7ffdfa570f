"""Fixtures shared by the test modules, each defined here once.

- S3: `moto_server` (moto's S3 HTTP server on 127.0.0.1), `s3_client`, `s3_bucket`, `s3_test_access`;
- object stores: `store_pair` (raw and lake: two local directories, or two prefixes of a fresh moto
  bucket) and `raw_store` (its raw store alone);
- DuckDB: `duck_factory`; the in-process ingest path: `pipeline`;
- ledgers: `ledger_url` and `engine` (an empty ledger, once on SQLite and once on PostgreSQL) and
  `sqlite_engine` (an empty SQLite ledger only);
- Dagster: `instance` (an ephemeral instance) and `resources` (ledger, stores and discovery limits
  over tmp_path).

Real parts only: moto's `ThreadedMotoServer` (an S3 endpoint spoken to over HTTP by boto3 and by
DuckDB's httpfs), local directories, in-memory DuckDB connections with the platform's macros,
SQLite files, the running PostgreSQL named by DATALOG_TEST_POSTGRES_URL (a fresh schema per test,
dropped afterwards; skipped with a visible reason when the variable is unset) and
`dg.instance_for_test`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.store import LocalStore, ObjectStore, S3Access, S3Store
from datalog_platform.defs.resources import DiscoveryResource, LedgerResource, StoresResource
from datalog_platform_tests.support import ledger_helpers
from datalog_platform_tests.support.net import free_port
from datalog_platform_tests.support.pipeline import Pipeline, duckdb_for
from datalog_platform_tests.support.s3 import FAKE_AWS_ENV, new_bucket, s3_access, s3_client_for


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 HTTP server in a background thread; yields its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_client(moto_server: str) -> Any:
    """A boto3 S3 client talking HTTP to the moto server."""
    return s3_client_for(moto_server)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket on the moto server."""
    return new_bucket(s3_client)


@pytest.fixture
def s3_test_access(moto_server: str) -> S3Access:
    """DuckDB/httpfs access to the moto server (path-style, plain http)."""
    return s3_access(moto_server)


@pytest.fixture(params=["local", "s3"])
def store_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, ObjectStore]]:
    """(raw, lake) stores: two local directories, or two prefixes of a fresh moto bucket."""
    if request.param == "local":
        yield LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "lake")
        return
    endpoint: str = request.getfixturevalue("moto_server")
    client = request.getfixturevalue("s3_client")
    bucket = new_bucket(client)
    access = s3_access(endpoint)
    yield S3Store(bucket, "raw/", client, access), S3Store(bucket, "lake/", client, access)


@pytest.fixture
def raw_store(store_pair: tuple[ObjectStore, ObjectStore]) -> ObjectStore:
    """The raw store of `store_pair` alone: a local directory, or the raw/ prefix of a fresh moto bucket."""
    return store_pair[0]


@pytest.fixture
def duck_factory() -> Iterator[Callable[[ObjectStore | None], duckdb.DuckDBPyConnection]]:
    """Make extra DuckDB connections (closed at teardown), e.g. one per batch."""
    made: list[duckdb.DuckDBPyConnection] = []

    def make(store: ObjectStore | None = None) -> duckdb.DuckDBPyConnection:
        conn = duckdb_for(store)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture
def pipeline(
    store_pair: tuple[ObjectStore, ObjectStore],
    sqlite_engine: sa.Engine,
    duck_factory: Callable[[ObjectStore | None], duckdb.DuckDBPyConnection],
) -> Pipeline:
    """A `Pipeline` over `store_pair` with a fresh SQLite ledger in tmp_path."""
    raw, lake = store_pair
    return Pipeline(raw, lake, sqlite_engine, duck_factory)


# ---------------------------------------------------------------------------------------------
# Ledgers


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty ledger: a SQLite file in tmp_path, or a fresh PostgreSQL schema (its
    search_path in the URL) that is dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        yield url
        ledger_engine(url).dispose()
        return
    base = ledger_helpers.postgres_url()
    with ledger_helpers.postgres_schema(base) as (_engine, schema):
        url = ledger_helpers.schema_url(base, schema)
        yield url
        ledger_engine(url).dispose()


@pytest.fixture
def engine(ledger_url: str) -> sa.Engine:
    """The platform's engine on `ledger_url` (`ledger_engine`): the ledger's tables, empty; once on
    SQLite, once on PostgreSQL."""
    return ledger_engine(ledger_url)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> sa.Engine:
    """The platform's engine on an empty SQLite ledger in tmp_path (ledger.db); SQLite only."""
    return ledger_engine(f"sqlite:///{tmp_path}/ledger.db")


# ---------------------------------------------------------------------------------------------
# Dagster


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral Dagster instance (`dg.instance_for_test`, in a temporary directory)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(tmp_path: Path) -> dict[str, Any]:
    """Dagster resources over tmp_path: the SQLite ledger of `sqlite_engine` (ledger.db, UTC+8), raw/
    and lake/ directories as stores, and the default discovery limits."""
    return {
        "ledger": LedgerResource(url=f"sqlite:///{tmp_path}/ledger.db", tz_offset_hours=8),
        "stores": StoresResource(raw_url=str(tmp_path / "raw"), lake_url=str(tmp_path / "lake"), s3=S3Resource()),
        "discovery": DiscoveryResource(),
    }
