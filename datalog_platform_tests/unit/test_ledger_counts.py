"""The ledger's key counts and the indexes the sensors read: `key_counts` stays equal to counting
the keys through registration, routing, claims, commits, aborts, requeues and rebuilds; a ledger
from before them is upgraded (counts filled, triggers and indexes created, twice harmlessly); the
sensors' readers (backlog, fingerprints, status counts, devices' latest hours) agree with the keys;
registration without ON CONFLICT (MSSQL's path) registers each key once; and the statements an
MSSQL ledger runs instead render with bind parameters.

Real parts only: SQLite files in tmp_path and the running PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (conftest's `engine`: a fresh schema per test, skipped with a visible
reason when the variable is unset), a LocalStore directory as the lake.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql, sqlite

from datalog_platform.core.ledger import protocol, registration, schema, stats, summaries, swap
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.schema import (
    CLAIMED,
    FAILED,
    PENDING,
    QUARANTINED,
    SUCCESS,
    UNROUTED,
    create_schema,
    key_counts,
    keys,
)
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo
from datalog_platform_tests.support import ledger_helpers

TZ = 8
DAY = "2026-11-01"
NEW_INDEXES = {"ix_keys_pending_age", "ix_keys_batch_id"}
# The indexes of earlier ledgers that create_schema drops.
OLD_INDEXES = {
    "ix_keys_status_age": "keys (status, discovered_at)",
    "ix_keys_batch": "keys (batch_id)",
    "ix_keys_device": "keys (device_id, status)",
    "ix_keys_device_hour": "keys (device_id, key_hour)",
}
COUNT_TRIGGERS = ("key_counts_insert", "key_counts_update", "key_counts_delete", "device_hours_insert")


def objects(*names: str) -> list[ObjectInfo]:
    return [ObjectInfo(name, 10, "etag") for name in names]


def counted(engine: sa.Engine) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """key_counts' non-empty rows: (part_date, region, status) -> (keys, attempts, rows, sum of key ids)."""
    c = key_counts.c
    with engine.connect() as conn:
        return {
            (d, r, s): (int(n), int(a), int(rows), int(ids))
            for d, r, s, n, a, rows, ids in conn.execute(
                sa.select(c.part_date, c.dstrct_code, c.status, c["keys"], c.attempts, c.rows, c.key_ids)
            ).all()
            if (n, a, rows, ids) != (0, 0, 0, 0)
        }


def figures(engine: sa.Engine) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """`counted` without the sum of key ids: (keys, attempts, rows)."""
    return {group: counts[:3] for group, counts in counted(engine).items()}


def recount(engine: sa.Engine) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """The same figures counted from the keys themselves."""
    stmt = sa.select(
        keys.c.part_date,
        keys.c.dstrct_code,
        keys.c.status,
        sa.func.count(),
        sa.func.sum(keys.c.attempts),
        sa.func.sum(sa.func.coalesce(keys.c.rows, 0)),
        sa.func.sum(keys.c.key_id),
    ).group_by(keys.c.part_date, keys.c.dstrct_code, keys.c.status)
    with engine.connect() as conn:
        return {
            (d, r or "", s): (int(n), int(a), int(rows), int(ids))
            for d, r, s, n, a, rows, ids in conn.execute(stmt).all()
        }


