"""The ledger's claim protocol: register -> claim -> commit | abort -> recover, and exactly-once ingest.

Covers raw-key parsing and registration (routing, local part dates, idempotence, awkward keys),
claiming, committing, aborting and lease recovery, the MSSQL/PostgreSQL rendering of the locking
statements, concurrent claimers in separate processes, and a writer that crashes before commit.

Real parts only: a SQLite database in a temp file and the running PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (each test in its own fresh schema, dropped afterwards; skipped with a
visible reason when the variable is unset), a real LocalStore directory as the lake, the real
generator, DuckDB converter and `ingest_batch`. Nothing in the database is mocked; the only patch
is a `commit_batch` that raises a BaseException, standing in for a killed process.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

import datalog_platform.core.ledger.protocol
from datalog_platform.core.generate import generate
from datalog_platform.core.ingest import ingest_batch
from datalog_platform.core.ledger import batch_size, protocol
from datalog_platform.core.ledger.claims import Batch, claim_statement
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.outcomes import OUTCOME_CHUNK, KeyOutcome, outcomes_statement
from datalog_platform.core.ledger.protocol import (
    LakeFile,
    StaleBatchError,
    abort_batch,
    claim_batch,
    commit_batch,
    commit_statement,
    record_intent,
    recover_expired,
    release_statement,
    renew_lease,
)
from datalog_platform.core.ledger.raw_keys import local_date, parse_raw_key
from datalog_platform.core.ledger.registration import pending_partitions, register_keys, route_unrouted, upsert_devices
from datalog_platform.core.ledger.schema import (
    ABORTED,
    ABORTING,
    CLAIMED,
    COMMITTED,
    FAILED,
    PENDING,
    QUARANTINED,
    RETIRED,
    SUCCESS,
    UNROUTED,
    WRITING,
    batches,
    create_schema,
    keys,
)
from datalog_platform.core.ledger.swap import live_files
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo
from datalog_platform_tests.support import ledger_helpers
from datalog_platform_tests.support.pipeline import reader_for

TZ = 8
DAY = "2026-11-01"
REGION = "BRCB"


# ---------------------------------------------------------------------------------------------
# The lake (the ledger is conftest's `engine`: SQLite, then PostgreSQL)


@pytest.fixture
def lake(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "lake")


# ---------------------------------------------------------------------------------------------
# Helpers


def obj(key: str, size: int = 10, etag: str | None = "etag") -> ObjectInfo:
    return ObjectInfo(key, size, etag)


def manifest_file(name: str, batch_id: str) -> LakeFile:
    return LakeFile(f"datalog_v2/hiveperiod={DAY}/dstrct_code={REGION}/part-{batch_id}-{name}.parquet", 1, 100)


def key_rows(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.key: row for row in conn.execute(sa.select(keys)).all()}


def batch_row(engine: sa.Engine, batch_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(batches).where(batches.c.batch_id == batch_id)).one_or_none()


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def seed(engine: sa.Engine, n: int, device: str = "devA", region: str = REGION, hour: str = "2026110100") -> list[str]:
    """Register `n` PENDING keys of one device and hour (so one partition)."""
    upsert_devices(engine, [(device, region)])
    names = [f"{device}/{hour}/f{i:05d}.json" for i in range(n)]
    result = register_keys(engine, [obj(k, 100 + i) for i, k in enumerate(names)], TZ, REINGEST)
    assert result.registered == n
    return names


def claim(engine: sa.Engine, limit: int = 100, day: str = DAY, region: str = REGION, lease: int = 600) -> Batch:
    batch = claim_batch(engine, day, region, limit, "run-test", lease)
    assert batch is not None
    return batch


def expire_lease(engine: sa.Engine, batch_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(batches).where(batches.c.batch_id == batch_id).values(lease_until=utcnow() - timedelta(minutes=5))
        )


def lake_file(lake: LocalStore, directory: str, batch_id: str, n: int = 0) -> str:
    key = f"{directory}/part-{batch_id}-{n}.parquet"
    lake.write_bytes(key, b"PAR1 not really parquet PAR1")
    return key


def lake_keys(lake: LocalStore, prefix: str = "") -> set[str]:
    return {o.key for o in lake.list(prefix)}


# ---------------------------------------------------------------------------------------------
# 1. Parsing and registration


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("dev1/2026110100/log.json", ("dev1", datetime(2026, 11, 1, 0))),
        ("dev1/2026110123/log.json.gz", ("dev1", datetime(2026, 11, 1, 23))),
        ("_registry/devices.csv", None),
        ("dev/2026110100/x.txt", None),
        ("dev/20261301/x.json", None),  # 8 digits, not an hour
        ("dev/2026133100/x.json", None),  # 10 digits, month 13
        ("dev/2026110100/sub/x.json", None),
        ("dev/2026110100/x.json.gz.tmp", None),
    ],
)
def test_parse_raw_key(key: str, expected: tuple[str, datetime] | None) -> None:
    parsed = parse_raw_key(key)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed.device_id, parsed.hour) == expected


def test_register_keys_registers_raw_objects_and_ignores_others(engine: sa.Engine) -> None:
    upsert_devices(engine, [("devA", REGION)])
    objects = [
        obj("devA/2026110100/log.json", 100, "e1"),
        obj("devA/2026110101/log.json.gz", 50, "e2"),
        obj("_registry/devices.csv", 7),
        obj("dev/2026110100/x.txt", 1),
        obj("dev/20261301/x.json", 1),
        obj("dev/2026133100/x.json", 1),
    ]
    result = register_keys(engine, objects, TZ, REINGEST)

    assert (result.seen, result.registered, result.unrouted, result.ignored, result.bytes) == (
        6,
        2,
        0,
        4,
        150,
    )
    rows = key_rows(engine)
    assert set(rows) == {"devA/2026110100/log.json", "devA/2026110101/log.json.gz"}
    gz = rows["devA/2026110101/log.json.gz"]
    assert (gz.status, gz.dstrct_code, gz.device_id, gz.etag, gz.size, gz.attempts) == (
        PENDING,
        REGION,
        "devA",
        "e2",
        50,
        0,
    )
    assert gz.key_hour == datetime(2026, 11, 1, 1)
    assert [(p.part_date, p.dstrct_code, p.keys) for p in pending_partitions(engine)] == [(DAY, REGION, 2)]


def test_register_keys_is_idempotent(engine: sa.Engine) -> None:
    upsert_devices(engine, [("devA", REGION)])
    objects = [obj(f"devA/2026110100/f{i}.json", 10) for i in range(3)] + [obj("_registry/devices.csv")]
    first = register_keys(engine, objects, TZ, REINGEST)
    ids_before = {k: r.key_id for k, r in key_rows(engine).items()}

    again = register_keys(engine, objects + objects, TZ, REINGEST)  # also duplicates within one call

    assert first.registered == 3
    assert (again.seen, again.registered, again.ignored, again.bytes) == (8, 0, 2, 0)
    assert {k: r.key_id for k, r in key_rows(engine).items()} == ids_before
    assert count(engine, keys) == 3


def test_part_date_is_local_date_of_utc_hour(engine: sa.Engine) -> None:
    upsert_devices(engine, [("devA", REGION)])
    register_keys(
        engine,
        [obj("devA/2026110120/late.json"), obj("devA/2026110115/early.json")],
        tz_offset_hours=8,
        policy=REINGEST,
    )
    rows = key_rows(engine)
    assert rows["devA/2026110120/late.json"].part_date == "2026-11-02"  # 20:00 UTC = 04:00 next day
    assert rows["devA/2026110115/early.json"].part_date == "2026-11-01"  # 15:00 UTC = 23:00
    assert local_date(datetime(2026, 11, 1, 3), -5) == "2026-10-31"


def test_unknown_device_is_unrouted_until_registry_upsert(engine: sa.Engine) -> None:
    result = register_keys(engine, [obj("ghost/2026110100/log.json")], TZ, REINGEST)
    row = key_rows(engine)["ghost/2026110100/log.json"]

    assert (result.registered, result.unrouted) == (1, 1)
    assert (row.status, row.dstrct_code) == (UNROUTED, None)
    assert pending_partitions(engine) == []
    assert route_unrouted(engine) == 0  # still unknown

    assert upsert_devices(engine, [("ghost", "KPCS")]) == (1, 0)
    assert route_unrouted(engine) == 1

    row = key_rows(engine)["ghost/2026110100/log.json"]
    assert (row.status, row.dstrct_code) == (PENDING, "KPCS")
    batch = claim(engine, region="KPCS")
    assert [k.key for k in batch.keys] == ["ghost/2026110100/log.json"]


def test_upsert_devices_updates_changed_regions(engine: sa.Engine) -> None:
    assert upsert_devices(engine, [("d1", "BRCB"), ("d2", "KPCS")]) == (2, 0)
    assert upsert_devices(engine, [("d1", "BRCB"), ("d2", "SMRD"), ("d3", "KPCS")]) == (1, 1)
    register_keys(engine, [obj("d2/2026110100/log.json")], TZ, REINGEST)
    assert key_rows(engine)["d2/2026110100/log.json"].dstrct_code == "SMRD"


def test_key_with_quotes_and_spaces_round_trips(engine: sa.Engine) -> None:
    device = "dev'1"
    key = "dev'1/2026110100/it's a \"log\".json"
    upsert_devices(engine, [(device, REGION)])

    result = register_keys(engine, [obj(key, 42, 'etag "q"')], TZ, REINGEST)
    assert result.registered == 1
    row = key_rows(engine)[key]
    assert (row.device_id, row.etag, row.size) == (device, 'etag "q"', 42)

    batch = claim(engine)
    assert [(k.key, k.size) for k in batch.keys] == [(key, 42)]
    commit_batch(engine, batch.batch_id, [KeyOutcome(batch.keys[0].key_id, SUCCESS, rows=3)], [], 3, 0)
    with engine.connect() as conn:
        status = conn.execute(sa.select(keys.c.status).where(keys.c.key == key)).scalar_one()
    assert status == SUCCESS


# ---------------------------------------------------------------------------------------------
# 2. Claim


def test_claim_takes_at_most_limit_keys_of_exactly_the_partition(engine: sa.Engine) -> None:
    part_a = seed(engine, 5, device="devA", hour="2026110100")  # BRCB 2026-11-01
    seed(engine, 3, device="devA", hour="2026110120")  # BRCB 2026-11-02 (local date)
    seed(engine, 3, device="devK", region="KPCS", hour="2026110100")  # KPCS 2026-11-01

    batch = claim(engine, limit=3)

    assert len(batch.keys) == 3
    assert (batch.part_date, batch.dstrct_code) == (DAY, REGION)
    assert {k.key for k in batch.keys} <= set(part_a)
    rows = key_rows(engine)
    claimed = {k for k, r in rows.items() if r.status == CLAIMED}
    assert claimed == {k.key for k in batch.keys}
    assert all(rows[k].batch_id == batch.batch_id for k in claimed)
    assert all(r.status == PENDING and r.batch_id is None for k, r in rows.items() if k not in claimed)
    b = batch_row(engine, batch.batch_id)
    assert (b.status, b.keys, b.part_date, b.dstrct_code, b.run_id) == (WRITING, 3, DAY, REGION, "run-test")
    assert b.lease_until > utcnow() + timedelta(seconds=500)


def test_claim_stops_at_the_byte_budget_and_takes_an_oversize_object_alone(engine: sa.Engine) -> None:
    seed(engine, 6)  # sizes 100, 101, ..., 105 in key order
    three = claim_batch(engine, DAY, REGION, 100, "run-test", 600, max_bytes=350)
    assert three is not None and [k.size for k in three.keys] == [100, 101, 102]  # 303 <= 350 < 406
    alone = claim_batch(engine, DAY, REGION, 100, "run-test", 600, max_bytes=50)
    assert alone is not None and [k.size for k in alone.keys] == [103]
    rest = claim_batch(engine, DAY, REGION, 100, "run-test", 600, max_bytes=10_000)
    assert rest is not None and [k.size for k in rest.keys] == [104, 105]


def test_claim_returns_none_and_leaves_no_batch_when_nothing_pending(engine: sa.Engine) -> None:
    assert claim_batch(engine, DAY, REGION, 10, None, 60) is None
    seed(engine, 2)
    claim(engine)  # takes both
    assert claim_batch(engine, DAY, REGION, 10, None, 60) is None
    assert claim_batch(engine, "2026-11-02", REGION, 10, None, 60) is None
    assert count(engine, batches) == 1


def test_sequential_claims_never_share_a_key(engine: sa.Engine) -> None:
    names = seed(engine, 10)
    first, second, third = claim(engine, limit=4), claim(engine, limit=4), claim(engine, limit=4)

    ids = [{k.key_id for k in b.keys} for b in (first, second, third)]
    assert [len(s) for s in ids] == [4, 4, 2]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert {k.key for b in (first, second, third) for k in b.keys} == set(names)
    assert len({first.batch_id, second.batch_id, third.batch_id}) == 3


# ---------------------------------------------------------------------------------------------
# 3. Commit


def test_commit_marks_keys_final_and_batch_committed(engine: sa.Engine) -> None:
    seed(engine, 4)
    batch = claim(engine, limit=3)
    k1, k2, k3 = batch.keys
    path = f"datalog_v2/hiveperiod={DAY}/dstrct_code={REGION}/part-{batch.batch_id}-0.parquet"
    files = [LakeFile(path, 90, 1234)]

    commit_batch(
        engine,
        batch.batch_id,
        [
            KeyOutcome(k1.key_id, SUCCESS, rows=50),
            KeyOutcome(k2.key_id, SUCCESS, rows=40, quarantined_lines=2),
            KeyOutcome(k3.key_id, QUARANTINED, error="not gzip"),
        ],
        files,
        90,
        2,
    )

    rows = key_rows(engine)
    got = {k.key: (rows[k.key].status, rows[k.key].rows, rows[k.key].error) for k in batch.keys}
    assert got == {
        k1.key: (SUCCESS, 50, None),
        k2.key: (SUCCESS, 40, None),
        k3.key: (QUARANTINED, 0, "not gzip"),
    }
    assert rows[k2.key].quarantined_lines == 2
    assert all(rows[k.key].done_at is not None for k in batch.keys)
    assert sum(r.status == PENDING for r in rows.values()) == 1
    b = batch_row(engine, batch.batch_id)
    assert (b.status, json.loads(b.files), b.rows, b.quarantined_lines) == (COMMITTED, [path], 90, 2)
    assert b.committed_at is not None
    assert live_files(engine, "datalog_v2") == files
    assert live_files(engine, "datalog_v2", DAY, REGION) == files
    assert live_files(engine, "datalog_v2", DAY, "elsewhere") == []


def test_commit_of_a_batch_no_longer_writing_raises_and_changes_nothing(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 2)
    batch = claim(engine, limit=1)
    outcome = [KeyOutcome(batch.keys[0].key_id, SUCCESS, rows=5)]
    commit_batch(engine, batch.batch_id, outcome, [manifest_file("a", batch.batch_id)], 5, 0)
    before = (key_rows(engine), batch_row(engine, batch.batch_id))

    with pytest.raises(StaleBatchError):  # already COMMITTED
        commit_batch(engine, batch.batch_id, [KeyOutcome(batch.keys[0].key_id, QUARANTINED)], [], 0, 0)
    assert (key_rows(engine), batch_row(engine, batch.batch_id)) == before

    aborted = claim(engine, limit=1)
    assert abort_batch(engine, lake, aborted.batch_id, "write failed", 3)
    before = (key_rows(engine), batch_row(engine, aborted.batch_id))
    with pytest.raises(StaleBatchError):  # ABORTED
        commit_batch(
            engine, aborted.batch_id, [KeyOutcome(aborted.keys[0].key_id, SUCCESS, 9)], [manifest_file("c", "x")], 9, 0
        )
    assert (key_rows(engine), batch_row(engine, aborted.batch_id)) == before
    assert [f.path for f in live_files(engine, "datalog_v2")] == [manifest_file("a", batch.batch_id).path]
    assert before[0][aborted.keys[0].key].status == PENDING


# ---------------------------------------------------------------------------------------------
# 4. Abort and recovery


def test_abort_deletes_exactly_the_batch_files_and_releases_keys(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 3)
    batch = claim(engine)
    other = str(uuid.uuid4())
    dir1 = f"datalog_v2/hiveperiod={DAY}/dstrct_code={REGION}"
    dir2 = f"datalog_v2/hiveperiod=2026-11-02/dstrct_code={REGION}"
    record_intent(engine, batch.batch_id, [dir1, dir2])
    mine = {lake_file(lake, dir1, batch.batch_id, 0), lake_file(lake, dir1, batch.batch_id, 1)}
    mine.add(lake_file(lake, dir2, batch.batch_id, 0))
    theirs = lake_file(lake, dir1, other, 0)
    assert lake_keys(lake) == mine | {theirs}

    assert abort_batch(engine, lake, batch.batch_id, "ValueError: boom", max_attempts=3)

    assert lake_keys(lake) == {theirs}
    rows = key_rows(engine)
    assert {(r.status, r.attempts, r.error) for r in rows.values()} == {(PENDING, 1, "ValueError: boom")}
    b = batch_row(engine, batch.batch_id)
    assert (b.status, b.error) == (ABORTED, "ValueError: boom")
    assert not abort_batch(engine, lake, batch.batch_id, "again", 3)  # already aborted
    assert {r.attempts for r in key_rows(engine).values()} == {1}


def test_keys_fail_once_attempts_reach_max(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 2)
    first = claim_batch(engine, DAY, REGION, 100, "run-test", 600, max_attempts=2)
    assert first is not None and len(first.keys) == 2
    assert abort_batch(engine, lake, first.batch_id, "e1", max_attempts=2)
    assert {(r.status, r.attempts) for r in key_rows(engine).values()} == {(PENDING, 1)}

    # the last attempt of each key is a batch of its own
    for n in (1, 2):
        retry = claim_batch(engine, DAY, REGION, 100, "run-test", 600, max_attempts=2)
        assert retry is not None and len(retry.keys) == 1
        assert abort_batch(engine, lake, retry.batch_id, f"e2-{n}", max_attempts=2)

    assert {(r.status, r.attempts) for r in key_rows(engine).values()} == {(FAILED, 2)}
    assert {r.error for r in key_rows(engine).values()} == {"e2-1", "e2-2"}
    assert claim_batch(engine, DAY, REGION, 10, None, 60, max_attempts=2) is None


@pytest.mark.parametrize(("limit", "attempts", "max_attempts", "expected"), [
    (1000, 0, 3, 1000), (1000, 1, 3, 32), (1000, 2, 3, 1), (1000, 1, 2, 1), (1000, 1, 5, 178),
    (1000, 3, 5, 6), (1000, 4, 5, 1), (1, 1, 3, 1), (1000, 0, 1, 1000),
])  # fmt: skip
def test_retry_batches_shrink_to_one_key_before_the_last_attempt(
    limit: int, attempts: int, max_attempts: int, expected: int
) -> None:
    assert batch_size.retry_limit(limit, attempts, max_attempts) == expected


def test_a_poisonous_key_fails_alone_and_the_keys_it_shared_batches_with_go_through(
    engine: sa.Engine, lake: LocalStore
) -> None:
    """A key that breaks every batch it is in (an oversize or poisonous file) must not take the
    other keys of its batches down with it: it ends FAILED alone, every other key SUCCESS."""
    names = seed(engine, 40)
    poison = names[17]
    sizes = []
    for _ in range(200):
        batch = claim_batch(engine, DAY, REGION, 40, "run-test", 600, max_attempts=3)
        if batch is None:
            break
        sizes.append(len(batch.keys))
        if poison in {k.key for k in batch.keys}:
            assert abort_batch(engine, lake, batch.batch_id, "OutOfMemoryException: too big", max_attempts=3)
        else:
            outcomes = [KeyOutcome(k.key_id, SUCCESS, rows=1) for k in batch.keys]
            commit_batch(engine, batch.batch_id, outcomes, [], len(outcomes), 0)
    rows = key_rows(engine)
    assert rows[poison].status == FAILED and rows[poison].attempts == 3
    assert {rows[n].status for n in names if n != poison} == {SUCCESS}
    # 40 keys at once; the 39 good ones retried in batches of round(40 ** 0.5) = 6; the 5 that
    # shared the poison's batch of 6 then went one by one
    assert sizes[0] == 40 and max(sizes[1:]) == 6 and sizes.count(1) == 6
    assert len(sizes) < 20


def test_recover_expired_takes_over_only_expired_batches(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 4)
    live, dead = claim(engine, limit=2), claim(engine, limit=2)
    directory = f"datalog_v2/hiveperiod={DAY}/dstrct_code={REGION}"
    for b in (live, dead):
        record_intent(engine, b.batch_id, [directory])
    live_file, dead_file = (
        lake_file(lake, directory, live.batch_id),
        lake_file(lake, directory, dead.batch_id),
    )

    assert recover_expired(engine, lake, 3) == []  # nothing expired yet
    assert not abort_batch(engine, lake, live.batch_id, "x", 3, expired_before=utcnow())
    assert lake_keys(lake) == {live_file, dead_file}

    expire_lease(engine, dead.batch_id)
    assert recover_expired(engine, lake, 3) == [dead.batch_id]

    assert lake_keys(lake) == {live_file}
    assert batch_row(engine, live.batch_id).status == WRITING
    assert batch_row(engine, dead.batch_id).status == ABORTED
    rows = key_rows(engine)
    assert {(rows[k.key].status, rows[k.key].attempts) for k in dead.keys} == {(PENDING, 1)}
    assert {(rows[k.key].status, rows[k.key].batch_id) for k in live.keys} == {(CLAIMED, live.batch_id)}
    assert recover_expired(engine, lake, 3) == []


def test_recover_expired_with_short_lease(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 1)
    batch = claim(engine, lease=0)  # lease ends at claim time
    assert recover_expired(engine, lake, 3) == [batch.batch_id]
    assert batch_row(engine, batch.batch_id).status == ABORTED


def test_recover_expired_finishes_an_interrupted_abort(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 2)
    batch = claim(engine)
    directory = f"datalog_v2/hiveperiod={DAY}/dstrct_code={REGION}"
    record_intent(engine, batch.batch_id, [directory])
    lake_file(lake, directory, batch.batch_id)
    with engine.begin() as conn:  # fenced, then the aborting process died (lease still in the future)
        conn.execute(sa.update(batches).where(batches.c.batch_id == batch.batch_id).values(status=ABORTING))

    assert recover_expired(engine, lake, 3) == [batch.batch_id]

    assert lake_keys(lake) == set()
    assert batch_row(engine, batch.batch_id).status == ABORTED
    assert {(r.status, r.attempts) for r in key_rows(engine).values()} == {(PENDING, 1)}


def test_stale_writer_is_fenced_out_after_recovery(engine: sa.Engine, lake: LocalStore) -> None:
    seed(engine, 2)
    batch = claim(engine)
    expire_lease(engine, batch.batch_id)
    assert recover_expired(engine, lake, 3) == [batch.batch_id]
    successor = claim(engine)  # another worker takes the keys over
    assert {k.key_id for k in successor.keys} == {k.key_id for k in batch.keys}

    assert not renew_lease(engine, batch.batch_id, 600)
    with pytest.raises(StaleBatchError):
        record_intent(engine, batch.batch_id, ["datalog_v2/x"])
    with pytest.raises(StaleBatchError):
        commit_batch(engine, batch.batch_id, [KeyOutcome(k.key_id, SUCCESS, 1) for k in batch.keys], [], 2, 0)

    rows = key_rows(engine)
    assert {(r.status, r.batch_id) for r in rows.values()} == {(CLAIMED, successor.batch_id)}
    assert batch_row(engine, batch.batch_id).status == ABORTED
    commit_batch(engine, successor.batch_id, [KeyOutcome(k.key_id, SUCCESS, 1) for k in successor.keys], [], 2, 0)
    assert {r.status for r in key_rows(engine).values()} == {SUCCESS}


# ---------------------------------------------------------------------------------------------
# 5. Rendering for MSSQL and PostgreSQL

BATCH_ID = "7f3c9e1a-4b2d-4c8e-9f00-5d6e7a8b9c0d"
ODD_DAY = "2031-07-19"
ODD_REGION = "ZQXR"
ODD_LIMIT = 137


def test_mssql_claim_statement_renders_locking_hints_with_bind_params() -> None:
    compiled = claim_statement("mssql", BATCH_ID, ODD_DAY, ODD_REGION, ODD_LIMIT).compile(dialect=mssql.dialect())
    sql = str(compiled)

    for fragment in ("UPDATE TOP", "WITH (ROWLOCK, UPDLOCK, READPAST)", "OUTPUT inserted.key_id", "WHERE"):
        assert fragment in sql
    positions = [sql.index(f) for f in ("UPDATE TOP", "WITH (ROWLOCK", " SET ", "OUTPUT", "WHERE")]
    assert positions == sorted(positions)
    # `key` is reserved in T-SQL: the hand-written statement quotes it as SQLAlchemy would.
    assert f"inserted.{mssql.dialect().identifier_preparer.quote('key')}" in sql
    for literal in (BATCH_ID, ODD_DAY, ODD_REGION, str(ODD_LIMIT), PENDING, CLAIMED):
        assert literal not in sql
    assert {"limit", "batch_id", "part_date", "dstrct_code", "pending", "claimed", "attempts"} <= set(compiled.binds)
    assert compiled.params["batch_id"] == BATCH_ID
    assert (compiled.params["part_date"], compiled.params["dstrct_code"]) == (ODD_DAY, ODD_REGION)
    assert compiled.params["limit"] == ODD_LIMIT


def test_postgresql_claim_statement_skips_locked_rows() -> None:
    compiled = claim_statement("postgresql", BATCH_ID, ODD_DAY, ODD_REGION, ODD_LIMIT).compile(
        dialect=postgresql.dialect()
    )
    sql = str(compiled)
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "RETURNING keys.key_id" in sql
    for literal in (BATCH_ID, ODD_DAY, ODD_REGION, str(ODD_LIMIT)):
        assert literal not in sql
    assert set(compiled.params.values()) >= {BATCH_ID, ODD_DAY, ODD_REGION, ODD_LIMIT}


def test_mssql_commit_and_release_statements_render_with_bind_params() -> None:
    batch_sql = commit_statement().compile(dialect=mssql.dialect())
    error = "it's a 'quoted' error"
    outcomes = [KeyOutcome(key_id=k, status=QUARANTINED, rows=7, error=error) for k in range(OUTCOME_CHUNK)]
    key_sql = outcomes_statement(BATCH_ID, outcomes, datetime(2031, 7, 19)).compile(dialect=mssql.dialect())
    assert str(batch_sql).startswith("UPDATE batches SET")
    assert str(key_sql).startswith("WITH outcomes") and "UPDATE keys SET" in str(key_sql)
    assert {"b_batch_id", "b_files", "b_rows", "b_quarantined", "b_now"} <= set(batch_sql.binds)
    assert len(key_sql.params) < 2100  # MSSQL's limit of parameters a statement
    assert BATCH_ID in key_sql.params.values() and error in key_sql.params.values()
    for sql in (str(batch_sql), str(key_sql)):
        for literal in (WRITING, COMMITTED, CLAIMED, BATCH_ID, error):
            assert literal not in sql

    release = release_statement(3, error).compile(dialect=mssql.dialect())
    sql = str(release)
    assert sql.startswith("UPDATE keys SET") and "CASE WHEN" in sql
    for literal in (error, FAILED, PENDING, CLAIMED):
        assert literal not in sql
    assert "b_batch_id" in release.binds
    values = [v for p in release.params.values() for v in (p if isinstance(p, list) else [p])]
    assert {error, FAILED, PENDING, CLAIMED, 3} <= set(values)


def test_mssql_recovery_select_renders_with_bind_params(tmp_path: Path) -> None:
    """Capture the select recover_expired really executes, then compile it for MSSQL."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    create_schema(eng)
    executed: list[Any] = []
    sa.event.listen(eng, "before_execute", lambda conn, stmt, *rest: executed.append(stmt))
    recover_expired(eng, LocalStore(tmp_path / "lake"), 3)
    eng.dispose()

    selects = [s for s in executed if isinstance(s, sa.Select)]
    assert len(selects) == 2  # expired batches, then retired files left undeleted
    compiled = selects[0].compile(dialect=mssql.dialect())
    sql = str(compiled)
    assert sql.startswith("SELECT batches.batch_id")
    assert "batches.lease_until <" in sql
    for literal in (WRITING, ABORTING):
        assert literal not in sql
    retired = selects[1].compile(dialect=mssql.dialect())
    assert str(retired).startswith("SELECT lake_files.path") and RETIRED not in str(retired)
    assert list(retired.params.values()) == [RETIRED]
    values = list(compiled.params.values())
    assert WRITING in values and ABORTING in values
    assert any(isinstance(v, datetime) for v in values)


