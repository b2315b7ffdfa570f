"""The `datalog` command end to end, each scenario in child processes as a user runs it.

Covers `generate`, `devices load` (a quoted id with a comma, exit code 2 and one clear line for a bad
header), `ingest --json` (rows, runs, failures, idempotence of a second run with nothing new), runs
recorded in DAGSTER_HOME with their partition tags, keys of unknown devices waiting as UNROUTED
until the registry names them, keys dated outside the date partitions (skipped and reported, not a
crash), `ledger status --json`, a run that cannot write the lake (exit 1, the failed partitions
named, keys handed back), raw store and lake on S3 with the ledger on PostgreSQL, and `datalog
demo` in an empty directory. The commands called in this process (`cli.main`) are in
unit/test_cli_in_process.py.

Real parts only: `python -m datalog_platform.cli` in subprocesses with a prepared environment,
local directories, SQLite ledger files, moto's S3 HTTP server on 127.0.0.1 (read back with DuckDB's
httpfs), the running PostgreSQL named by DATALOG_TEST_POSTGRES_URL (a fresh schema per test; the S3
scenario falls back to SQLite when it is unset), and the Dagster instance each CLI run records into.
Nothing is mocked.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from datalog_platform.core.generate import generate, log_lines, registry_csv
from datalog_platform.core.ledger import raw_keys
from datalog_platform.core.ledger.schema import (
    ABORTED,
    COMMITTED,
    PENDING,
    SUCCESS,
    UNROUTED,
    batches,
)
from datalog_platform.core.store import LocalStore, S3Access, S3Store
from datalog_platform_tests.support import cli_helpers, ledger_helpers
from datalog_platform_tests.support.cli_helpers import run_cli, run_json, run_ok, sqlite_url
from datalog_platform_tests.support.lake import lake_rows, local_files, row_ids, s3_lake_keys
from datalog_platform_tests.support.ledger_helpers import device_table, key_table, seed_registry
from datalog_platform_tests.support.raw_data import ndjson, raw_log_keys, raw_records

DAY = "2026-11-01"


@contextmanager
def dagster_instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance the CLI recorded its runs in, opened the way `dagster dev` opens it."""
    assert (dagster_home / "dagster.yaml").is_file(), f"no dagster.yaml in {dagster_home}"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


def partition_tags(runs: list[dg.DagsterRun]) -> Counter[str]:
    return Counter(run.tags.get("dagster/partition", "<none>") for run in runs)


# ---------------------------------------------------------------------------------------------
# Local stores + SQLite


