"""One batch end to end: convert its files in a reader process, verify, commit; abort (files
deleted) on any failure.

Plain functions over an engine, the reader's settings and two stores; no Dagster here.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import duckdb
import sqlalchemy as sa

from datalog_platform.core.duckdb_setup import ReaderSettings
from datalog_platform.core.errors import is_transient
from datalog_platform.core.isolation import ReaderCrash, ReadTask, run_isolated
from datalog_platform.core.ledger import claims, fields, outcomes, protocol, swap
from datalog_platform.core.ledger.records import DATASET
from datalog_platform.core.ledger.schema import FAILED, MISSING, QUARANTINED, REBUILD, SUCCESS
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.convert import ConvertResult
from datalog_platform.core.transform.lines import FileOutcome, SourceFile


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
    missing_keys: int = 0  # objects gone when the batch read them (MISSING)
    changed_keys: int = 0  # objects changed before or during the read: their new version waits
    kept_keys: int = 0  # a rebuild's keys whose objects are gone: the lake keeps their rows
    failed_keys: int = 0  # objects that crashed the reader (FAILED)
    carried_rows: int = 0  # rows of other keys carried over from the files a re-ingest rewrote

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


class LedgerCatalog:
    """The ledger as one batch's conversion sees it (`convert.LakeCatalog`)."""

    def __init__(self, engine: sa.Engine, batch: claims.Batch) -> None:
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


def outcomes_of(batch: claims.Batch, result: ConvertResult, raw: ObjectStore) -> list[outcomes.KeyOutcome]:
    """The ledger's outcome of each key of the batch from what its conversion found."""
    claimed = {k.key_id: k for k in batch.keys}
    found = []
    for o in result.outcomes:
        key = claimed[o.key_id]
        error = o.error
        if o.failure is not None:
            status, error = FAILED, o.failure
        elif o.gone:
            status = outcomes.KEPT if batch.kind == REBUILD and key.lake_version is not None else MISSING
            error = f"the object {raw.uri(key.key)} was gone from the raw store when its batch read it"
        elif o.changed_to is not None:
            status = outcomes.CHANGED
        else:
            status = QUARANTINED if o.error else SUCCESS
        found.append(
            outcomes.KeyOutcome(
                key_id=o.key_id,
                status=status,
                rows=o.rows,
                quarantined_lines=o.quarantined_lines,
                duplicate_rows=o.duplicate_rows,
                error=error,
                version=key.version,
                seen=o.changed_to,
            )
        )
    return found


def reader_failure(exc: BaseException) -> str | None:
    """Why `exc` means the reader could not take its files ("crashed the reader: ...", "exhausted
    the reader: ...", "broke the reader: ..."), or None: a crash of its process, or an error of
    DuckDB that is not the infrastructure's (`errors.is_transient`)."""
    if isinstance(exc, ReaderCrash):
        return f"crashed the reader: {exc}"
    if isinstance(exc, duckdb.Error) and not is_transient(exc):
        what = "exhausted" if isinstance(exc, duckdb.OutOfMemoryException) else "broke"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{what} the reader: {type(exc).__name__}: {first_line}"
    return None


def _breaking(files: Sequence[SourceFile], probe: Callable[[Sequence[SourceFile]], None]) -> dict[SourceFile, str]:
    """The files that break the reader alone (`reader_failure`), each with why, found by halving
    the set that broke it."""
    try:
        probe(files)
        return {}
    except Exception as exc:
        failure = reader_failure(exc)
        if failure is None:
            raise
        if len(files) == 1:
            return {files[0]: failure}
        half = len(files) // 2
        return {**_breaking(files[:half], probe), **_breaking(files[half:], probe)}