# ---------------------------------------------------------------------------------------------
# 6. Concurrent claimers (PostgreSQL)

WORKERS = 4
CONCURRENT_KEYS = 10_000


def test_concurrent_claimers_never_share_a_key() -> None:
    url = ledger_helpers.postgres_url()
    with ledger_helpers.postgres_schema(url) as (eng, schema):
        seed(eng, CONCURRENT_KEYS)
        with eng.connect() as conn:
            all_ids = set(conn.execute(sa.select(keys.c.key_id)).scalars())
        assert len(all_ids) == CONCURRENT_KEYS

        reports = ledger_helpers.run_at_once(
            ledger_helpers.claim_until_empty, [(url, schema, DAY, REGION, 100)] * WORKERS
        )
        errors = [r for r in reports.values() if isinstance(r, str)]
        assert not errors

        owner: dict[int, str] = {}
        for claims in reports.values():
            for batch_id, ids in claims:
                assert 0 < len(ids) <= 100
                for key_id in ids:
                    assert key_id not in owner, f"key {key_id} claimed by two batches"
                    owner[key_id] = batch_id
        assert set(owner) == all_ids
        assert sum(1 for claims in reports.values() if claims) > 1

        with eng.connect() as conn:
            in_db = {r.key_id: (r.status, r.batch_id) for r in conn.execute(sa.select(keys)).all()}
            batch_keys = dict(conn.execute(sa.select(batches.c.batch_id, batches.c["keys"])).all())
        assert in_db == {key_id: (CLAIMED, batch_id) for key_id, batch_id in owner.items()}
        claimed_batches = {b: len(ids) for claims in reports.values() for b, ids in claims}
        assert batch_keys == claimed_batches


