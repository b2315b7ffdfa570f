"""Discovery of new raw objects in `datalog_platform.core.discovery`: the bounded tick and its scale on S3.

Covers the stores' delimiter and single-page listings (local and S3), a tick capped by list requests
and by keys that continues from its cursor, silent (cold) devices visited round-robin, and discovery
at scale: 100,000 existing keys under 1,000 devices plus 1,000 new ones on moto's S3 server, where
one tick registers every new key with a handful of list requests. The sensor and the
reconciliation job that run it are in defs/test_discovery_sensor.py.

Real parts only: local directories, moto's S3 HTTP server on 127.0.0.1 (boto3) and a SQLite ledger
file. The scale test seeds its 100,000 existing objects straight into the moto server's storage
(moto accepts only about 100 PUTs per second over HTTP); everything discovery does goes over HTTP.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalog_platform.core.discovery import DiscoveryCursor, DiscoveryLimits, discover, reconcile
from datalog_platform.core.ledger import clock, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo, ObjectStore, S3Access, S3Store
from datalog_platform_tests.support.ledger_helpers import key_statuses
from datalog_platform_tests.support.raw_data import hour_ago, raw_key

TZ = 8


# ---------------------------------------------------------------------------------------------
# The store listings discovery is built on (conftest's `raw_store`: local, then S3)


def test_list_prefixes_and_list_page(raw_store: ObjectStore) -> None:
    """Top-level prefixes in order (after a cursor, files at the top excluded), and one-request pages."""
    for key in ["b/2026110100/x.json", "a/2026110100/x.json", "a/2026110101/y.json", "c-d/1.json", "top.json"]:
        raw_store.write_bytes(key, b"{}")
    before = raw_store.list_requests
    assert list(raw_store.list_prefixes()) == ["a/", "b/", "c-d/"]
    assert list(raw_store.list_prefixes(start_after="a/")) == ["b/", "c-d/"]
    assert list(raw_store.list_prefixes("a/")) == ["a/2026110100/", "a/2026110101/"]
    assert raw_store.list_requests == before + 3
    page = raw_store.list_page("a/", "a/2026110100", limit=1)
    assert [o.key for o in page.objects] == ["a/2026110100/x.json"] and page.truncated
    page = raw_store.list_page("a/", page.objects[-1].key, limit=1)
    assert [o.key for o in page.objects] == ["a/2026110101/y.json"] and not page.truncated
    assert raw_store.list_requests == before + 5


# ---------------------------------------------------------------------------------------------
# The tick on its own (local store, SQLite ledger)


def test_tick_is_capped_by_requests_and_continues(tmp_path: Path, sqlite_engine: sa.Engine) -> None:
    """Five active devices, 4 requests a tick: the first tick lists three of them and says more
    remains; the second continues after the third and finishes the round."""
    raw = LocalStore(tmp_path / "raw")
    now = clock.utcnow()
    devices = [f"dev{n}" for n in range(5)]
    for device in devices:
        raw.write_bytes(raw_key(device, hour_ago(2, now), "old"), b"{}")
    registration.upsert_devices(sqlite_engine, [(d, "R1") for d in devices])
    reconcile(raw, sqlite_engine, TZ, REINGEST)
    new = {raw_key(d, hour_ago(0, now), f"new{i}") for d in devices for i in range(3)}
    for key in new:
        raw.write_bytes(key, b"{}")
    limits = DiscoveryLimits(max_requests=4, cold_requests=0)

    first = discover(raw, sqlite_engine, DiscoveryCursor(), now, limits, TZ, REINGEST)
    assert first.list_requests == 4  # the prefix listing + dev0, dev1, dev2
    assert first.registered == 9 and first.more
    assert first.cursor.hot_after == "dev2"
    second = discover(raw, sqlite_engine, DiscoveryCursor.from_json(first.cursor.to_json()), now, limits, TZ, REINGEST)
    assert second.registered == 6 and not second.more
    assert second.list_requests == 3
    assert new <= set(key_statuses(sqlite_engine))


def test_tick_is_capped_by_keys_and_resumes_mid_device(tmp_path: Path, sqlite_engine: sa.Engine) -> None:
    """A new device with 2,500 keys and 1,000 keys a tick: three ticks, each resuming after the
    last key the previous one listed, register every key exactly once."""
    raw = LocalStore(tmp_path / "raw")
    now = clock.utcnow()
    written = [raw_key("big", hour_ago(100 + n // 100, now), f"f{n:04d}") for n in range(2500)]
    for key in written:
        raw.write_bytes(key, b"{}")
    limits = DiscoveryLimits(max_keys=1000)
    cursor = DiscoveryCursor()
    counts = []
    for _ in range(3):
        result = discover(raw, sqlite_engine, cursor, now, limits, TZ, REINGEST)
        counts.append(result.registered)
        cursor = result.cursor
    assert counts == [1000, 1000, 500]
    assert cursor.resume_prefix is None
    assert set(key_statuses(sqlite_engine)) == set(written)
    again = discover(raw, sqlite_engine, cursor, now, limits, TZ, REINGEST)
    assert again.registered == 0


def test_cold_devices_are_visited_round_robin(tmp_path: Path, sqlite_engine: sa.Engine) -> None:
    """Devices silent for longer than the window cost `cold_requests` requests a tick, round-robin:
    a new key of the third silent device is found on the third tick, not before."""
    raw = LocalStore(tmp_path / "raw")
    now = clock.utcnow()
    for device in ("c1", "c2", "c3"):
        raw.write_bytes(raw_key(device, hour_ago(48, now)), b"{}")
    reconcile(raw, sqlite_engine, TZ, REINGEST)
    raw.write_bytes(raw_key("c3", hour_ago(1, now), "back"), b"{}")
    limits = DiscoveryLimits(cold_requests=1)
    cursor = DiscoveryCursor()
    found = []
    for _ in range(3):
        result = discover(raw, sqlite_engine, cursor, now, limits, TZ, REINGEST)
        assert result.cold_devices == 3 and result.list_requests == 2
        found.append(result.registered)
        cursor = result.cursor
    assert found == [0, 0, 1]


# ---------------------------------------------------------------------------------------------
# Scale, against moto's S3 server

EXISTING_DEVICES = 1000
EXISTING_HOURS = 100  # 100,000 existing keys
ACTIVE_DEVICES = 20  # of the 1,000, these uploaded up to the previous hour; the rest went silent
NEW_PER_ACTIVE = 45  # 900 new keys under active devices ...
NEW_DEVICES = 2
NEW_PER_NEW_DEVICE = 50  # ... and 100 under two devices never seen before: 1,000 new keys


def seed_moto(bucket: str, keys_to_write: list[str]) -> None:
    """Put objects straight into the moto server's storage (same process), without HTTP."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in keys_to_write:
        backend.put_object(bucket, key, b"{}")