def convert_batch(
    engine: sa.Engine,
    reader: ReaderSettings,
    raw: ObjectStore,
    lake: ObjectStore,
    batch: claims.Batch,
    tz_offset_hours: int,
) -> ConvertResult:
    """Convert the batch's files in a reader process (`isolation`). If the reader dies or fails
    on its data, the files that do it are found by halving; each is tried alone on the line path,
    which quarantines the lines the reader cannot take, and one that breaks the reader even so is
    FAILED with the cause ("crashed the reader: ..."). The others are converted again, in the
    same run and at no cost to them. A failure no single file repeats is the batch's."""
    held = tuple(swap.held_files(engine, batch.batch_id)) if batch.holds else ()
    files = tuple(SourceFile(k.key_id, k.key, k.object_version, k.lake_version is not None) for k in batch.keys)
    catalog = LedgerCatalog(engine, batch)
    task = ReadTask(reader, raw, lake, batch.batch_id, batch.part_date, batch.dstrct_code, tz_offset_hours, files, held)

    def probe(subset: Sequence[SourceFile], line_path: frozenset[int] = frozenset()) -> None:
        run_isolated(replace(task, files=tuple(subset), line_path=line_path, probe=True))

    try:
        return run_isolated(task, catalog)
    except Exception as exc:
        if reader_failure(exc) is None:
            raise
        first = exc
    protocol.delete_batch_files(engine, lake, batch.batch_id)
    breaking = _breaking(files, probe)
    if not breaking:
        raise first
    failed: dict[int, str] = {}
    for f in breaking:
        try:
            probe([f], frozenset([f.key_id]))
        except Exception as exc:
            failure = reader_failure(exc)
            if failure is None:
                raise
            failed[f.key_id] = f"{failure} while reading {raw.uri(f.key)}"
    line_path = frozenset(f.key_id for f in breaking if f.key_id not in failed)
    rest = tuple(f for f in files if f.key_id not in failed)
    result: ConvertResult = run_isolated(replace(task, files=rest, line_path=line_path), catalog)
    result.outcomes += [FileOutcome(key_id, failure=reason) for key_id, reason in failed.items()]
    return result


def ingest_batch(
    engine: sa.Engine,
    reader: ReaderSettings,
    raw: ObjectStore,
    lake: ObjectStore,
    batch: claims.Batch,
    tz_offset_hours: int,
    lease_seconds: int,
    max_attempts: int,
    policy: str,
) -> BatchReport:
    """Write the batch's rows to the lake and commit it, exactly once.

    On any error the batch is aborted before the error propagates: its files are deleted and its
    keys go back to PENDING (or FAILED once attempts run out); a transient failure (`errors`)
    costs them no attempt. A batch that holds its partition's files replaces, at its commit, the
    files with rows of the keys it read again (`convert`); the retired ones are deleted after.
    `policy` is the rewrite policy for a key found in a newer version meanwhile.
    """
    started = time.perf_counter()
    try:
        with LeaseRenewer(engine, batch.batch_id, lease_seconds):
            result = convert_batch(engine, reader, raw, lake, batch, tz_offset_hours)
            settled = outcomes_of(batch, result, raw)
            committing = time.perf_counter()
            protocol.commit_batch(
                engine,
                batch.batch_id,
                settled,
                result.files,
                result.rows,
                result.quarantined_lines,
                retired=result.replaced_files if batch.holds else None,
                policy=policy,
                reread_days=result.vanished_days,
            )
            result.phases["commit"] = time.perf_counter() - committing
    except Exception as exc:
        transient = is_transient(exc)
        protocol.abort_batch(
            engine, lake, batch.batch_id, f"{type(exc).__name__}: {exc}", max_attempts, charge_attempt=not transient
        )
        raise
    replaced = protocol.delete_retired(engine, lake, batch.batch_id)
    counted = Counter(o.status for o in settled)
    return BatchReport(
        batch_id=batch.batch_id,
        keys=len(batch.keys),
        bytes_read=batch.bytes,
        rows=result.rows,
        quarantined_lines=result.quarantined_lines,
        quarantined_keys=counted[QUARANTINED],
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
        missing_keys=counted[MISSING],
        changed_keys=counted[outcomes.CHANGED],
        kept_keys=counted[outcomes.KEPT],
        failed_keys=counted[FAILED],
        carried_rows=result.carried_rows,
    )
