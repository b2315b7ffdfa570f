"""The ledger at 1 M and 3 M keys on PostgreSQL: registration rate, every query a sensor or
schedule tick makes, claims and commits of 1,000 keys; extrapolated to 10 M keys.

    .venv/bin/python benchmarks/ledger_scale.py                  # 1 M and 3 M keys, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/ledger_scale.py --label before   # keep the figures under another label

Each size gets its own database `datalog_ledger_bench_<n>` on the server of `--server` (created
fresh, dropped at the end). 1,000 devices in 10 regions each drop one file an hour; the keys are
registered through `registration.register_keys` one list page (1,000 keys) at a time, in the
order S3 lists them, as discovery does. Then `VACUUM ANALYZE` (what autovacuum does on its own),
then every query is run `--repeats` times and 30 claims of 1,000 keys are made and committed.

A size-n query time is extrapolated to 10 M keys along the line through the 1 M and 3 M medians
(a slope below zero, which is noise, counts as flat). The figures go to benchmarks/ledger_scale.json
(one entry per label) and between the `ledger-scale` markers of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from report_sections import write_section

from datalog_platform.core.ledger import protocol, registration, stats
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.schema import SUCCESS, create_schema
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- ledger-scale:begin -->", "<!-- ledger-scale:end -->"
DEVICES = 1000
REGIONS = 10
PAGE = 1000
CLAIM = 1000
FIRST_HOUR = datetime(2026, 1, 1)
TARGET_N = 10_000_000
TICK_TARGET_MS = 100.0
CLAIM_TARGET_MS = 30.0
REGISTER_TARGET = 20_000.0


def device_names() -> list[tuple[str, str]]:
    return [(f"dev{d:04d}", f"R{d % REGIONS:02d}") for d in range(DEVICES)]


def pages(n: int) -> Iterator[list[ObjectInfo]]:
    """`n` raw keys (one per device and hour) in list order (device first), a page at a time."""
    hours = n // DEVICES
    names = [f"{FIRST_HOUR + timedelta(hours=h):%Y%m%d%H}" for h in range(hours)]
    page: list[ObjectInfo] = []
    for device, _ in device_names():
        for hour in names:
            page.append(ObjectInfo(f"{device}/{hour}/log.json", 4096, "etag"))
            if len(page) == PAGE:
                yield page
                page = []
    if page:
        yield page


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median and max milliseconds of `repeats` calls."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(samples), 2), "max_ms": round(max(samples), 2)}


def admin_engine(server: str) -> sa.Engine:
    return sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")


def recreate_database(server: str, name: str, drop_only: bool = False) -> None:
    admin = admin_engine(server)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not drop_only:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


def measure_size(server: str, n: int, repeats: int, claims: int) -> dict[str, Any]:
    name = f"datalog_ledger_bench_{n}"
    recreate_database(server, name)
    engine = sa.create_engine(f"{server}/{name}")
    try:
        create_schema(engine)
        registration.upsert_devices(engine, device_names())
        started = time.perf_counter()
        registered = 0
        for page in pages(n):
            registered += registration.register_keys(engine, page, 0, REINGEST).registered
        seconds = time.perf_counter() - started
        print(f"{n:,} keys: registered {registered:,} in {seconds:.1f} s ({registered / seconds:,.0f} keys/s)")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        return {
            "keys": registered,
            "register_seconds": round(seconds, 1),
            "register_keys_per_s": round(registered / seconds),
            **measure_queries(engine, n, repeats, claims),
        }
    finally:
        engine.dispose()
        recreate_database(server, name, drop_only=True)


def measure_queries(engine: sa.Engine, n: int, repeats: int, claims: int) -> dict[str, Any]:
    backlog = registration.pending_partitions(engine)
    days = sorted({p.part_date for p in backlog})
    known_page = next(pages(n))
    with tempfile.TemporaryDirectory() as lake_dir:
        lake = LocalStore(Path(lake_dir))
        queries = {
            "pending_partitions": lambda: registration.pending_partitions(engine),
            "partition_fingerprints": lambda: registration.partition_fingerprints(engine),
            "backlog": lambda: stats.backlog(engine),
            "latest_hour_by_device": lambda: stats.latest_hour_by_device(engine),
            "register_keys_known_page": lambda: registration.register_keys(engine, known_page, 0, REINGEST),
            "recover_expired": lambda: protocol.recover_expired(engine, lake, 3),
            "writing_batches_of_run": lambda: stats.writing_batches_of_run(engine, "no-such-run"),
            "regions_with_keys": lambda: stats.regions_with_keys(engine, days[len(days) // 2]),
            "status_counts": lambda: registration.status_counts(engine),
            "partitions_with_keys": lambda: stats.partitions_with_keys(engine, days[0], days[-1]),
        }
        figures = {}
        for label, fn in queries.items():
            figures[label] = timed(fn, repeats)
            print(f"  {label}: {figures[label]}")
        claim_ms, commit_ms = [], []
        for part in backlog[:claims]:
            started = time.perf_counter()
            batch = protocol.claim_batch(engine, part.part_date, part.dstrct_code, CLAIM, "bench", 600)
            claim_ms.append((time.perf_counter() - started) * 1000)
            assert batch is not None and len(batch.keys) == min(CLAIM, part.keys)
            outcomes = [KeyOutcome(k.key_id, SUCCESS, rows=10) for k in batch.keys]
            started = time.perf_counter()
            protocol.commit_batch(engine, batch.batch_id, outcomes, [], 10 * len(outcomes), 0)
            commit_ms.append((time.perf_counter() - started) * 1000)
    for label, samples in (("claim_1000", claim_ms), ("commit_1000", commit_ms)):
        figures[label] = {
            "median_ms": round(statistics.median(samples), 2),
            "max_ms": round(max(samples), 2),
            "samples": len(samples),
        }
        print(f"  {label}: {figures[label]}")
    return {"partitions": len(backlog), "queries": figures}


# Which process runs each query, and how often.
WHO = {
    "pending_partitions": "pending_keys_sensor (and the hourly schedule), every tick",
    "partition_fingerprints": "the same backlog as a dict",
    "backlog": "raw_logs_sensor, every tick",
    "latest_hour_by_device": "raw_logs_sensor, every tick",
    "register_keys_known_page": "raw_logs_sensor, per list page (1,000 keys already known)",
    "recover_expired": "expired_lease_sensor, every tick",
    "writing_batches_of_run": "batch_recovery_sensor, per failed run",
    "regions_with_keys": "daily_analytics_schedule, every tick",
    "status_counts": "`datalog ledger status`, `datalog ingest`",
    "partitions_with_keys": "partition checks (an asset check, not a tick)",
    "claim_1000": "a run's claim",
    "commit_1000": "a run's commit",
}
TICK_QUERIES = (
    "pending_partitions",
    "partition_fingerprints",
    "backlog",
    "latest_hour_by_device",
    "register_keys_known_page",
    "recover_expired",
    "writing_batches_of_run",
    "regions_with_keys",
)


def extrapolate(small: float, large: float, n_small: int, n_large: int, n: int = TARGET_N) -> float:
    slope = max(0.0, (large - small) / (n_large - n_small))
    return small + slope * (n - n_small)


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Per query: the extrapolated 10 M median and whether its target is met at every size."""
    sizes = sorted(run["sizes"], key=int)
    lo, hi = sizes[0], sizes[-1]
    out: dict[str, Any] = {}
    for label in run["sizes"][lo]["queries"]:
        medians = {s: run["sizes"][s]["queries"][label]["median_ms"] for s in sizes}
        # one size measured: no line to extrapolate along
        at_10m = extrapolate(medians[lo], medians[hi], int(lo), int(hi)) if lo != hi else None
        target = CLAIM_TARGET_MS if label == "claim_1000" else TICK_TARGET_MS if label in TICK_QUERIES else None
        met = None if target is None else all(m <= target for m in medians.values())
        if met and at_10m is not None:
            met = at_10m <= target
        out[label] = {"at_10m_ms": None if at_10m is None else round(at_10m, 1), "target_ms": target, "met": met}
    rates = [run["sizes"][s]["register_keys_per_s"] for s in sizes]
    out["registration"] = {"keys_per_s": rates, "met": all(r >= REGISTER_TARGET for r in rates)}
    return out