def test_discovery_at_scale_on_s3(
    s3_client: Any,
    s3_bucket: str,
    s3_test_access: S3Access,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """One tick registers 1,000 new keys (and a late one) among 100,000 existing ones with a number of
    list requests bounded by the devices that have new keys; seconds go to the JUnit report."""
    now = clock.utcnow()
    engine = ledger_engine(f"sqlite:///{tmp_path}/ledger.db")
    raw = S3Store(s3_bucket, "raw/", s3_client, s3_test_access)
    devices = [f"dev{n:05d}" for n in range(EXISTING_DEVICES)]
    active = devices[:: EXISTING_DEVICES // ACTIVE_DEVICES]
    existing = []
    for device in devices:
        newest = 1 if device in active else 24 * 10
        existing += [raw_key(device, hour_ago(newest + h, now)) for h in range(EXISTING_HOURS)]
    assert len(existing) == 100_000

    started = time.perf_counter()
    seed_moto(s3_bucket, [f"raw/{k}" for k in existing])
    seed_seconds = time.perf_counter() - started
    # the ledger already knows them (what the previous ticks and reconciliations left)
    registration.upsert_devices(engine, [(d, "R1") for d in devices])
    registration.register_keys(engine, [ObjectInfo(k, 2) for k in existing], TZ, REINGEST)

    new = [raw_key(d, hour_ago(0, now), f"n{i:02d}") for d in active for i in range(NEW_PER_ACTIVE)]
    new += [
        raw_key(f"zz-new{n}", hour_ago(0, now), f"n{i:02d}")
        for n in range(NEW_DEVICES)
        for i in range(NEW_PER_NEW_DEVICE)
    ]
    late = raw_key(active[3], hour_ago(5, now), "late")  # under an old hour, inside the 6-hour window
    assert len(new) == 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:  # the new objects arrive over HTTP, as uploads would
        list(pool.map(lambda k: raw.write_bytes(k, b"{}"), [*new, late]))
    upload_seconds = time.perf_counter() - started

    limits = DiscoveryLimits(cold_requests=5)
    before = raw.list_requests
    started = time.perf_counter()
    result = discover(raw, engine, DiscoveryCursor(), now, limits, TZ, REINGEST)
    tick_seconds = time.perf_counter() - started

    assert raw.list_requests - before == result.list_requests
    known = key_statuses(engine)
    assert set(new) | {late} <= set(known)
    assert result.registered == len(new) + 1
    assert sorted(result.new_devices) == ["zz-new0", "zz-new1"]
    devices_with_new_keys = ACTIVE_DEVICES + NEW_DEVICES
    # two pages of the delimiter listing (1,002 devices), one request per device with new keys, the
    # cold reserve; a full listing of the 101,001 objects would need 102 requests
    assert result.list_requests <= 2 + devices_with_new_keys + limits.cold_requests
    assert result.list_requests * 3 < (len(existing) + len(new)) // 1000
    assert not result.more
    record_property("seed_seconds", round(seed_seconds, 1))
    record_property("upload_seconds", round(upload_seconds, 1))
    record_property("tick_seconds", round(tick_seconds, 1))
    record_property("tick_list_requests", result.list_requests)