def test_concurrent_registrars_register_each_key_once() -> None:
    """Two discovery passes registering the same new objects at the same moment: no error, and
    every key is in the ledger once (a unique-key conflict makes a registrar look again)."""
    url = ledger_helpers.postgres_url()
    count = 3000
    with ledger_helpers.postgres_schema(url) as (eng, schema):
        reports = ledger_helpers.run_at_once(ledger_helpers.register_same_objects, [(url, schema, count)] * 2)
        assert not [r for r in reports.values() if isinstance(r, str)], reports
        assert sum(reports.values()) == count
        with eng.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(keys)).scalar() == count
            assert conn.execute(sa.select(sa.func.count(sa.distinct(keys.c.key)))).scalar() == count


# ---------------------------------------------------------------------------------------------
# 7. Exactly-once across a crash between write and commit


class SimulatedCrash(BaseException):
    """Raised where a killed process would stop: not an Exception, so no cleanup runs."""


def lake_counts(lake: LocalStore) -> dict[tuple[str, int], int]:
    with duckdb.connect() as conn:
        rows = conn.execute(
            "SELECT source_file, seq, count(*) FROM read_parquet(?, hive_partitioning = true) "
            "GROUP BY source_file, seq",
            [str(lake.root / "datalog_v2" / "**" / "*.parquet")],
        ).fetchall()
    return {(source, int(seq)): int(n) for source, seq, n in rows}


