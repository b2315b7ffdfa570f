"""Helpers for the ledger tests: isolated PostgreSQL schemas, a claim worker for spawned processes,
the ledger's keys, batches and devices read back as dicts, and devices loaded straight into it.

The worker lives here (an importable module, not the test module) so that the multiprocessing
'spawn' start method can pickle it by reference.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import protocol, registration
from datalog_platform.core.ledger.schema import (
    FAILED,
    PENDING,
    QUARANTINED,
    SUCCESS,
    batches,
    create_schema,
    devices,
    keys,
)
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import ObjectInfo

POSTGRES_URL_ENV = "DATALOG_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test server's URL; without it the calling test is skipped, saying why."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_URL_ENV} not set: PostgreSQL ledger tests need a running server, "
            "e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        )
    return url


def schema_url(url: str, schema: str) -> str:
    """`url` with `schema` as its search_path, in the URL itself (for settings and resources that take a URL)."""
    with_path = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return with_path.render_as_string(hide_password=False)


def schema_engine(url: str, schema: str) -> sa.Engine:
    """An engine whose connections see only `schema` (via search_path)."""
    return sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})


@contextmanager
def postgres_schema(url: str) -> Iterator[tuple[sa.Engine, str]]:
    """A fresh schema `t_<uuid>` holding the ledger tables; dropped (with everything in it) afterwards."""
    schema = f"t_{uuid.uuid4().hex}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine = schema_engine(url, schema)
        try:
            create_schema(engine)
            yield engine, schema
        finally:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def run_at_once(target: Callable[..., None], args_per_process: list[tuple[object, ...]]) -> dict[int, object]:
    """Start one spawned process per argument tuple; each calls `target(*args, n, barrier, queue)`,
    waits at the barrier so that all start together, and puts `(n, report)` on the queue.
    Returns the reports by process number; a process still alive after its report is killed."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args_per_process))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, n, barrier, results)) for n, args in enumerate(args_per_process)]
    for p in procs:
        p.start()
    try:
        return dict(results.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


ClaimLog = list[tuple[str, list[int]]]


def claim_until_empty(
    url: str,
    schema: str,
    part_date: str,
    region: str,
    limit: int,
    worker: int,
    barrier: Barrier,
    results: object,
) -> None:
    """Process entry point: wait at `barrier`, then claim batches until none is left.

    Puts `(worker, [(batch_id, [key_id, ...]), ...])` on the `results` queue, or
    `(worker, "ERROR: ...")` if anything failed, so the parent never waits for a dead worker.
    """
    try:
        engine = schema_engine(url, schema)
        with engine.connect() as conn:  # connect before the barrier: all start claiming at once
            conn.execute(sa.text("SELECT 1"))
        barrier.wait(timeout=60)
        claimed: ClaimLog = []
        while True:
            batch = protocol.claim_batch(engine, part_date, region, limit, f"worker-{worker}", 600)
            if batch is None:
                break
            claimed.append((batch.batch_id, [k.key_id for k in batch.keys]))
        engine.dispose()
        results.put((worker, claimed))  # type: ignore[attr-defined]
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((worker, f"ERROR: {type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def register_same_objects(url: str, schema: str, count: int, worker: int, barrier: Barrier, results: object) -> None:
    """Process entry point: wait at `barrier`, then register the same `count` objects as every
    other worker. Puts `(worker, registered)` or `(worker, "ERROR: ...")` on `results`."""
    try:
        engine = schema_engine(url, schema)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        objects = [ObjectInfo(f"dev{n % 50:03d}/2026110100/log-{n}.json", 10) for n in range(count)]
        barrier.wait(timeout=60)
        result = registration.register_keys(engine, objects, 8, REINGEST)
        engine.dispose()
        results.put((worker, result.registered))  # type: ignore[attr-defined]
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((worker, f"ERROR: {type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Reading the ledger back


def key_rows(engine: sa.Engine, key_names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ledger's keys table by key (only `key_names`, when given), each row as a dict."""
    stmt = sa.select(keys)
    if key_names is not None:
        stmt = stmt.where(keys.c.key.in_(sorted(key_names)))
    with engine.connect() as conn:
        return {r.key: dict(r._mapping) for r in conn.execute(stmt).all()}


def key_table(url: str) -> dict[str, dict[str, Any]]:
    """The ledger's keys table by key, read with a short-lived engine of its own."""
    engine = sa.create_engine(url)
    try:
        return key_rows(engine)
    finally:
        engine.dispose()


def batch_rows(engine: sa.Engine, part_date: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(batches).order_by(batches.c.created_at)
    if part_date is not None:
        stmt = stmt.where(batches.c.part_date == part_date)
    if region is not None:
        stmt = stmt.where(batches.c.dstrct_code == region)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]


def batch_row(engine: sa.Engine, batch_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(batches).where(batches.c.batch_id == batch_id)).one()._mapping)


def key_statuses(engine: sa.Engine) -> dict[str, str]:
    """The ledger's keys: key -> status."""
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(keys.c.key, keys.c.status)).all())


def seed_registry(url: str, rows: list[tuple[str, str]]) -> None:
    """Load devices straight into the ledger at `url`, creating its tables (and a SQLite file's
    directory) first: for scenarios whose subject is not `devices load`."""
    database = sa.make_url(url).database
    if url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    try:
        create_schema(engine)
        registration.upsert_devices(engine, rows)
    finally:
        engine.dispose()


def device_table(url: str) -> dict[str, str]:
    """The ledger's device registry (device_id -> dstrct_code), read with a short-lived engine."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(devices.c.device_id, devices.c.dstrct_code)).all())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# A ledger holding keys in every status, for the requeue tests

REQUEUE_DEVICES = [("dev001", "BRCB"), ("dev002", "KPCS")]
# key -> (status it is put in, attempts); local dates at UTC+8: 2026110100 -> 2026-11-01, 2026110300 -> 2026-11-03
REQUEUE_LAYOUT = {
    "dev001/2026110100/a.json": (FAILED, 3),
    "dev001/2026110300/b.json": (FAILED, 3),
    "dev002/2026110300/c.json": (FAILED, 3),
    "dev001/2026110300/d.json": (QUARANTINED, 0),
    "dev002/2026110100/e.json": (QUARANTINED, 0),
    "dev001/2026110300/f.json": (SUCCESS, 0),
    "dev001/2026110300/g.json": (PENDING, 1),
}


def fill_requeue_layout(engine: sa.Engine) -> None:
    """Put REQUEUE_LAYOUT (and one key of an unknown device: UNROUTED) into the ledger of `engine`."""
    registration.upsert_devices(engine, REQUEUE_DEVICES)
    objects = [ObjectInfo(key, 10, "etag") for key in [*REQUEUE_LAYOUT, "unknown/2026110300/u.json"]]
    registration.register_keys(engine, objects, 8, REINGEST)  # UTC+8
    with engine.begin() as conn:
        for key, (status, attempts) in REQUEUE_LAYOUT.items():
            conn.execute(
                sa.update(keys)
                .where(keys.c.key == key)
                .values(
                    status=status,
                    attempts=attempts,
                    error=None if status in (PENDING, SUCCESS) else f"{status.lower()}: boom",
                    batch_id="b" * 36 if status != PENDING else None,
                    rows=5 if status == SUCCESS else 0,
                )
            )


def requeue_states(engine: sa.Engine) -> dict[str, tuple[str, int, str | None, str | None]]:
    """key -> (status, attempts, error, batch_id) of every key of the ledger."""
    with engine.connect() as conn:
        return {
            r.key: (r.status, r.attempts, r.error, r.batch_id)
            for r in conn.execute(sa.select(keys.c.key, keys.c.status, keys.c.attempts, keys.c.error, keys.c.batch_id))
        }
