"""One batch end to end: convert its files, verify, commit; abort (files deleted) on any failure.

Plain functions over an engine, a DuckDB connection and two stores; no Dagster here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import duckdb
import sqlalchemy as sa

from datalog_platform.core.ledger import fields, protocol, swap
from datalog_platform.core.ledger.schema import QUARANTINED, REBUILD, SUCCESS
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.convert import DATASET, BatchConverter, ConvertResult, SourceFile


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    keys: int
    bytes_read: int
    rows: int
    quarantined_lines: int
    quarantined_keys: int
    duplicate_rows: int
    rescued_values: dict[str, int]
    new_fields: list[str]
    widened_fields: list[str]
    line_path_files: int
    files: list[protocol.LakeFile]
    bytes_written: int
    partitions: dict[str, int]
    seconds: float
    replaced_files: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # read, stage, ..., commit -> seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class LeaseRenewer:
    """Renews a batch's lease in the background while its files are being written."""

    def __init__(self, engine: sa.Engine, batch_id: str, lease_seconds: int) -> None:
        self._engine = engine
        self._batch_id = batch_id
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{batch_id}", daemon=True)

    def _run(self) -> None:
        interval = max(self._lease_seconds / 3, 1)
        while not self._stop.wait(interval):
            if not protocol.renew_lease(self._engine, self._batch_id, self._lease_seconds):
                return

    def __enter__(self) -> LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RawObjectsMissingError(RuntimeError):
    """A rebuild found keys of its partition whose raw objects are gone from the raw store."""


def missing_raw_objects(raw: ObjectStore, batch: protocol.Batch) -> list[str]:
    """The batch's keys that the raw store no longer holds, found with one listing per device and
    UTC day (`{device}/{YYYYMMDD}`) rather than one request per key."""
    by_prefix: dict[str, set[str]] = {}
    for k in batch.keys:
        device, hour, _ = k.key.split("/", 2)
        by_prefix.setdefault(f"{device}/{hour[:8]}", set()).add(k.key)
    missing: list[str] = []
    for prefix, wanted in sorted(by_prefix.items()):
        found = {obj.key for obj in raw.list(prefix)}
        missing += sorted(wanted - found)
    return missing


class LedgerCatalog:
    """The ledger as one batch's conversion sees it (`convert.LakeCatalog`)."""

    def __init__(self, engine: sa.Engine, batch: protocol.Batch) -> None:
        self.engine = engine
        self.batch = batch

    def known_fields(self) -> dict[str, str]:
        return fields.known_fields(self.engine, DATASET)

    def record_fields(self, new: list[fields.FieldSeen], widened: dict[str, tuple[str, str]]) -> dict[str, str]:
        b = self.batch
        return fields.record_fields(self.engine, DATASET, b.batch_id, b.part_date, b.dstrct_code, new, widened)

    def stored_files(self, dirs: list[str]) -> list[str]:
        return [f.path for f in swap.files_staying(self.engine, dirs, self.batch.batch_id)]

    def record_intent(self, dirs: list[str]) -> None:
        protocol.record_intent(self.engine, self.batch.batch_id, dirs)


def outcomes_of(result: ConvertResult) -> list[protocol.KeyOutcome]:
    return [
        protocol.KeyOutcome(
            key_id=o.key_id,
            status=QUARANTINED if o.error else SUCCESS,
            rows=o.rows,
            quarantined_lines=o.quarantined_lines,
            duplicate_rows=o.duplicate_rows,
            error=o.error,
        )
        for o in result.outcomes
    ]


def ingest_batch(
    engine: sa.Engine,
    conn: duckdb.DuckDBPyConnection,
    raw: ObjectStore,
    lake: ObjectStore,
    batch: protocol.Batch,
    tz_offset_hours: int,
    lease_seconds: int,
    max_attempts: int,
) -> BatchReport:
    """Write the batch's rows to the lake and commit it, exactly once.

    On any error the batch is aborted before the error propagates: its files are deleted and its
    keys go back to PENDING (or FAILED once attempts run out).

    A REBUILD batch first checks that every raw object of its partition is still there (if not,
    it stops and the partition keeps its files); once committed, the files it replaced are deleted.
    """
    started = time.perf_counter()
    converter = BatchConverter(conn, raw, lake, batch.batch_id, batch.part_date, batch.dstrct_code, tz_offset_hours)
    files = [SourceFile(k.key_id, k.key) for k in batch.keys]
    try:
        with LeaseRenewer(engine, batch.batch_id, lease_seconds):
            if batch.kind == REBUILD and (missing := missing_raw_objects(raw, batch)):
                raise RawObjectsMissingError(
                    f"rebuild of {batch.part_date} / {batch.dstrct_code} stopped: {len(missing)} raw object(s) "
                    f"of the partition are gone from the raw store, e.g. {missing[:3]}; its files are kept"
                )
            result = converter.convert(files, LedgerCatalog(engine, batch))
            outcomes = outcomes_of(result)
            committing = time.perf_counter()
            protocol.commit_batch(engine, batch.batch_id, outcomes, result.files, result.rows, result.quarantined_lines)
            result.phases["commit"] = time.perf_counter() - committing
    except Exception as exc:
        protocol.abort_batch(engine, lake, batch.batch_id, f"{type(exc).__name__}: {exc}", max_attempts)
        raise
    replaced = protocol.delete_retired(engine, lake, batch.batch_id)
    return BatchReport(
        batch_id=batch.batch_id,
        keys=len(batch.keys),
        bytes_read=batch.bytes,
        rows=result.rows,
        quarantined_lines=result.quarantined_lines,
        quarantined_keys=sum(1 for o in outcomes if o.status == QUARANTINED),
        duplicate_rows=result.duplicate_rows,
        rescued_values=result.rescued_values,
        new_fields=result.new_fields,
        widened_fields=result.widened_fields,
        line_path_files=result.line_path_files,
        files=result.files,
        bytes_written=result.bytes_written,
        partitions=result.partitions,
        seconds=time.perf_counter() - started,
        replaced_files=replaced,
        phase_seconds=result.phases,
    )