def test_ingest_is_exactly_once_across_a_crash_before_commit(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, lake = LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "lake")
    summary = generate(raw, devices=3, hours=2, rows=50, seed=1, bad_file_share=0.0)
    upsert_devices(engine, summary.devices)
    registered = register_keys(engine, raw.list(), TZ, REINGEST)
    assert (registered.registered, registered.ignored, registered.unrouted) == (summary.files, 1, 0)
    sources = sorted(k for k in key_rows(engine))

    first = pending_partitions(engine)[0]
    crashed = claim(engine, day=first.part_date, region=first.dstrct_code, lease=60)

    def crash(*args: object, **kwargs: object) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(datalog_platform.core.ledger.protocol, "commit_batch", crash)
    with pytest.raises(SimulatedCrash):
        ingest_batch(engine, reader_for(raw), raw, lake, crashed, TZ, 60, 3, REINGEST)
    monkeypatch.undo()
    assert protocol.commit_batch is commit_batch

    left = lake_keys(lake, "datalog_v2/")
    assert left and all(f"/part-{crashed.batch_id}-" in k for k in left)
    assert batch_row(engine, crashed.batch_id).status == WRITING
    crashed_keys = {k.key for k in crashed.keys}
    assert sum(lake_counts(lake).values()) == 50 * len(crashed_keys)

    expire_lease(engine, crashed.batch_id)
    assert recover_expired(engine, lake, 3) == [crashed.batch_id]
    assert lake_keys(lake, "datalog_v2/") == set()
    rows = key_rows(engine)
    assert {(rows[k].status, rows[k].attempts) for k in crashed_keys} == {(PENDING, 1)}

    committed = []
    for part in pending_partitions(engine):
        while (batch := claim_batch(engine, part.part_date, part.dstrct_code, 100, "run-retry", 60)) is not None:
            committed.append(ingest_batch(engine, reader_for(raw), raw, lake, batch, TZ, 60, 3, REINGEST).batch_id)

    assert len(committed) == 3  # one per (date, region) partition
    assert {r.status for r in key_rows(engine).values()} == {SUCCESS}
    assert all(batch_row(engine, b).status == COMMITTED for b in committed)
    expected = {(source, seq): 1 for source in sources for seq in range(50)}
    assert lake_counts(lake) == expected
    assert sum(r.rows for r in key_rows(engine).values()) == summary.rows == 300