def test_counts_follow_every_change_of_a_key(engine: sa.Engine, tmp_path: Path) -> None:
    lake = LocalStore(tmp_path / "lake")
    registration.upsert_devices(engine, [("dev001", "BRCB"), ("dev002", "KPCS")])
    names = [f"dev00{d}/202611010{h}/k{n}.json" for d in (1, 2) for h in range(4) for n in range(3)]
    registration.register_keys(engine, objects(*names, "dev003/2026110100/u.json", "not-a-raw-key.txt"), TZ, REINGEST)
    registration.register_keys(engine, objects(*names[:5]), TZ, REINGEST)  # already known: nothing changes
    assert counted(engine) == recount(engine)
    assert figures(engine)[(DAY, "", UNROUTED)] == (1, 0, 0)

    registration.upsert_devices(engine, [("dev003", "BRCB")])
    assert registration.route_unrouted(engine) == 1
    assert counted(engine) == recount(engine)

    committed = protocol.claim_batch(engine, DAY, "BRCB", 5, "run-1", 60)
    aborted = protocol.claim_batch(engine, DAY, "BRCB", 4, "run-2", 60)
    assert committed is not None and aborted is not None
    assert counted(engine) == recount(engine)
    outcomes = [KeyOutcome(k.key_id, SUCCESS, rows=7) for k in committed.keys[:-1]]
    outcomes.append(KeyOutcome(committed.keys[-1].key_id, QUARANTINED, error="unreadable"))
    protocol.commit_batch(engine, committed.batch_id, outcomes, [], 28, 0)
    assert protocol.abort_batch(engine, lake, aborted.batch_id, "boom", max_attempts=1)
    assert counted(engine) == recount(engine)
    assert figures(engine)[(DAY, "BRCB", SUCCESS)] == (4, 0, 28)
    assert figures(engine)[(DAY, "BRCB", FAILED)] == (4, 4, 0)

    assert registration.requeue(engine, FAILED) == 4
    assert counted(engine) == recount(engine)
    rebuild = swap.claim_rebuild(engine, DAY, "BRCB", "run-3", 60)
    assert rebuild is not None
    assert counted(engine)[(DAY, "BRCB", CLAIMED)][0] == len(rebuild.keys)
    assert protocol.abort_batch(engine, lake, rebuild.batch_id, "rebuild failed", max_attempts=3)
    assert counted(engine) == recount(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(keys).where(keys.c.dstrct_code == "KPCS"))
    assert counted(engine) == recount(engine)
    assert not any(region == "KPCS" for _, region, _ in counted(engine))


def test_readers_agree_with_the_keys(engine: sa.Engine) -> None:
    """Backlog, fingerprints, status counts and regions from the counts equal what the keys say."""
    registration.upsert_devices(engine, [("dev001", "BRCB"), ("dev002", "KPCS")])
    registration.register_keys(
        engine,
        objects(
            "dev001/2026110100/a.json",
            "dev001/2026110101/b.json",
            "dev002/2026110100/c.json",
            "dev002/2026110300/d.json",
            "dev009/2026110105/u.json",
        ),
        TZ,
        REINGEST,
    )
    batch = protocol.claim_batch(engine, DAY, "KPCS", 10, "run", 60)
    assert batch is not None
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(keys.c.key, keys.c.key_id)).all())
    assert [(p.part_date, p.dstrct_code, p.keys, p.fingerprint) for p in registration.pending_partitions(engine)] == [
        (DAY, "BRCB", 2, f"n2-s{ids['dev001/2026110100/a.json'] + ids['dev001/2026110101/b.json']}-a0-v2"),
        ("2026-11-03", "KPCS", 1, f"n1-s{ids['dev002/2026110300/d.json']}-a0-v1"),
    ]
    backlog = stats.backlog(engine)
    assert (backlog.pending, backlog.unrouted) == (3, 1)
    assert isinstance(backlog.oldest_pending_discovered_at, datetime)
    assert registration.status_counts(engine) == {
        "by_status": {PENDING: 3, CLAIMED: 1, UNROUTED: 1},
        "by_region": {"BRCB": {PENDING: 2}, "KPCS": {PENDING: 1, CLAIMED: 1}, "(unrouted)": {UNROUTED: 1}},
        "rows": 0,
    }
    assert stats.regions_with_keys(engine, DAY) == ["BRCB", "KPCS"]
    assert stats.partitions_with_keys(engine, DAY, "2026-11-03") == [
        (DAY, "BRCB"),
        (DAY, "KPCS"),
        ("2026-11-03", "KPCS"),
    ]