def test_local_ingest_records_runs_and_is_idempotent(tmp_path: Path) -> None:
    """generate -> devices load -> ingest -> ingest again (nothing new) -> ledger status."""
    home = tmp_path / "home"
    regions = ("BRCB", "KPCS")
    env = cli_helpers.cli_env(home, DATALOG_KEY_LIMIT_PER_RUN="12")
    # 2 devices x 16 hours from 00:00 UTC: all local DAY (UTC+8); 16 keys per region, 12 per run.
    gen = run_ok(env, "generate", "--devices", "2", "--hours", "16", "--rows", "12", "--seed", "3")
    files, generated_rows, bad_lines = cli_helpers.generated_counts(gen.stdout)
    assert files == 32
    assert (home / "devices.csv").is_file()
    expected = sorted(raw_records(LocalStore(home / "raw")))
    assert len(expected) == generated_rows

    loaded = run_ok(env, "devices", "load", str(home / "devices.csv"))
    assert "2 new" in loaded.stdout

    summary = run_json(env, "ingest", "--json")
    partitions = [f"{DAY}|{r}" for r in regions]
    expected_runs = len(regions) * 2  # a partition's runs repeat until nothing is pending
    assert summary["failed_runs"] == []
    assert summary["registered"] == files
    assert summary["unrouted"] == 0
    assert summary["keys"] == files
    assert summary["rows"] == generated_rows
    assert summary["quarantined_lines"] == bad_lines
    assert summary["runs"] == expected_runs
    assert summary["partitions"] == partitions

    engine = sa.create_engine(sqlite_url(home))
    try:
        with engine.connect() as conn:
            claimed = conn.execute(sa.select(batches.c["keys"], batches.c.status)).all()
    finally:
        engine.dispose()
    assert sorted(claimed) == [(4, COMMITTED)] * 2 + [(12, COMMITTED)] * 2  # DATALOG_KEY_LIMIT_PER_RUN=12

    lake = home / "lake"
    rows = lake_rows(str(lake))
    assert row_ids(rows) == expected
    assert {f"{r['hiveperiod']}|{r['dstrct_code']}" for r in rows} == set(partitions)

    dagster_home = home / "dagster_home"
    with dagster_instance(dagster_home) as instance:
        runs = instance.get_runs()
        assert len(runs) == summary["runs"]
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert {run.job_name for run in runs} == {"ingest_partition_job"}
        assert all(run.tags.get("datalog/trigger") == "cli" for run in runs)
        tags = partition_tags(runs)
        assert tags == Counter({p: 2 for p in partitions})
        for run in runs:
            day, region = run.tags["dagster/partition"].split("|")
            assert run.tags.get("dagster/partition/date") == day
            assert run.tags.get("dagster/partition/region") == region
        assert instance.get_materialized_partitions(dg.AssetKey("datalog_parquet")) == set(partitions)
        assert set(instance.get_dynamic_partitions("region")) == set(regions)

    # Nothing new: no run, no file touched.
    before = local_files(lake)
    assert before
    again = run_json(env, "ingest", "--json")
    assert again["failed_runs"] == []
    assert (again["registered"], again["runs"], again["rows"], again["keys"]) == (0, 0, 0, 0)
    assert local_files(lake) == before
    with dagster_instance(dagster_home) as instance:
        assert len(instance.get_runs()) == summary["runs"]

    status = run_json(env, "ledger", "status", "--json")
    assert status["by_status"] == {SUCCESS: files}
    assert status["by_region"] == {r: {SUCCESS: files // len(regions)} for r in regions}
    assert status["rows"] == generated_rows


def test_keys_that_cannot_be_ingested_yet_wait(tmp_path: Path) -> None:
    """Keys of a device missing from the registry wait as UNROUTED (exit 0); once `devices load`
    names it (a quoted id with an apostrophe and a space in it, in a region nobody had yet) the next
    ingest takes them.

    In the same raw store a device with a wrong clock uploaded under an hour a month ahead (beyond
    the last daily partition) and one years back (before DATALOG_PARTITIONS_START_DATE): `ingest`
    still finishes with its summary and no traceback, keeps those keys PENDING and reports them.
    """
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    raw = LocalStore(home / "raw")
    known = generate(raw, devices=2, hours=2, rows=10, seed=5)

    def upload(device: str, hour: datetime, seed: int) -> str:
        key = f"{device}/{hour:%Y%m%d%H}/log.json"
        lines = log_lines(device, hour, 10, random.Random(seed), bad=False)
        raw.write_bytes(key, ndjson(*lines))
        return key

    stranger, new_region = "edge '07", "NEWR"
    stranger_keys = [upload(stranger, datetime(2026, 11, 1, h), h) for h in range(2)]
    future = (datetime.now(UTC) + timedelta(days=30)).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    odd_keys = [upload("dev00000", future, 7), upload("dev00000", datetime(2019, 6, 1, 0), 8)]
    future_date = raw_keys.local_date(future, cli_helpers.TZ_OFFSET_HOURS)
    expected = raw_records(raw)
    stranger_rows = sorted(r for r in expected if r[0] in stranger_keys)
    known_rows = sorted(r for r in expected if r[0] not in stranger_keys and r[0] not in odd_keys)
    assert len(stranger_rows) == 20 and len(known_rows) == known.rows

    seed_registry(sqlite_url(home), known.devices)
    proc = run_cli(env, "ingest", "--json")
    assert "Traceback" not in proc.stderr, cli_helpers.describe(proc)
    assert proc.returncode == 0, cli_helpers.describe(proc)
    first = cli_helpers.json_of(proc)
    assert first["failed_runs"] == []
    assert first["registered"] == known.files + len(stranger_keys) + len(odd_keys)
    assert first["unrouted"] == len(stranger_keys)
    assert first["keys"] == known.files
    assert first["rows"] == known.rows
    # The operator is told about the out-of-range keys: the summary counts them, or names the date.
    reported = first.get("out_of_range_keys") == len(odd_keys) or future_date in proc.stdout + proc.stderr
    assert reported, cli_helpers.describe(proc)
    table = key_table(sqlite_url(home))
    assert {k: (r["status"], r["dstrct_code"]) for k, r in table.items() if k in stranger_keys} == {
        k: (UNROUTED, None) for k in stranger_keys
    }
    assert {k: table[k]["status"] for k in odd_keys} == {k: PENDING for k in odd_keys}
    assert row_ids(lake_rows(str(home / "lake"))) == known_rows

    full = cli_helpers.write_csv(
        tmp_path / "full.csv",
        registry_csv(known.devices).decode() + f'"{stranger}",{new_region}\n',
    )
    loaded = run_ok(env, "devices", "load", str(full))
    assert "1 new" in loaded.stdout
    assert "2 waiting keys routed" in loaded.stdout

    second = run_json(env, "ingest", "--json")
    assert second["failed_runs"] == []
    assert second["unrouted"] == 0
    assert (second["registered"], second["keys"], second["rows"]) == (0, 2, 20)
    assert second["partitions"] == [f"{DAY}|{new_region}"]
    rows = lake_rows(str(home / "lake"))
    assert row_ids(rows) == sorted(known_rows + stranger_rows)
    assert {(r["device_id"], r["dstrct_code"]) for r in rows if r["source_file"] in stranger_keys} == {
        (stranger, new_region)
    }
    table = key_table(sqlite_url(home))
    assert {k: r["status"] for k, r in table.items()} == {k: PENDING if k in odd_keys else SUCCESS for k in table}


def test_ingest_says_which_objects_it_could_not_ingest_and_exits_partial(tmp_path: Path) -> None:
    """An object deleted between its discovery and its run: `datalog ingest` ingests the others,
    names what it could not ingest in its summary and exits 3 ("partial"); `--json` says the same;
    once the object is back, the next ingest takes it and exits 0."""
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    raw = LocalStore(home / "raw")
    summary = generate(raw, devices=1, hours=3, rows=10, seed=4, bad_file_share=0.0)
    first = run_json(env, "ingest", "--json")  # the device is not in the registry yet: UNROUTED
    assert (first["registered"], first["unrouted"]) == (3, 3)
    gone = sorted(raw_log_keys(raw))[1]
    kept_bytes = raw.read_bytes(gone)
    raw.delete([gone])
    run_ok(
        env, "devices", "load", str(cli_helpers.write_csv(tmp_path / "d.csv", registry_csv(summary.devices).decode()))
    )

    proc = run_cli(env, "ingest")
    assert proc.returncode == 3, cli_helpers.describe(proc)
    assert "not ingested: 1 object(s) gone from the raw store (MISSING), 0 quarantined whole, 0 failed" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert key_table(sqlite_url(home))[gone]["status"] == "MISSING"
    assert {r["source_file"] for r in lake_rows(str(home / "lake"))} == set(raw_log_keys(raw))

    raw.write_bytes(gone, kept_bytes)
    again = run_json(env, "ingest", "--json")
    assert (again["missing_keys"], again["keys"]) == (0, 1)
    assert {r["source_file"] for r in lake_rows(str(home / "lake"))} == set(raw_log_keys(raw))


def test_devices_load_rejects_a_wrong_header(tmp_path: Path) -> None:
    """The console script exits 2 with one clear line on stderr and loads nothing."""
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    seed_registry(sqlite_url(home), [("old", "BRCB")])
    bad = cli_helpers.write_csv(tmp_path / "bad.csv", "device,region\nnew1,BRCB\n")
    proc = run_cli(env, "devices", "load", str(bad))
    assert proc.returncode == 2, cli_helpers.describe(proc)
    assert proc.stderr.startswith("datalog: "), cli_helpers.describe(proc)
    assert "header must be device_id,dstrct_code" in proc.stderr, cli_helpers.describe(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert device_table(sqlite_url(home)) == {"old": "BRCB"}


@pytest.mark.parametrize("region", ["../../../../../escape", "Ü REGION"])
def test_devices_load_refuses_a_region_that_is_not_a_safe_name(tmp_path: Path, region: str) -> None:
    """A path-like region would put lake directories outside the dataset, a unicode one a
    percent-encoded directory that the abort cannot find: one line naming the CSV line, nothing
    loaded, and the ingest that follows writes nothing outside the lake."""
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    seed_registry(sqlite_url(home), [("old", "BRCB")])
    bad = cli_helpers.write_csv(tmp_path / "bad.csv", f"device_id,dstrct_code\ndev1,{region}\n")
    proc = run_cli(env, "devices", "load", str(bad))
    assert proc.returncode == 2, cli_helpers.describe(proc)
    assert proc.stderr.strip().splitlines() == [
        f"datalog: registry CSV line 2: dstrct_code {region!r} is not valid: expected 1 to 64 characters "
        "from A-Z a-z 0-9 _ -, starting with a letter or digit"
    ], cli_helpers.describe(proc)
    assert device_table(sqlite_url(home)) == {"old": "BRCB"}
    LocalStore(home / "raw").write_bytes("dev1/2026100500/log.json", b'{"heartbeat": 1791158400}\n')
    run_ok(env, "ingest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "home"]
    assert not (home / "lake" / "datalog_v2").exists()
    assert key_table(sqlite_url(home))["dev1/2026100500/log.json"]["status"] == "UNROUTED"


# ---------------------------------------------------------------------------------------------
# S3 (moto) + PostgreSQL


@pytest.fixture
def postgres_else_sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A ledger URL for one scenario, not parametrized: a fresh PostgreSQL schema (search_path in the
    URL) when DATALOG_TEST_POSTGRES_URL is set, else a SQLite file."""
    base = os.environ.get(ledger_helpers.POSTGRES_URL_ENV)
    if not base:
        yield sqlite_url(tmp_path / "home")
        return
    with ledger_helpers.postgres_schema(base) as (_engine, schema):
        yield ledger_helpers.schema_url(base, schema)


def test_s3_end_to_end(
    tmp_path: Path, moto_server: str, s3_client: Any, s3_bucket: str, postgres_else_sqlite_url: str
) -> None:
    """Raw store and lake on moto's S3 server, ledger on PostgreSQL (or SQLite): every row lands."""
    home = tmp_path / "home"
    secret = f"secret-{uuid.uuid4().hex}"
    env = cli_helpers.cli_env(
        home,
        DATALOG_RAW_URL=f"s3://{s3_bucket}/raw",
        DATALOG_LAKE_URL=f"s3://{s3_bucket}/lake",
        DATALOG_LEDGER_URL=postgres_else_sqlite_url,
        DATALOG_S3_ENDPOINT_URL=moto_server,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_REGION="us-east-1",
    )
    access = S3Access(region="us-east-1", endpoint_url=moto_server, access_key_id="testing", secret_access_key=secret)
    outputs: list[str] = []

    gen = run_ok(env, "generate", "--devices", "2", "--hours", "2", "--rows", "10", "--seed", "11")
    outputs += [gen.stdout, gen.stderr]
    files, generated_rows, bad_lines = cli_helpers.generated_counts(gen.stdout)
    raw = S3Store(s3_bucket, "raw/", s3_client, access)
    expected = sorted(raw_records(raw))
    assert len(raw_log_keys(raw)) == files == 4
    assert len(expected) == generated_rows

    loaded = run_ok(env, "devices", "load", str(home / "devices.csv"))
    outputs += [loaded.stdout, loaded.stderr]
    proc = run_cli(env, "ingest", "--json")
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, cli_helpers.describe(proc)
    summary = cli_helpers.json_of(proc)
    assert summary["failed_runs"] == []
    assert (summary["keys"], summary["rows"], summary["quarantined_lines"]) == (files, generated_rows, bad_lines)
    assert summary["partitions"] == [f"{DAY}|{r}" for r in ("BRCB", "KPCS")]

    rows = lake_rows(f"s3://{s3_bucket}/lake", access)
    assert row_ids(rows) == expected
    lake_objects = s3_lake_keys(S3Store(s3_bucket, "lake/", s3_client, access))
    assert lake_objects
    assert all(k.endswith(".parquet") and "/part-" in k for k in lake_objects), sorted(lake_objects)

    table = key_table(postgres_else_sqlite_url)
    assert len(table) == files
    assert {r["status"] for r in table.values()} == {SUCCESS}
    assert sum(int(r["rows"]) for r in table.values()) == generated_rows

    # The AWS secret is never printed nor stored in Dagster's run history.
    assert not any(secret in text for text in outputs)
    for path in (home / "dagster_home").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"secret found in {path}"


# ---------------------------------------------------------------------------------------------
# Failure and the demo


@pytest.mark.parametrize("blocked", ["lake-root-under-a-file", "dataset-dir-is-a-file"])
def test_failed_run_exits_nonzero_and_hands_keys_back(tmp_path: Path, blocked: str) -> None:
    """A lake that cannot be written: exit 1, each failed partition named (on stderr; in
    `failed_runs` with --json), the runs recorded as failures in DAGSTER_HOME, every key PENDING
    again (none SUCCESS), no file left behind."""
    home = tmp_path / "home"
    if blocked == "lake-root-under-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a regular file")
        lake = blocker / "lake"
    else:
        lake = tmp_path / "lake"
        lake.mkdir()
        (lake / "datalog_v2").write_text("a regular file where the dataset directory belongs")
    env = cli_helpers.cli_env(home, DATALOG_LAKE_URL=str(lake))
    raw = LocalStore(home / "raw")
    summary = generate(raw, devices=2, hours=2, rows=5, seed=2)
    seed_registry(sqlite_url(home), summary.devices)
    partitions = [f"{DAY}|BRCB", f"{DAY}|KPCS"]

    if blocked == "lake-root-under-a-file":
        proc = run_cli(env, "ingest")
        assert proc.returncode == 1, cli_helpers.describe(proc)
        for partition in partitions:
            assert f"FAILED: {partition}" in proc.stderr, cli_helpers.describe(proc)
    else:
        result = run_json(env, "ingest", "--json", expect_code=1)
        assert [f.split(" ")[0] for f in result["failed_runs"]] == partitions, result
        assert (result["runs"], result["rows"], result["keys"]) == (2, 0, 0)

    table = key_table(sqlite_url(home))
    engine = sa.create_engine(sqlite_url(home))
    try:
        with engine.connect() as conn:
            batch_statuses = conn.execute(sa.select(batches.c.status)).scalars().all()
    finally:
        engine.dispose()
    assert {r["status"] for r in table.values()} == {PENDING}
    if blocked == "dataset-dir-is-a-file":
        # Claimed, failed while writing, aborted: attempts counted, the error kept for the operator.
        assert {r["attempts"] for r in table.values()} == {1}
        assert all("datalog_v2" in (r["error"] or "") for r in table.values())
        assert sorted(batch_statuses) == [ABORTED, ABORTED]
        assert local_files(lake) == {"datalog_v2": (lake / "datalog_v2").stat().st_mtime_ns}
    else:
        # The lake could not even be opened: nothing was claimed, or what was claimed was released.
        assert {r["attempts"] for r in table.values()} <= {0, 1}
        assert set(batch_statuses) <= {ABORTED}
        assert not lake.exists()

    with dagster_instance(home / "dagster_home") as instance:
        runs = instance.get_runs()
        assert {run.status for run in runs} == {dg.DagsterRunStatus.FAILURE}
        assert partition_tags(runs) == Counter(partitions)


def test_demo_in_an_empty_directory(tmp_path: Path) -> None:
    """`datalog demo` with no configuration at all: exit 0, says where the lake is and what to do next."""
    cwd = (tmp_path / "fresh").resolve()
    cwd.mkdir()
    env = cli_helpers.cli_env(cwd)
    for name in ("DATALOG_HOME", "DAGSTER_HOME"):
        env.pop(name)
    proc = run_cli(env, "demo", cwd=cwd)
    assert proc.returncode == 0, cli_helpers.describe(proc)
    out = proc.stdout

    lake = cwd / ".datalog" / "lake"
    assert f"{lake}/datalog_v2" in out
    assert "Next:" in out and "ledger status" in out
    _files, generated_rows, _bad = cli_helpers.generated_counts(out)
    rows = lake_rows(str(lake))
    assert len(rows) == generated_rows
    listed = [line.strip() for line in out.splitlines() if line.strip().startswith("hiveperiod=")]
    assert listed, out
    assert sum(int(line.split(": ")[1].split(" rows")[0]) for line in listed) == generated_rows
    assert (cwd / ".datalog" / "dagster" / "dagster.yaml").is_file()

    # Quiet: no warning from any library, in the demo or in the next command a newcomer runs.
    assert "Warning" not in out + proc.stderr, cli_helpers.describe(proc)
    status = run_cli(env, "ledger", "status", cwd=cwd)
    assert status.returncode == 0 and "Warning" not in status.stdout + status.stderr, cli_helpers.describe(status)

    # The registry is a materialized asset, and the date partitions start at the demo's first date.
    with dagster_instance(cwd / ".datalog" / "dagster") as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey("device_registry")) is not None
    first_date = min(line.split("hiveperiod=")[1][:10] for line in listed)
    settings_file = (cwd / ".datalog" / "datalog.env").read_text()
    assert f"DATALOG_PARTITIONS_START_DATE={first_date}" in settings_file.splitlines()