def test_stale_writer_files_written_after_takeover_are_deleted(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's lease is taken over after it recorded its intent but before its COPY: the
    recoverer finds no files yet; the stale writer then writes, fails to commit, and its own abort
    must delete what it wrote, or the successor's rows would appear twice in the lake."""
    raw, lake = LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "lake")
    summary = generate(raw, devices=1, hours=2, rows=50, seed=2, bad_file_share=0.0)
    upsert_devices(engine, summary.devices)
    register_keys(engine, raw.list(), TZ, REINGEST)
    part = pending_partitions(engine)[0]
    stale = claim(engine, day=part.part_date, region=part.dstrct_code, lease=60)
    real_record_intent = protocol.record_intent

    def intent_then_takeover(eng: sa.Engine, batch_id: str, dirs: list[str]) -> None:
        real_record_intent(eng, batch_id, dirs)
        expire_lease(eng, batch_id)  # the writer stalls past its lease...
        assert recover_expired(eng, lake, 3) == [batch_id]  # ...and is taken over before writing

    monkeypatch.setattr(datalog_platform.core.ledger.protocol, "record_intent", intent_then_takeover)
    with pytest.raises(StaleBatchError):
        ingest_batch(engine, reader_for(raw), raw, lake, stale, TZ, 60, 3, REINGEST)
    monkeypatch.undo()

    assert lake_keys(lake, "datalog_v2/") == set()
    assert batch_row(engine, stale.batch_id).status == ABORTED
    assert {(r.status, r.attempts) for r in key_rows(engine).values()} == {(PENDING, 1)}

    successor = claim(engine, day=part.part_date, region=part.dstrct_code)
    ingest_batch(engine, reader_for(raw), raw, lake, successor, TZ, 60, 3, REINGEST)
    sources = sorted(key_rows(engine))
    assert lake_counts(lake) == {(source, seq): 1 for source in sources for seq in range(50)}
