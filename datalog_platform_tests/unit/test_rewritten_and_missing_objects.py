"""Objects that change or vanish: the lake holds each object's current version, exactly once.

Covers a rewrite after ingest (appended, and shortened) replacing the key's rows and quarantine
records while the rows of its batch-mates are carried over as they were; the same bytes uploaded
again (nothing changes on S3, the same rows again on a local store); the version history; the
`ignore` and `quarantine` policies and the release of HELD keys; an object that changes after its
claim, or while its batch reads it, or whose newer version a discovery registers before the
batch commits; an object gone before its batch reads it (MISSING, named, not ingested, PENDING
again once it is back, and `requeue` of MISSING keys); a rewritten object deleted before its
re-ingest, and one deleted after ingest (its rows stay). Each test checks the lake's rows per key
against what the raw objects say.

Real parts: the local and the moto S3 stores, a SQLite ledger, the batch's reader process and
DuckDB, `register_keys`, `claim_batch` and `ingest_batch` as a run takes them (`Pipeline`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

import datalog_platform.core.ledger.protocol
from datalog_platform.core.ledger import protocol, registration, swap, versions
from datalog_platform.core.ledger.raw_keys import raw_listing_prefix
from datalog_platform.core.ledger.schema import HELD, MISSING, PENDING, SUCCESS, key_versions
from datalog_platform.core.store import LocalStore, S3Store
from datalog_platform_tests.support.raw_data import epoch_seconds, ndjson

if TYPE_CHECKING:
    import pytest

    from datalog_platform_tests.support.pipeline import Pipeline

REGION = "RG"
DAY = "2026-11-01"
HOUR = "2026110100"  # UTC; 08:00 local on DAY
BASE = datetime(2026, 11, 1, 0, 0, 0)
A = f"dev1/{HOUR}/log.json"
B = f"dev2/{HOUR}/log.json"


def lines(device: str, seqs: Iterable[int], bad: int = 0) -> bytes:
    """One record a second from BASE for each seq, then `bad` lines that are not JSON."""
    records = [
        json.dumps({"device_id": device, "heartbeat": epoch_seconds(BASE + timedelta(seconds=s)), "seq": s})
        for s in seqs
    ]
    return ndjson(*records, *(f"broken {n}" for n in range(bad)))


def seqs_by_key(pipeline: Pipeline) -> dict[str, list[int]]:
    """The lake's rows per raw key, as sorted seqs (a doubled row shows twice)."""
    by_key: dict[str, list[int]] = {}
    for row in pipeline.rows():
        by_key.setdefault(row["source_file"], []).append(int(row["seq"]))
    return {key: sorted(seqs) for key, seqs in by_key.items()}


def quarantined_by_key(pipeline: Pipeline) -> Counter[str]:
    return Counter(row["source_file"] for row in pipeline.rows("quarantine"))


def versions_of(pipeline: Pipeline, key: str) -> list[dict[str, Any]]:
    key_id = pipeline.key_rows()[key]["key_id"]
    with pipeline.engine.connect() as conn:
        rows = conn.execute(sa.select(key_versions).where(key_versions.c.key_id == key_id).order_by("version"))
        return [dict(r._mapping) for r in rows]


def ingest_two_keys(pipeline: Pipeline) -> None:
    """A (dev1, seq 0..39) and B (dev2, seq 100..109) ingested by one batch: one file holds both."""
    pipeline.devices([("dev1", REGION), ("dev2", REGION)])
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    pipeline.raw.write_bytes(B, lines("dev2", range(100, 110)))
    (report,) = pipeline.run()
    assert len([f for f in report.files if f.dataset == "datalog_v2"]) == 1
    assert seqs_by_key(pipeline) == {A: list(range(40)), B: list(range(100, 110))}


def test_an_appended_rewrite_replaces_the_rows_of_its_key_once(pipeline: Pipeline) -> None:
    ingest_two_keys(pipeline)
    first_batch = pipeline.key_rows()[A]["batch_id"]
    before = registration.pending_partitions(pipeline.engine)
    pipeline.raw.write_bytes(A, lines("dev1", range(90)))  # 50 lines appended

    found = pipeline.register()
    assert (found.registered, found.new_versions, found.rewritten) == (0, 1, 1)
    key = pipeline.key_rows()[A]
    assert (key["status"], key["version"], key["lake_version"], key["attempts"]) == (PENDING, 2, 1, 0)
    (waiting,) = registration.pending_partitions(pipeline.engine)
    assert before == [] and waiting.keys == 1

    (report,) = pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(90)), B: list(range(100, 110))}
    assert (report.carried_rows, len(report.files)) == (10, 2)
    key = pipeline.key_rows()[A]
    assert (key["status"], key["version"], key["lake_version"], key["rows"]) == (SUCCESS, 2, 2, 90)
    assert key["lake_batch_id"] == report.batch_id
    (old,) = versions_of(pipeline, A)
    assert (old["version"], old["batch_id"], old["size"]) == (1, first_batch, len(lines("dev1", range(40))))
    assert pipeline.key_rows()[B]["rows"] == 10
    assert {f.path for f in swap.live_files(pipeline.engine, "datalog_v2")} == {
        f.path for f in report.files if f.dataset == "datalog_v2"
    }