def test_latest_hours_cover_registered_and_unknown_devices(engine: sa.Engine) -> None:
    registration.upsert_devices(engine, [("dev001", "BRCB"), ("dev002", "KPCS"), ("silent", "KPCS")])
    registration.register_keys(
        engine,
        objects("dev001/2026110100/a.json", "dev001/2026110107/b.json", "stray/2026110203/u.json"),
        TZ,
        REINGEST,
    )
    # a device registered after its keys were found, before routing: UNROUTED keys under a known device
    registration.upsert_devices(engine, [("stray", "BRCB")])
    registration.register_keys(engine, objects("stray/2026110101/v.json", "dev002/2026103123/c.json"), TZ, REINGEST)
    assert stats.latest_hour_by_device(engine) == {
        "dev001": datetime(2026, 11, 1, 7),
        "dev002": datetime(2026, 10, 31, 23),
        "stray": datetime(2026, 11, 2, 3),
    }


def test_devices_hours_equal_the_aggregate_over_the_keys(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """`device_hours`, kept by the insert trigger through pages with older, newer and repeated
    hours, gives what MSSQL's aggregate over the keys gives."""
    registration.upsert_devices(engine, [("dev001", "BRCB"), ("dev002", "KPCS")])
    pages = [
        [f"dev00{d}/20261101{h:02d}/k.json" for d in (1, 2) for h in (5, 9, 7)],
        ["dev001/2026110103/k.json", "dev002/2026110223/k.json", "dev003/2026110101/u.json"],
        ["dev001/2026110109/k.json", "dev001/2026110109/other.json"],
    ]
    for names in pages:
        registration.register_keys(engine, objects(*names), TZ, REINGEST)
    kept = stats.latest_hour_by_device(engine)
    monkeypatch.setattr(stats, "counts_maintained", lambda _name: False)
    assert (
        kept
        == stats.latest_hour_by_device(engine)
        == {
            "dev001": datetime(2026, 11, 1, 9),
            "dev002": datetime(2026, 11, 2, 23),
            "dev003": datetime(2026, 11, 1, 1),
        }
    )


# What the keys of a ledger from before object versions lack.
VERSION_COLUMNS = ("mtime_ns", "last_modified", "sequencer", "version", "lake_version", "lake_batch_id")


def _make_old(url: str, engine: sa.Engine) -> None:
    """Take away what this version adds (the counts, the devices' hours, their triggers, the new
    indexes, the keys' versions and their history) and put back the indexes it replaced."""
    with engine.begin() as conn:
        for name in COUNT_TRIGGERS:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}" + (" ON keys" if url.startswith("postgres") else "")))
        conn.execute(sa.text("DROP TABLE key_counts"))
        conn.execute(sa.text("DROP TABLE device_hours"))
        conn.execute(sa.text("DROP TABLE key_versions"))
        for name in NEW_INDEXES:
            conn.execute(sa.text(f"DROP INDEX {name}"))
        for name, on in OLD_INDEXES.items():
            conn.execute(sa.text(f"CREATE INDEX {name} ON {on}"))
        for column in VERSION_COLUMNS:
            conn.execute(sa.text(f"ALTER TABLE keys DROP COLUMN {column}"))


