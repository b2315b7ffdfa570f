"""Runs vs throughput on the production topology: 1, 2 and 4 concurrent runs.

For each limit N, a topology of its own: Dagster's storage in a new PostgreSQL database
(deploy/dagster.yaml with `max_concurrent_runs: N`), the ledger in a new PostgreSQL database, the
gRPC code server, `dagster-daemon` and `dagster-webserver` on a workspace written from
deploy/workspace.yaml. The same raw files (6 devices x 72 hours x 2,000 rows: 9 date x region
partitions) are dropped into the raw store; `raw_logs_sensor` registers them and `pending_keys_sensor`
requests one incremental run per partition, which the run queue runs N at a time.

- rows/s: rows the ledger recorded as ingested / (last run's end - first run's start), from
  Dagster's `runs` table;
- ledger transactions/s: the ledger database's `xact_commit + xact_rollback` in
  `pg_stat_database`, sampled every 0.5 s, from the last sample before the first run started to the
  first sample after the last run ended, over the run window (pg_stat_statements is not loaded on
  this server, so statements are not counted; a transaction holds one or a few statements). The
  sensors' ticks on the ledger during the window are included.

Writes its table into benchmarks/REPORT.md between `<!-- scale-out:begin -->` and
`<!-- scale-out:end -->` (the section is appended if the markers are missing). Needs the test
PostgreSQL server: DATALOG_TEST_POSTGRES_URL (default postgresql+psycopg2://postgres@127.0.0.1:5432/test).

    .venv/bin/python benchmarks/scale_out.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DATALOG_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

from report_sections import write_section  # noqa: E402

from datalog_platform.core.generate import generate  # noqa: E402
from datalog_platform.core.store import LocalStore  # noqa: E402
from datalog_platform_tests.support.cli_helpers import run_ok  # noqa: E402
from datalog_platform_tests.support.daemon_helpers import (  # noqa: E402
    BIN,
    answering,
    poll,
    service_env,
    start_daemon,
    start_webserver,
)
from datalog_platform_tests.support.net import free_port  # noqa: E402
from datalog_platform_tests.support.production import (  # noqa: E402
    dagster_database,
    grpc_healthy,
    most_at_once,
    production_dagster_home,
    production_instance,
    run_records,
    start_code_server,
    workspace_for_port,
)

REPORT = REPO / "benchmarks" / "REPORT.md"
BEGIN, END = "<!-- scale-out:begin -->", "<!-- scale-out:end -->"
TZ_OFFSET_HOURS = 8
DEVICES, HOURS, ROWS = 6, 72, 2000
START = datetime(2026, 10, 4, 16)  # UTC; 00:00 local at +8, so 72 hours are three local dates
LIMITS = (1, 2, 4)


@dataclass
class Measure:
    max_concurrent_runs: int
    runs: int
    most_at_once: int
    rows: int
    run_window_s: float
    rows_per_s: float
    ledger_xacts: int
    ledger_xacts_per_s: float


def ledger_transactions(ledger_url: str) -> int:
    """Committed plus rolled-back transactions of the ledger's database so far (pg_stat_database)."""
    url = sa.make_url(ledger_url)
    engine = sa.create_engine(url.set(database="postgres"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            value = conn.execute(
                sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
                {"name": url.database},
            ).scalar_one()
    finally:
        engine.dispose()
    return int(value)


def ledger_state(ledger_url: str) -> tuple[int, int]:
    """(keys SUCCESS, rows ingested) in the ledger."""
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            done, rows = conn.execute(
                sa.text("SELECT count(*), coalesce(sum(rows), 0) FROM keys WHERE status = 'SUCCESS'")
            ).one()
    finally:
        engine.dispose()
    return int(done), int(rows)


def measure(limit: int, raw_dir: Path, work: Path) -> Measure:
    """One topology with the run queue at `limit`: its sensors find the raw files and request a run
    per partition; returns the figures once every key is ingested and every run has finished."""
    home = work / f"runs-{limit}"
    home.mkdir(parents=True)
    files = DEVICES * HOURS
    with dagster_database() as dagster_pg_url, dagster_database("datalog_bench_ledger") as ledger_pg_url:
        ledger_url = sa.make_url(ledger_pg_url).set(drivername="postgresql+psycopg2").render_as_string(False)
        dagster_home = production_dagster_home(home / "dagster_home")
        config = yaml.safe_load((dagster_home / "dagster.yaml").read_text())
        config["concurrency"]["runs"]["max_concurrent_runs"] = limit
        (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        code_env = service_env(
            home,
            dagster_home,
            TZ_OFFSET_HOURS,
            DAGSTER_PG_URL=dagster_pg_url,
            DATALOG_LEDGER_URL=ledger_url,
            DATALOG_RAW_URL=str(raw_dir),
            DATALOG_RAM_LIMIT="1GB",
            DATALOG_PARTITIONS_START_DATE="2026-10-01",
        )
        run_ok(code_env, "devices", "load", str(raw_dir / "_registry" / "devices.csv"))
        services = []
        samples: list[tuple[float, int]] = []  # (epoch seconds, ledger transactions so far)
        instance = production_instance(dagster_home, dagster_pg_url)
        try:
            code_port, web_port = free_port(), free_port()
            workspace = workspace_for_port(home / "workspace.yaml", code_port)
            services.append(start_code_server(home, code_env, home / "code-server.log", code_port))
            poll(lambda: grpc_healthy(code_port), 120, "the code server", daemon=services[0])
            env = {k: v for k, v in code_env.items() if not k.startswith("DATALOG_")}
            services.append(start_webserver(BIN, workspace, env, home / "webserver.log", web_port))
            poll(lambda: answering(web_port), 180, "the webserver", daemon=services[0])
            services.append(start_daemon(BIN, workspace, env, home / "daemon.log"))

            def finished() -> bool:
                samples.append((time.time(), ledger_transactions(ledger_url)))
                if ledger_state(ledger_url)[0] < files:
                    return False
                runs = instance.get_runs()
                return bool(runs) and all(r.is_finished for r in runs)

            poll(finished, 1800, "every key ingested", interval=0.5, daemon=services[-1])
        finally:
            for service in reversed(services):
                service.stop(grace=5)
            instance.dispose()
        records = [r for r in run_records(dagster_pg_url) if r.job_name == "ingest_partition_job"]
        assert records and {r.status for r in records} == {"SUCCESS"}, records
        spans = [(r.start, r.end) for r in records if r.start is not None and r.end is not None]
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        before = max((x for t, x in samples if t <= first), default=samples[0][1])
        after = min((x for t, x in samples if t >= last), default=samples[-1][1])
        rows = ledger_state(ledger_url)[1]
        assert rows == DEVICES * HOURS * ROWS, rows
        window = last - first
        xacts = after - before
        return Measure(limit, len(records), most_at_once(spans), rows, window, rows / window, xacts, xacts / window)


def report_block(measures: list[Measure]) -> str:
    base = measures[0]
    lines = [
        BEGIN,
        f"Measured {date.today().isoformat()} with `python benchmarks/scale_out.py`. Machine: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; PostgreSQL on the same machine for Dagster's storage and the ledger.",
        f"Data: {DEVICES} devices x {HOURS} hours x {ROWS:,} rows = {DEVICES * HOURS * ROWS:,} rows in "
        f"{DEVICES * HOURS} files, 9 date x region partitions, found by the sensors, one incremental run each.",
        "",
        "| runs at once (limit) | most seen at once | rows/s | vs 1 | run window | ledger transactions/s | "
        "ledger transactions |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measures:
        lines.append(
            f"| {m.max_concurrent_runs} | {m.most_at_once} | {m.rows_per_s:,.0f} "
            f"| {m.rows_per_s / base.rows_per_s:.2f} x | {m.run_window_s:.1f} s "
            f"| {m.ledger_xacts_per_s:.1f} | {m.ledger_xacts:,} |"
        )
    lines += [
        "",
        "rows/s: rows the ledger recorded / (last run's end - first run's start), from Dagster's `runs` table. Ledger "
        "transactions: `xact_commit + xact_rollback` of the ledger's own database in `pg_stat_database` over the same "
        "window (pg_stat_statements is not loaded on this server, so these are transactions, one or a few statements "
        "each; the sensors' ticks in the window are included).",
        "",
        f"On {os.cpu_count()} cores this shows the cost of coordination, not a speed-up: every run is a run worker and "
        "two step processes that import Dagster and the code location, and runs at once share the same cores, so more "
        "runs at once cannot add CPU. What it does show is that the ledger's claims and commits stay a small load "
        "(tens of transactions a second) and that runs of different partitions proceed side by side without "
        "blocking each other; throughput grows with runs at once only where each run gets cores of its own (a pod or a "
        "task per run).",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the topologies' files here (default: a temporary dir)")
    parser.add_argument("--no-report", action="store_true", help="print the figures without writing REPORT.md")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="datalog-scale-out-"))
    raw_dir = work / "raw"
    raw = LocalStore(raw_dir)
    generate(raw, devices=DEVICES, hours=HOURS, rows=ROWS, seed=7, start=START, bad_file_share=0)
    measures = []
    for limit in LIMITS:
        measures.append(measure(limit, raw_dir, work))
        print(json.dumps(asdict(measures[-1])), flush=True)
    block = report_block(measures)
    print(block)
    if not args.no_report:
        write_section(REPORT, BEGIN, END, block, "Scale-out: runs vs throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
