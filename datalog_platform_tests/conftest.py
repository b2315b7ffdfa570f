"""Shared fixtures: moto's real S3 HTTP server on 127.0.0.1, local and S3 object stores, DuckDB.

Real parts only: moto's `ThreadedMotoServer` (an S3 endpoint spoken to over HTTP by boto3 and by
DuckDB's httpfs), local directories, and in-memory DuckDB connections with the platform's macros.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from moto.server import ThreadedMotoServer

from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.store import LocalStore, ObjectStore, S3Access, S3Store
from datalog_platform_tests.support.pipeline import Pipeline, duckdb_for

REGION = "us-east-1"
_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 HTTP server in a background thread; yields its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    saved = {name: os.environ.get(name) for name in _FAKE_AWS_ENV}
    os.environ.update(_FAKE_AWS_ENV)
    port = _free_port()
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


def s3_access(endpoint: str) -> S3Access:
    return S3Access(region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing")


@pytest.fixture
def s3_client(moto_server: str) -> Any:
    """A boto3 S3 client talking HTTP to the moto server."""
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_bucket(s3_client: Any) -> str:
    bucket = f"test-{uuid.uuid4().hex}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket


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
def duck(store_pair: tuple[ObjectStore, ObjectStore]) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB for the `store_pair` under test (S3 enabled when the stores are S3)."""
    conn = duckdb_for(store_pair[1])
    try:
        yield conn
    finally:
        conn.close()


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
    tmp_path: Path,
    duck_factory: Callable[[ObjectStore | None], duckdb.DuckDBPyConnection],
) -> Pipeline:
    """A `Pipeline` over `store_pair` with a fresh SQLite ledger in tmp_path."""
    raw, lake = store_pair
    engine = ledger_engine(f"sqlite:///{tmp_path}/ledger.db")
    return Pipeline(raw, lake, engine, duck_factory)