def test_an_existing_ledger_is_upgraded(ledger_url: str) -> None:
    """A ledger with keys but without the counts, the new indexes and the keys' versions:
    create_schema fills the counts from the keys, creates the triggers and indexes, numbers every
    key's version 1 and records an ingested key's as the lake's, and a second create_schema
    changes nothing."""
    engine = ledger_engine(ledger_url)
    registration.upsert_devices(engine, [("dev001", "BRCB")])
    registration.register_keys(engine, objects("dev001/2026110100/a.json", "dev009/2026110100/u.json"), TZ, REINGEST)
    _make_old(ledger_url, engine)
    with engine.begin() as conn:  # a key ingested while the ledger had no triggers and no versions
        conn.execute(
            sa.text(
                "INSERT INTO keys (key, size, device_id, key_hour, dstrct_code, part_date, status, batch_id, "
                "attempts, rows, discovered_at) VALUES (:key, 10, 'dev001', :hour, 'BRCB', :day, :status, 'b-1', "
                "2, 9, :found)"
            ).bindparams(
                key="dev001/2026110101/b.json",
                hour=datetime(2026, 11, 1, 1),
                day=DAY,
                status=SUCCESS,
                found=datetime(2026, 11, 1, 2),
            )
        )
    inspector = sa.inspect(engine)
    assert not inspector.has_table("key_counts") and not inspector.has_table("key_versions")
    assert not NEW_INDEXES & {i["name"] for i in inspector.get_indexes("keys")}

    for _ in range(2):
        create_schema(engine)
        inspector = sa.inspect(engine)
        assert NEW_INDEXES <= {i["name"] for i in inspector.get_indexes("keys")}
        assert not OLD_INDEXES.keys() & {i["name"] for i in inspector.get_indexes("keys")}
        assert counted(engine) == recount(engine)
        assert figures(engine) == {
            (DAY, "BRCB", PENDING): (1, 0, 0),
            (DAY, "", UNROUTED): (1, 0, 0),
            (DAY, "BRCB", SUCCESS): (1, 2, 9),
        }
        assert stats.latest_hour_by_device(engine) == {
            "dev001": datetime(2026, 11, 1, 1),
            "dev009": datetime(2026, 11, 1, 0),
        }
    with engine.connect() as conn:
        assert summaries.counts_installed(conn)
        upgraded = {r.key: (r.version, r.lake_version, r.lake_batch_id) for r in conn.execute(sa.select(keys))}
    assert upgraded == {
        "dev001/2026110100/a.json": (1, None, None),
        "dev009/2026110100/u.json": (1, None, None),
        "dev001/2026110101/b.json": (1, 1, "b-1"),
    }
    assert sa.inspect(engine).has_table("key_versions")
    registration.register_keys(engine, objects("dev001/2026110102/c.json"), TZ, REINGEST)
    assert figures(engine)[(DAY, "BRCB", PENDING)] == (2, 0, 0)
    assert counted(engine) == recount(engine)
    assert stats.latest_hour_by_device(engine)["dev001"] == datetime(2026, 11, 1, 2)


def test_counts_from_before_the_key_ids_are_refilled_and_their_triggers_replaced(ledger_url: str) -> None:
    """A ledger whose key_counts lacks the sum of key ids, kept by triggers of that older version
    (here: triggers of the same names that do nothing): create_schema adds and fills the column and
    replaces the triggers, so the counts follow the keys again."""
    engine = ledger_engine(ledger_url)
    registration.upsert_devices(engine, [("dev001", "BRCB")])
    registration.register_keys(engine, objects("dev001/2026110100/a.json", "dev001/2026110101/b.json"), TZ, REINGEST)
    postgres = ledger_url.startswith("postgres")
    with engine.begin() as conn:
        for name in COUNT_TRIGGERS:
            conn.execute(sa.text(f"DROP TRIGGER {name}" + (" ON keys" if postgres else "")))
        conn.execute(sa.text("ALTER TABLE key_counts DROP COLUMN key_ids"))
        if postgres:
            conn.execute(
                sa.text("CREATE FUNCTION old_counts() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'")
            )
        old = "FOR EACH STATEMENT EXECUTE FUNCTION old_counts()" if postgres else "BEGIN SELECT 1; END"
        for name in COUNT_TRIGGERS:
            conn.execute(sa.text(f"CREATE TRIGGER {name} AFTER INSERT ON keys {old}"))
    create_schema(engine)
    registration.register_keys(engine, objects("dev001/2026110102/c.json"), TZ, REINGEST)
    protocol.claim_batch(engine, DAY, "BRCB", 2, "run", 60)
    assert counted(engine) == recount(engine)
    assert figures(engine) == {(DAY, "BRCB", PENDING): (1, 0, 0), (DAY, "BRCB", CLAIMED): (2, 0, 0)}