def test_a_shortened_rewrite_and_its_quarantine_records(pipeline: Pipeline) -> None:
    """The first version has 40 rows and 2 bad lines; the second 20 rows and none: the key's
    rows and its quarantine records are those of the second only."""
    pipeline.devices([("dev1", REGION), ("dev2", REGION)])
    pipeline.raw.write_bytes(A, lines("dev1", range(40), bad=2))
    pipeline.raw.write_bytes(B, lines("dev2", range(100, 110), bad=1))
    pipeline.run()
    assert quarantined_by_key(pipeline) == {A: 2, B: 1}

    pipeline.raw.write_bytes(A, lines("dev1", range(20)))
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(20)), B: list(range(100, 110))}
    assert quarantined_by_key(pipeline) == {B: 1}
    key = pipeline.key_rows()[A]
    assert (key["rows"], key["quarantined_lines"], key["version"]) == (20, 0, 2)


def test_the_same_bytes_uploaded_again(pipeline: Pipeline) -> None:
    """S3 gives the same bytes the same ETag: nothing changes. A local file written again has a new
    modification time: its key is read again and the lake holds the same rows, once."""
    ingest_two_keys(pipeline)
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    found = pipeline.register()
    if isinstance(pipeline.raw, S3Store):
        assert found.new_versions == 0
        assert registration.pending_partitions(pipeline.engine) == []
    else:
        assert found.new_versions == 1
        pipeline.run()
        assert pipeline.key_rows()[A]["lake_version"] == 2
    assert seqs_by_key(pipeline) == {A: list(range(40)), B: list(range(100, 110))}


def test_ignore_keeps_the_rows_and_records_the_version(pipeline: Pipeline) -> None:
    ingest_two_keys(pipeline)
    pipeline.policy = versions.IGNORE
    pipeline.raw.write_bytes(A, lines("dev1", range(90)))
    found = pipeline.register()
    assert (found.new_versions, found.rewritten) == (1, 1)
    key = pipeline.key_rows()[A]
    assert (key["status"], key["version"], key["lake_version"]) == (SUCCESS, 2, 1)
    assert registration.pending_partitions(pipeline.engine) == []
    assert pipeline.run() == []
    assert seqs_by_key(pipeline)[A] == list(range(40))


def test_quarantine_holds_the_version_until_it_is_released(pipeline: Pipeline) -> None:
    ingest_two_keys(pipeline)
    pipeline.policy = versions.QUARANTINE
    pipeline.raw.write_bytes(A, lines("dev1", range(90)))
    pipeline.register()
    held = pipeline.key_rows()[A]
    assert (held["status"], held["error"]) == (HELD, versions.HELD_REASON)
    assert pipeline.run() == []
    assert seqs_by_key(pipeline)[A] == list(range(40))

    assert registration.release_held(pipeline.engine, region="elsewhere") == 0
    assert registration.release_held(pipeline.engine, region=REGION) == 1
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(90)), B: list(range(100, 110))}
    assert pipeline.key_rows()[A]["status"] == SUCCESS


def test_an_object_changed_after_its_claim_is_read_by_the_next_batch(pipeline: Pipeline) -> None:
    """The batch looks before it reads: the key it claimed at version 1 is at version 2 now. It
    writes nothing of it, costs it no attempt and records the version it found."""
    pipeline.devices([("dev1", REGION), ("dev2", REGION)])
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    pipeline.raw.write_bytes(B, lines("dev2", range(100, 110)))
    pipeline.register()
    batch = protocol.claim_batch(pipeline.engine, DAY, REGION, 100, None, 60)
    assert batch is not None
    pipeline.raw.write_bytes(A, lines("dev1", range(60)))

    report = pipeline.ingest(batch)
    assert report.changed_keys == 1
    assert seqs_by_key(pipeline) == {B: list(range(100, 110))}
    key = pipeline.key_rows()[A]
    assert (key["status"], key["version"], key["attempts"], key["size"]) == (
        PENDING,
        2,
        0,
        len(lines("dev1", range(60))),
    )
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(60)), B: list(range(100, 110))}


def test_a_newer_version_registered_while_the_batch_reads(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A discovery registers version 2 after the batch read version 1 and before it commits: the
    commit records the rows of version 1 (with their batch in the history) and leaves the key
    PENDING, and the next batch replaces them with version 2's."""
    ingest_two_keys(pipeline)
    pipeline.raw.write_bytes(A, lines("dev1", range(50)))
    pipeline.register()
    batch = protocol.claim_batch(pipeline.engine, DAY, REGION, 100, None, 60)
    assert batch is not None and batch.holds
    real_commit = protocol.commit_batch

    def discovery_first(*args: Any, **kwargs: Any) -> None:
        pipeline.raw.write_bytes(A, lines("dev1", range(70)))
        assert pipeline.register().new_versions == 1
        real_commit(*args, **kwargs)

    monkeypatch.setattr(datalog_platform.core.ledger.protocol, "commit_batch", discovery_first)
    pipeline.ingest(batch)
    monkeypatch.undo()

    assert seqs_by_key(pipeline)[A] == list(range(50))
    key = pipeline.key_rows()[A]
    assert (key["status"], key["version"], key["lake_version"], key["lake_batch_id"]) == (
        PENDING,
        3,
        2,
        batch.batch_id,
    )
    assert [(v["version"], v["batch_id"]) for v in versions_of(pipeline, A)][-1] == (2, batch.batch_id)
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(70)), B: list(range(100, 110))}


