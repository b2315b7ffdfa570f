"""JSON lines of one batch -> hive-partitioned Parquet rows | quarantine records, in DuckDB.

Fast path: one `read_json` over every file of the batch (DuckDB's own reader, straight from the
store). With `ignore_errors`, a line DuckDB cannot parse becomes a row of NULLs, so it has no valid
heartbeat: a file is clean exactly when every row it produced has a valid instant. Files that are
not clean take the line path, which is what gives line numbers, raw lines and reasons: Python only
splits the bytes into lines (C speed); DuckDB validates each line and the clean lines are read back
by the same `read_json`. Where the two reads inferred different types for a field, the field is
carried as JSON on both sides.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from datalog_platform.core.ledger.fields import FieldSeen
from datalog_platform.core.ledger.protocol import LakeFile
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.lines import FileOutcome, SourceFile, validate_lines
from datalog_platform.core.transform.shape import (
    HASH_SCHEME,
    HEARTBEAT,
    RECORD_HASH,
    RESCUED,
    Shape,
    hash_scheme,
    quote,
    record_hash_sql,
    shape_fields,
    widened_type,
)
from datalog_platform.core.transform.timestamps import is_numeric, with_instant
from datalog_platform.core.transform.write import copy_to_lake

DATASET = "datalog_v2"
QUARANTINE = "quarantine"

# Columns this pipeline writes; a record field of the same name is replaced by ours.
OUTPUT_COLUMNS = ("datetime_wita", "source_file", "hiveperiod", "dstrct_code")
_PATH_COLUMN = "__dl_path"
_INTERNAL = (_PATH_COLUMN, "__dl_ts", "__dl_key")
# DuckDB expands these as globs in a file list; such keys (and, on S3, anything unusual in a URL)
# are read by the line path instead.
_LOCAL_SAFE = re.compile(r"[^*?\[\]{}]+")
_S3_SAFE = re.compile(r"[A-Za-z0-9._\-/=]+")


@dataclass
class ConvertResult:
    outcomes: list[FileOutcome]
    files: list[LakeFile] = field(default_factory=list)
    rows: int = 0
    quarantined_lines: int = 0
    duplicate_rows: int = 0
    rescued_values: dict[str, int] = field(default_factory=dict)  # field -> values kept in `_rescued`
    new_fields: list[str] = field(default_factory=list)
    widened_fields: list[str] = field(default_factory=list)
    bytes_written: int = 0
    line_path_files: int = 0
    partitions: dict[str, int] = field(default_factory=dict)  # hiveperiod -> rows
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds


class Phases:
    """Seconds spent in each named phase: `with phases("read"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


class LakeCatalog(Protocol):
    """What a conversion needs to know of, and tell, the ledger."""

    def known_fields(self) -> dict[str, str]:
        """The dataset's fields and their types."""

    def record_fields(self, new: list[FieldSeen], widened: dict[str, tuple[str, str]]) -> dict[str, str]:
        """Record new fields and widened types; the dataset's fields as they now are."""

    def stored_files(self, dirs: list[str]) -> list[str]:
        """The LIVE files of the directories that stay after this batch (lake paths)."""

    def record_intent(self, dirs: list[str]) -> None:
        """Note the directories the batch is about to write into."""


def _fast_path_eligible(store: ObjectStore, key: str) -> bool:
    pattern = _S3_SAFE if store.uri().startswith("s3://") else _LOCAL_SAFE
    return pattern.fullmatch(key) is not None


def _read_json_sql() -> str:
    """read_json over the file list in the variable `dl_files` (see `BatchConverter._set_files`)."""
    return (
        # sample_size = -1: infer types from every line, not the first 20,480 of each file; a
        # field or type first seen later would otherwise be dropped or nulled without a trace.
        "read_json(getvariable('dl_files'), format = 'newline_delimited', records = true, "
        f"ignore_errors = true, union_by_name = true, filename = '{_PATH_COLUMN}', "
        # a `name=value` directory in a raw path is not a column of the records
        "sample_size = -1, hive_partitioning = false)"
    )


def _schema(conn: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column -> type of a table, view or query."""
    return {name: kind for name, kind, *_ in conn.execute(f"DESCRIBE {relation}").fetchall()}


def _conflicting_columns(schemas: list[dict[str, str]]) -> set[str]:
    """Columns whose inferred types differ between relations in a way DuckDB's union cannot
    reconcile (numbers of different widths can); those are carried as JSON on every side."""
    kinds: dict[str, set[str]] = {}
    for schema in schemas:
        for column, kind in schema.items():
            kinds.setdefault(column, set()).add(kind)
    return {c for c, k in kinds.items() if len(k) > 1 and not all(is_numeric(x) for x in k)}


class BatchConverter:
    """Converts the files of one batch; one instance per batch and DuckDB connection."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        raw: ObjectStore,
        lake: ObjectStore,
        batch_id: str,
        part_date: str,
        region: str,
        tz_offset_hours: int,
    ) -> None:
        self.conn = conn
        self.raw = raw
        self.lake = lake
        self.batch_id = batch_id
        self.part_date = part_date
        self.region = region
        self.tz_offset_hours = tz_offset_hours
        self._has_lines = False

    def convert(self, files: Sequence[SourceFile], catalog: LakeCatalog) -> ConvertResult:
        outcomes = {f.key_id: FileOutcome(f.key_id) for f in files}
        phases = Phases()
        scratch = Path(tempfile.mkdtemp(prefix=f"datalog-{self.batch_id}-"))
        try:
            paths: dict[str, SourceFile] = {}
            fast = [f for f in files if _fast_path_eligible(self.raw, f.key)]
            slow = [f for f in files if not _fast_path_eligible(self.raw, f.key)]
            relations: list[str] = []
            if fast:
                fast_paths = {self.raw.uri(f.key): f for f in fast}
                with phases("read"):
                    read = self._fast_read(fast_paths)
                if read is None:
                    slow += fast
                else:
                    paths.update(fast_paths)
                    relations.append("_dl_fast")
                    slow += [fast_paths[p] for p in read]
            if slow:
                with phases("line_path"):
                    clean = validate_lines(self.conn, self.raw, slow, outcomes, scratch)
                    self._has_lines = True
                    if clean:
                        paths.update(clean)
                        self._set_files(clean)
                        self.conn.execute(f"CREATE OR REPLACE TEMP TABLE _dl_clean AS {self._read_with_instant()}")
                        relations.append("_dl_clean")
            result = ConvertResult(outcomes=list(outcomes.values()), line_path_files=len(slow), phases=phases.seconds)
            with phases("stage"):
                self._set_files(paths)
                self._define_good_rows(relations)
                self._stage(result, catalog)
            with phases("dedupe_stored"):
                self._remove_stored_duplicates(catalog)
            with phases("count"):
                self._count(result, outcomes)
                catalog.record_intent(self._target_dirs(result))
            with phases("write_verify"):
                self._write(result)
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.conn.execute("DROP TABLE IF EXISTS _dl_out")

    # -- fast path -----------------------------------------------------------------------------

    @staticmethod
    def _read_with_instant() -> str:
        """read_json of a file list, plus the UTC instant `__dl_ts` of each row's heartbeat.

        `to_json` makes the rules independent of the type read_json inferred for the field; a
        batch whose records all lack `heartbeat` fails to bind and takes the line path.
        """
        return with_instant(f"SELECT * FROM {_read_json_sql()}", "to_json(heartbeat)", "JSON", "__dl_ts")

    def _set_files(self, paths: dict[str, SourceFile]) -> None:
        """Table `_dl_paths` (path -> key, key id) and variable `dl_files` (the path list).

        Passed as Arrow: a Python list parameter of 1,000 paths costs DuckDB ~0.2 s to convert.
        """
        table = pa.table(
            {
                _PATH_COLUMN: pa.array(list(paths), pa.string()),
                "__dl_key": pa.array([f.key for f in paths.values()], pa.string()),
                "__dl_key_id": pa.array([f.key_id for f in paths.values()], pa.int64()),
            }
        )
        self.conn.register("_dl_paths_arrow", table)
        self.conn.execute("CREATE OR REPLACE TEMP TABLE _dl_paths AS SELECT * FROM _dl_paths_arrow")
        self.conn.unregister("_dl_paths_arrow")
        self.conn.execute(f"SET VARIABLE dl_files = (SELECT list({_PATH_COLUMN}) FROM _dl_paths)")

    def _fast_read(self, paths: dict[str, SourceFile]) -> list[str] | None:
        """Read every file once, with its instants, into `_dl_fast`; return the files that need
        the line path (also as table `_dl_flagged`), or None if read_json could not read the set
        (then every file does)."""
        self._set_files(paths)
        try:
            self.conn.execute(f"CREATE OR REPLACE TEMP TABLE _dl_fast AS {self._read_with_instant()}")
        except duckdb.OutOfMemoryException:
            raise  # the line path would need more memory, not less
        except duckdb.Error:
            return None
        self.conn.execute(
            f"CREATE OR REPLACE TEMP TABLE _dl_flagged AS "
            f"SELECT DISTINCT {_PATH_COLUMN} FROM _dl_fast WHERE __dl_ts IS NULL"
        )
        return [path for (path,) in self.conn.execute(f"SELECT {_PATH_COLUMN} FROM _dl_flagged").fetchall()]

    # -- staging, counting, writing --------------------------------------------------------------

    def _define_good_rows(self, relations: list[str]) -> None:
        """View `_dl_good`: every valid row with its instant and source key, from both paths.

        Rows of flagged files come from the line path only. A view, not a table: the COPY reads
        the rows where they are instead of copying them once more.
        """
        schemas = {t: {c: k for c, k in _schema(self.conn, t).items() if c != "__dl_ts"} for t in relations}
        to_json = _conflicting_columns(list(schemas.values()))
        selects = []
        for table, schema in schemas.items():
            columns = ", ".join(f"to_json({quote(c)}) AS {quote(c)}" if c in to_json else quote(c) for c in schema)
            where = "__dl_ts IS NOT NULL"
            if table == "_dl_fast":
                where += f" AND {_PATH_COLUMN} NOT IN (SELECT {_PATH_COLUMN} FROM _dl_flagged)"
            selects.append(f"SELECT {columns}, __dl_ts FROM {table} WHERE {where}")
        if not selects:
            selects.append(f"SELECT NULL::VARCHAR AS {_PATH_COLUMN}, NULL::TIMESTAMP AS __dl_ts WHERE false")
        self.conn.execute(
            f"""CREATE OR REPLACE TEMP VIEW _dl_good AS
            SELECT g.*, p.__dl_key, p.__dl_key_id
            FROM ({" UNION ALL BY NAME ".join(selects)}) g JOIN _dl_paths p USING ({_PATH_COLUMN})"""
        )

    def _stage(self, result: ConvertResult, catalog: LakeCatalog) -> None:
        """Table `_dl_out`: the batch's rows as they will be written (fields with the dataset's
        types, `_rescued`, the output columns, `_record_hash`), each record once."""
        reserved = {*OUTPUT_COLUMNS, *_INTERNAL, "__dl_key_id", RESCUED, RECORD_HASH, HASH_SCHEME}
        batch = {c: k for c, k in _schema(self.conn, "_dl_good").items() if c not in reserved}
        known = catalog.known_fields()
        new: list[FieldSeen] = []
        unknown = [c for c in batch if c not in known]
        if unknown:
            firsts = self.conn.execute(
                "SELECT "
                + ", ".join(f"min(CASE WHEN {quote(c)} IS NOT NULL THEN __dl_key END)" for c in unknown)
                + " FROM _dl_good"
            ).fetchone()
            for name, first_key in zip(unknown, firsts, strict=True):
                if first_key is None:
                    del batch[name]  # no value anywhere in the batch: nothing to type or write yet
                else:
                    new.append(FieldSeen(name, "VARCHAR" if name == HEARTBEAT else batch[name], first_key))
        widened = {}
        for name, kind in batch.items():
            if name in known and known[name] != kind and is_numeric(kind) and is_numeric(known[name]):
                wider = widened_type(self.conn, known[name], kind)
                if wider != known[name]:
                    widened[name] = (known[name], wider)
        lake = catalog.record_fields(new, widened) if new or widened else known
        result.new_fields = [f.field for f in new]
        result.widened_fields = sorted(widened)
        lake_types = {c: lake.get(c, k) for c, k in batch.items()}
        shape = shape_fields(batch, lake_types)
        local = self._local_sql()
        staged = f"""SELECT {", ".join(shape.columns)},
                {local} AS datetime_wita, __dl_key AS source_file,
                strftime({local}, '%Y-%m-%d') AS hiveperiod, __dl_key_id
            FROM _dl_good"""
        self.scheme = hash_scheme(self.conn)
        self.conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE _dl_out AS
            SELECT *, {record_hash_sql(shape, lake_types, "datetime_wita")} AS {RECORD_HASH},
                $dl_scheme::VARCHAR AS {HASH_SCHEME}
            FROM ({staged})""",
            {**shape.params, "dl_scheme": self.scheme},
        )
        # Each record once, from the first key that carried it. A grouping, not a window over
        # every row: DuckDB spills a grouping to disk, and only records seen twice are touched.
        self.conn.execute(
            f"""DELETE FROM _dl_out USING (
                SELECT datetime_wita, {RECORD_HASH}, arg_min(rowid, (__dl_key_id, rowid)) AS keep
                FROM _dl_out GROUP BY ALL HAVING count(*) > 1) d
            WHERE _dl_out.datetime_wita = d.datetime_wita AND _dl_out.{RECORD_HASH} = d.{RECORD_HASH}
                AND _dl_out.rowid <> d.keep"""
        )
        if shape.rescues:
            result.rescued_values = dict(
                self.conn.execute(
                    f"""SELECT field, count(*) FROM (
                        SELECT unnest(json_keys({RESCUED})) AS field FROM _dl_out WHERE {RESCUED} IS NOT NULL)
                    GROUP BY ALL ORDER BY ALL"""
                ).fetchall()
            )

    def _remove_stored_duplicates(self, catalog: LakeCatalog, attempts: int = 5) -> None:
        """Delete from `_dl_out` the records the lake's LIVE files of the same directories hold.

        Only the stored rows within the batch's time span can repeat its records: the range lets
        DuckDB skip every row group whose statistics lie outside it, so a partition that grows
        hour by hour is not read whole for each new hour. A stored row of this DuckDB's hash
        scheme is compared by its `_record_hash`; any other row by its hash recomputed from its
        columns (see `shape`).
        """
        days = [d for (d,) in self.conn.execute("SELECT DISTINCT hiveperiod FROM _dl_out").fetchall()]
        dirs = [f"{DATASET}/hiveperiod={day}/dstrct_code={self.region}" for day in days]
        first, last = self.conn.execute("SELECT min(datetime_wita), max(datetime_wita) FROM _dl_out").fetchone()
        for attempt in range(1, attempts + 1):
            stored = catalog.stored_files(dirs)
            if not stored:
                return
            self.conn.execute("SET VARIABLE dl_stored = $files", {"files": [self.lake.uri(p) for p in stored]})
            files = "read_parquet(getvariable('dl_stored'), union_by_name = true, hive_partitioning = false)"
            try:
                hashed = self._stored_hash_sql(_schema(self.conn, f"SELECT * FROM {files}"))
                self.conn.execute(
                    f"""DELETE FROM _dl_out USING (
                        SELECT DISTINCT datetime_wita, {hashed.columns[0]} AS h FROM {files}
                        WHERE datetime_wita BETWEEN $first AND $last) s
                    WHERE _dl_out.datetime_wita = s.datetime_wita AND _dl_out.{RECORD_HASH} = s.h""",
                    {**hashed.params, "first": first, "last": last},
                )
                return
            except (duckdb.IOException, duckdb.HTTPException):
                # a compaction or rebuild replaced a file of the listed state: list again
                if attempt == attempts:
                    raise

    def _stored_hash_sql(self, stored: dict[str, str]) -> Shape:
        """The `_record_hash` of stored rows as this batch computes it: the stored value where
        the row was hashed under this scheme, else recomputed from the row's fields."""
        fields = {c: k for c, k in stored.items() if c not in {*OUTPUT_COLUMNS, RESCUED, RECORD_HASH, HASH_SCHEME}}
        hashed = Shape()
        recomputed = record_hash_sql(hashed, fields, "datetime_wita")
        if RECORD_HASH in stored and HASH_SCHEME in stored:
            scheme = hashed.param(self.scheme)
            recomputed = f"CASE WHEN {HASH_SCHEME} = {scheme} THEN {RECORD_HASH} ELSE {recomputed} END"
        hashed.columns.append(recomputed)
        return hashed

    def _count(self, result: ConvertResult, outcomes: dict[int, FileOutcome]) -> None:
        for key_id, rows in self.conn.execute("SELECT __dl_key_id, count(*) FROM _dl_good GROUP BY ALL").fetchall():
            outcomes[key_id].duplicate_rows = rows
        for key_id, day, rows in self.conn.execute(
            "SELECT __dl_key_id, hiveperiod, count(*) FROM _dl_out GROUP BY ALL"
        ).fetchall():
            outcomes[key_id].rows += rows
            outcomes[key_id].duplicate_rows -= rows
            result.partitions[day] = result.partitions.get(day, 0) + rows
        if self._has_lines:
            for key_id, bad in self.conn.execute(
                "SELECT key_id, count(*) FROM _dl_lines WHERE reason IS NOT NULL GROUP BY ALL"
            ).fetchall():
                outcomes[key_id].quarantined_lines = bad
        result.rows = sum(o.rows for o in outcomes.values())
        result.quarantined_lines = sum(o.quarantined_lines for o in outcomes.values())
        result.duplicate_rows = sum(o.duplicate_rows for o in outcomes.values())

    def _local_sql(self) -> str:
        return f"(__dl_ts + to_hours({int(self.tz_offset_hours)}))"

    def _target_dirs(self, result: ConvertResult) -> list[str]:
        region = self.region
        dirs = [f"{DATASET}/hiveperiod={day}/dstrct_code={region}" for day in result.partitions]
        if result.quarantined_lines:
            dirs.append(f"{QUARANTINE}/hiveperiod={self.part_date}/dstrct_code={region}")
        return dirs

    def _write(self, result: ConvertResult) -> None:
        if result.rows:
            select = "SELECT * EXCLUDE (__dl_key_id), $region::VARCHAR AS dstrct_code FROM _dl_out"
            self._copy(select, {"region": self.region}, DATASET, result.rows, result)
        if result.quarantined_lines:
            select = """SELECT source_file, line_number, raw_line, reason,
                    $batch_id::VARCHAR AS batch_id, $part_date::VARCHAR AS hiveperiod,
                    $region::VARCHAR AS dstrct_code
                FROM _dl_lines WHERE reason IS NOT NULL"""
            self._copy(
                select,
                {"batch_id": self.batch_id, "part_date": self.part_date, "region": self.region},
                QUARANTINE,
                result.quarantined_lines,
                result,
            )

    def _copy(self, select: str, params: dict[str, object], dataset: str, expected: int, result: ConvertResult) -> None:
        written = copy_to_lake(self.conn, self.lake, select, params, dataset, self.batch_id, expected)
        result.files += written
        result.bytes_written += sum(f.bytes for f in written)