def verdict(met: bool | None) -> str:
    return "" if met is None else "met" if met else "missed"


def report_section(results: dict[str, Any], label: str) -> str:
    run = results[label]
    sizes = sorted(run["sizes"], key=int)
    summary = summarise(run)
    head = " | ".join(f"{int(s) // 1_000_000} M median / max" for s in sizes)
    lines = [
        BEGIN,
        f"## The ledger at {' and '.join(f'{int(s) // 1_000_000} M' for s in sizes)} keys (PostgreSQL)",
        "",
        f"Measured {run['measured_at']} with `python benchmarks/ledger_scale.py --label {label}` "
        f"(PostgreSQL {run['server_version']}, {run['machine']}). {DEVICES:,} devices in {REGIONS} regions, "
        "one key per device and hour, every key PENDING; registration one list page of 1,000 keys per "
        "`register_keys` call, in list order; then `VACUUM ANALYZE`; each query "
        f"{run['repeats']} times; {run['claims']} claims of 1,000 keys, each committed. "
        + (
            "10 M: along the line through the smallest and largest size's medians. "
            if len(sizes) > 1
            else "One size only, so no extrapolation to 10 M. "
        )
        + "Targets: every query a tick makes <= 100 ms, claim median <= 30 ms, registration >= 20 k keys/s.",
        "",
        *([f"`--label {label}`: {run['note']}", ""] if run.get("note") else []),
        f"| query | who runs it | {head} | 10 M (extrapolated) | target | |",
        "|---|---|" + "---|" * len(sizes) + "---|---|---|",
    ]
    for q in run["sizes"][sizes[0]]["queries"]:
        cells = " | ".join(
            f"{run['sizes'][s]['queries'][q]['median_ms']:,.1f} / {run['sizes'][s]['queries'][q]['max_ms']:,.1f} ms"
            for s in sizes
        )
        target = summary[q]["target_ms"]
        at_10m = "not measured" if summary[q]["at_10m_ms"] is None else f"{summary[q]['at_10m_ms']:,.1f} ms"
        lines.append(
            f"| `{q}` | {WHO[q]} | {cells} | {at_10m} | "
            f"{'' if target is None else f'<= {target:.0f} ms'} | {verdict(summary[q]['met'])} |"
        )
    rates = " | ".join(f"{run['sizes'][s]['register_keys_per_s']:,} keys/s" for s in sizes)
    lines.append(
        f"| registration | raw_logs_sensor, reconcile | {rates} | | >= 20,000 keys/s | "
        f"{verdict(summary['registration']['met'])} |"
    )
    others = [other for other in results if other != label]
    for other in others:
        before = results[other]
        common = [s for s in sizes if s in before["sizes"]]
        lines += [
            "",
            f"Against `--label {other}` ({before['measured_at']}, {before.get('note', '')}), medians:",
            "",
            "| query | "
            + " | ".join(f"{int(s) // 10**6} M {other} | {int(s) // 10**6} M {label}" for s in common)
            + " |",
            "|---|" + "---|---|" * len(common),
        ]
        for q in run["sizes"][sizes[0]]["queries"]:
            cells = " | ".join(
                f"{before['sizes'][s]['queries'].get(q, {}).get('median_ms', float('nan')):,.1f} ms | "
                f"{run['sizes'][s]['queries'][q]['median_ms']:,.1f} ms"
                for s in common
            )
            lines.append(f"| `{q}` | {cells} |")
        cells = " | ".join(
            f"{before['sizes'][s]['register_keys_per_s']:,} keys/s | {run['sizes'][s]['register_keys_per_s']:,} keys/s"
            for s in common
        )
        lines.append(f"| registration | {cells} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--server", default="postgresql+psycopg2://postgres@127.0.0.1:5432")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--claims", type=int, default=30)
    parser.add_argument("--label", default="current")
    parser.add_argument("--note", default="", help="what the label's code is, for the report")
    args = parser.parse_args()

    admin = admin_engine(args.server)
    with admin.connect() as conn:
        server_version = conn.execute(sa.text("SHOW server_version")).scalar_one().split(" ")[0]
    admin.dispose()
    run: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d"),
        "note": args.note,
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "server_version": server_version,
        "repeats": args.repeats,
        "claims": args.claims,
        "sizes": {str(n): measure_size(args.server, n, args.repeats, args.claims) for n in args.sizes},
    }
    run["summary"] = summarise(run)
    out = HERE / "ledger_scale.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.label] = run
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_section(
        HERE / "REPORT.md",
        BEGIN,
        END,
        report_section({args.label: run, **{k: v for k, v in results.items() if k != args.label}}, args.label),
    )
    print(json.dumps(run["summary"], indent=2))


if __name__ == "__main__":
    main()