def test_an_object_gone_before_its_batch_read_it_is_missing_until_it_is_back(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION), ("dev2", REGION)])
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    pipeline.raw.write_bytes(B, lines("dev2", range(100, 110)))
    pipeline.register()
    pipeline.raw.delete([A])

    (report,) = pipeline.run()
    assert (report.missing_keys, report.keys) == (1, 2)
    assert seqs_by_key(pipeline) == {B: list(range(100, 110))}
    key = pipeline.key_rows()[A]
    assert (key["status"], key["rows"], key["attempts"], key["lake_version"]) == (MISSING, None, 0, None)
    assert pipeline.raw.uri(A) in key["error"]
    assert registration.status_counts(pipeline.engine)["by_status"] == {MISSING: 1, SUCCESS: 1}

    assert pipeline.register().reappeared == 0  # still gone: nothing to say
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    back = pipeline.register()  # the same bytes: on S3 the same version, locally a new mtime
    assert (back.reappeared, back.new_versions) == ((1, 0) if isinstance(pipeline.raw, S3Store) else (0, 1))
    assert pipeline.key_rows()[A]["status"] == PENDING
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(40)), B: list(range(100, 110))}


def test_missing_keys_can_be_requeued(pipeline: Pipeline) -> None:
    pipeline.devices([("dev1", REGION)])
    pipeline.raw.write_bytes(A, lines("dev1", range(5)))
    pipeline.register()
    pipeline.raw.delete([A])
    pipeline.run()
    pipeline.raw.write_bytes(A, lines("dev1", range(5)))
    assert registration.requeue(pipeline.engine, MISSING) == 1
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(5))}


def test_a_rewritten_object_deleted_before_its_reingest_keeps_its_rows(pipeline: Pipeline) -> None:
    ingest_two_keys(pipeline)
    pipeline.raw.write_bytes(A, lines("dev1", range(90)))
    pipeline.register()
    pipeline.raw.delete([A])
    (report,) = pipeline.run()
    assert report.missing_keys == 1
    assert seqs_by_key(pipeline) == {A: list(range(40)), B: list(range(100, 110))}
    key = pipeline.key_rows()[A]
    assert (key["status"], key["lake_version"], key["rows"]) == (MISSING, 1, 40)


def test_an_object_deleted_after_ingest_keeps_its_rows(pipeline: Pipeline) -> None:
    ingest_two_keys(pipeline)
    pipeline.raw.delete([A])
    found = pipeline.register()
    assert (found.new_versions, found.reappeared) == (0, 0)
    assert pipeline.run() == []
    assert pipeline.key_rows()[A]["status"] == SUCCESS
    assert seqs_by_key(pipeline) == {A: list(range(40)), B: list(range(100, 110))}


def test_a_local_version_is_its_size_and_modification_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes(A, b"one\n")
    first = store.stat_many([A], raw_listing_prefix)[A]
    store.write_bytes(A, b"two\n")
    second = store.stat_many([A], raw_listing_prefix)[A]
    assert first.size == second.size and second.version.differs_from(first.version)
    assert store.stat_many(["dev9/2026110100/none.json"], raw_listing_prefix) == {}


def test_a_record_another_key_also_carried_stays_when_its_first_key_drops_it(pipeline: Pipeline) -> None:
    """A holds records 0..39; C, a later file of the same device, repeats 30..39 (dropped from C as
    duplicates) and adds 100..104. A is rewritten to 0..19: records 30..39 are still in C's object
    and stay in the lake (C is read again), while 20..29, in no object any more, are gone."""
    pipeline.devices([("dev1", REGION)])
    c = f"dev1/{HOUR[:-2]}01/log.json"
    pipeline.raw.write_bytes(A, lines("dev1", range(40)))
    pipeline.raw.write_bytes(c, lines("dev1", [*range(30, 40), *range(100, 105)]))
    pipeline.run()
    assert seqs_by_key(pipeline) == {A: list(range(40)), c: list(range(100, 105))}
    assert pipeline.key_rows()[c]["duplicate_rows"] == 10

    pipeline.raw.write_bytes(A, lines("dev1", range(20)))
    reports = pipeline.run()
    assert [r.keys for r in reports] == [1, 1]  # A, then C read again
    assert seqs_by_key(pipeline) == {A: list(range(20)), c: [*range(30, 40), *range(100, 105)]}
    assert pipeline.key_rows()[c]["duplicate_rows"] == 0