def test_registration_without_on_conflict_registers_each_key_once(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MSSQL's path (look the keys up, insert the rest) on a real database: the same result."""
    monkeypatch.setattr(registration, "_UPSERTS", {})
    registration.upsert_devices(sqlite_engine, [("dev001", "BRCB")])
    names = [f"dev001/20261101{h:02d}/k{n}.json" for h in range(24) for n in range(30)]
    first = registration.register_keys(
        sqlite_engine, objects(*names, names[0], "dev009/2026110100/u.json"), TZ, REINGEST
    )
    again = registration.register_keys(sqlite_engine, objects(*names), TZ, REINGEST)
    assert (first.registered, first.unrouted, again.registered) == (len(names) + 1, 1, 0)
    assert counted(sqlite_engine) == recount(sqlite_engine)


def test_mssql_statements_render_with_bind_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MSSQL ledger keeps no counts: capture what the readers and registration run there (on a
    SQLite ledger told it keeps none) and compile it for MSSQL. The new index renders plainly,
    without IF NOT EXISTS, which MSSQL lacks."""
    for module in (registration, stats):
        monkeypatch.setattr(module, "counts_maintained", lambda _name: False)
    monkeypatch.setattr(registration, "_UPSERTS", {})
    engine = ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    registration.upsert_devices(engine, [("dev001", "BRCB")])
    executed: list[Any] = []
    sa.event.listen(engine, "before_execute", lambda conn, stmt, *rest: executed.append(stmt))
    registration.register_keys(engine, objects("dev001/2026110100/a.json"), TZ, REINGEST)
    registration.pending_partitions(engine)
    stats.backlog(engine)
    stats.latest_hour_by_device(engine)
    stats.regions_with_keys(engine, DAY)
    registration.status_counts(engine)

    rendered = [(s, s.compile(dialect=mssql.dialect())) for s in executed if isinstance(s, (sa.Select, sa.Insert))]
    sql = "\n".join(str(c) for _, c in rendered)
    for literal in (PENDING, UNROUTED, DAY, "dev001/2026110100/a.json"):
        assert f"'{literal}'" not in sql
    assert "WHERE keys.device_id = devices.device_id" in sql
    assert "key_counts" not in sql
    values = {v for _, c in rendered for p in c.params.values() for v in (p if isinstance(p, list) else [p])}
    assert {PENDING, UNROUTED, DAY, "dev001/2026110100/a.json"} <= values
    index = next(i for i in keys.indexes if i.name == "ix_keys_pending_age")
    assert str(sa.schema.CreateIndex(index).compile(dialect=mssql.dialect())) == (
        "CREATE INDEX ix_keys_pending_age ON keys (status, discovered_at)"
    )
    assert not schema.counts_maintained("mssql")


def test_a_page_of_odd_keys_and_their_outcomes_arrive_exactly(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What PostgreSQL sends as one JSON document (a page of new keys, a batch's outcomes) arrives
    exactly as the row forms of SQLite deliver it: quotes, backslashes, braces, commas, non-ASCII
    text, NULLs and microseconds (a device id holds no backslash or comma: `names`)."""
    found = datetime(2026, 11, 1, 2, 3, 4, 567891)
    monkeypatch.setattr(registration, "utcnow", lambda: found)
    device = "dev\"'ü 😀1"
    registration.upsert_devices(engine, [(device, "BRCB")])
    names = [f'{device}/20261101{h:02d}/it\'s {{a,b}} \\ "ü" 😀 {h}.json' for h in range(3)]
    assert registration.register_keys(engine, objects(*names, "dev009/2026110100/u.json"), TZ, REINGEST).registered == 4
    with engine.connect() as conn:
        rows = {r.key: r for r in conn.execute(sa.select(keys)).all()}
    assert {n: (rows[n].device_id, rows[n].key_hour, rows[n].discovered_at, rows[n].etag) for n in names} == {
        n: (device, datetime(2026, 11, 1, h), found, "etag") for h, n in enumerate(names)
    }
    assert rows["dev009/2026110100/u.json"].dstrct_code is None

    batch = protocol.claim_batch(engine, DAY, "BRCB", 10, "run-1", 60)
    assert batch is not None and [k.key for k in batch.keys] == names
    error = 'line 1: it\'s "bad" \\ {x,y}\nzweite Zeile ü 😀'
    first, second, third = (k.key_id for k in batch.keys)
    outcomes = [
        KeyOutcome(first, SUCCESS, rows=5, duplicate_rows=1),
        KeyOutcome(second, QUARANTINED, error=error),
        KeyOutcome(third, SUCCESS, rows=2, quarantined_lines=3),
    ]
    protocol.commit_batch(engine, batch.batch_id, outcomes, [], 7, 3)
    with engine.connect() as conn:
        stmt = sa.select(keys.c.key_id, keys.c.status, keys.c.rows, keys.c.quarantined_lines, keys.c.duplicate_rows)
        got = {r.key_id: tuple(r)[1:] for r in conn.execute(stmt.add_columns(keys.c.error)).all()}
    assert (got[first], got[second], got[third]) == (
        (SUCCESS, 5, 0, 1, None),
        (QUARANTINED, 0, 0, 0, error),
        (SUCCESS, 2, 3, 0, None),
    )
    assert counted(engine) == recount(engine)


def test_indexes_are_partial_where_the_planner_can_use_them() -> None:
    """PostgreSQL's index of PENDING keys' age and its index of batches leave out the rows they are
    never asked for; SQLite can use only the IS NOT NULL one with bound parameters; MSSQL gets both
    whole (its cached plans for parameterised statements may not rely on a filtered index)."""
    rendered = {
        dialect.name: {i.name: str(sa.schema.CreateIndex(i).compile(dialect=dialect)) for i in keys.indexes}
        for dialect in (postgresql.dialect(), sqlite.dialect(), mssql.dialect())
    }
    assert rendered["postgresql"]["ix_keys_pending_age"].endswith("(status, discovered_at) WHERE status = 'PENDING'")
    assert rendered["postgresql"]["ix_keys_batch_id"].endswith("(batch_id) WHERE batch_id IS NOT NULL")
    assert rendered["sqlite"]["ix_keys_batch_id"].endswith("(batch_id) WHERE batch_id IS NOT NULL")
    assert "WHERE" not in rendered["sqlite"]["ix_keys_pending_age"]
    assert not [sql for sql in rendered["mssql"].values() if "WHERE" in sql]
    created: dict[str, list[str]] = {}
    for name in ("postgresql", "sqlite", "mssql"):
        mock = sa.create_mock_engine(f"{name}://", lambda ddl, *_a, name=name, **_k: created[name].append(str(ddl)))
        created[name] = []
        schema.metadata.create_all(mock, checkfirst=False)
    # each device's latest hour: an index only where no summary keeps it
    assert [name for name, ddl in created.items() if any("ix_keys_device_hour" in d for d in ddl)] == ["mssql"]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("SELECT min(discovered_at) FROM keys WHERE status = %(status)s", "ix_keys_pending_age"),
        ("SELECT key_id FROM keys WHERE batch_id = %(batch_id)s", "ix_keys_batch_id"),
    ],
)
def test_postgresql_plans_read_the_partial_indexes(query: str, index: str) -> None:
    """With the values bound as our statements bind them (psycopg2), the planner can read each
    partial index: with sequential scans off, the plan names it."""
    with ledger_helpers.postgres_schema(ledger_helpers.postgres_url()) as (pg, _schema):
        with pg.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = conn.exec_driver_sql(f"EXPLAIN {query}", {"status": PENDING, "batch_id": "b-1"}).scalars().all()
    assert index in "\n".join(plan)
