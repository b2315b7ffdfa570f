"""JSON lines of one batch -> hive-partitioned Parquet rows | quarantine records, in DuckDB.

The batch's files are read by `read.BatchReader` (the fast path, the line path, the guards and the
version checks around them). Here their rows are staged with the dataset's types, deduplicated
within the batch and against the lake, counted, and written with their quarantine records. Where
the fast and the line path inferred different types for a field, the field is carried as JSON on
both sides.

A batch that holds its partition's files (a rebuild, or keys seen in a new version) replaces the
rows the lake holds of the keys it read again: the held files with rows of those keys are
rewritten without them (the other rows carried over as they are), beside the new rows, and only
those files are replaced at the commit. A key whose object changed or was gone around the read is
not written, and its rows in the lake, if any, are carried over.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from datalog_platform.core.ledger.records import DATASET, QUARANTINE, FieldSeen, LakeFile
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.lines import FileOutcome, SourceFile
from datalog_platform.core.transform.read import (
    INTERNAL_COLUMNS,
    PATH_COLUMN,
    BatchReader,
    Phases,
    ReadLimits,
    schema_of,
)
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
from datalog_platform.core.transform.timestamps import is_numeric
from datalog_platform.core.transform.write import copy_to_lake

# Columns this pipeline writes; a record field of the same name is replaced by ours.
OUTPUT_COLUMNS = ("datetime_wita", "source_file", "hiveperiod", "dstrct_code")


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
    replaced_files: list[str] = field(default_factory=list)  # held files rewritten: retired at the commit
    carried_rows: int = 0  # rows (and quarantine records) of other keys carried over from them
    vanished_days: list[str] = field(default_factory=list)  # dates of records the replaced keys no longer hold


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


def _conflicting_columns(schemas: list[dict[str, str]]) -> set[str]:
    """Columns whose inferred types differ between relations in a way DuckDB's union cannot
    reconcile (numbers of different widths can); those are carried as JSON on every side."""
    kinds: dict[str, set[str]] = {}
    for schema in schemas:
        for column, kind in schema.items():
            kinds.setdefault(column, set()).add(kind)
    return {c for c, k in kinds.items() if len(k) > 1 and not all(is_numeric(x) for x in k)}


class BatchConverter:
    """Converts the files of one batch; one instance per batch and DuckDB connection.

    `held` are the LIVE files the batch holds (see the module docstring); `line_path` the key ids
    to read line by line whatever the fast path would make of them.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        raw: ObjectStore,
        lake: ObjectStore,
        batch_id: str,
        part_date: str,
        region: str,
        tz_offset_hours: int,
        limits: ReadLimits,
        held: Sequence[LakeFile] = (),
        line_path: frozenset[int] = frozenset(),
    ) -> None:
        self.reader = BatchReader(conn, raw, limits, line_path)
        self.conn = conn
        self.raw = raw
        self.lake = lake
        self.batch_id = batch_id
        self.part_date = part_date
        self.region = region
        self.tz_offset_hours = tz_offset_hours
        self.held = list(held)

    def convert(self, files: Sequence[SourceFile], catalog: LakeCatalog) -> ConvertResult:
        outcomes = {f.key_id: FileOutcome(f.key_id) for f in files}
        phases = Phases()
        scratch = Path(tempfile.mkdtemp(prefix=f"datalog-{self.batch_id}-"))
        try:
            with phases("versions"):
                readable = self.reader.unchanged(files, outcomes)
            paths, relations, line_path_files = self.reader.read(readable, outcomes, scratch, phases)
            with phases("versions"):
                self.reader.unchanged(readable, outcomes)
                paths = {p: f for p, f in paths.items() if _written(outcomes[f.key_id])}
                if self.reader.has_lines:
                    dropped = [f.key_id for f in readable if not _written(outcomes[f.key_id])]
                    self.conn.execute("DELETE FROM _dl_lines WHERE list_contains($ids, key_id)", {"ids": dropped})
            result = ConvertResult(outcomes=list(outcomes.values()), line_path_files=line_path_files)
            result.phases = phases.seconds
            with phases("stage"):
                self.reader.set_files(paths)
                self._define_good_rows(relations)
                self._stage(result, catalog)
            with phases("replace"):
                replaced = [f.key for f in files if f.in_lake and _written(outcomes[f.key_id])]
                touched = self._touched(replaced)
                result.vanished_days = self._vanished_days(touched)
            with phases("dedupe_stored"):
                self._remove_stored_duplicates(catalog, touched, replaced)
            with phases("count"):
                self._count(result, outcomes)
                carried_dirs = sorted({f.rsplit("/", 1)[0] for f in touched})
                catalog.record_intent(self._target_dirs(result) + carried_dirs)
            with phases("write_verify"):
                self._write(result)
                self._carry(result, touched, replaced)
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.conn.execute("DROP TABLE IF EXISTS _dl_out")

    def probe(self, files: Sequence[SourceFile]) -> None:
        """Read `files` as `convert` would, and nothing more: whether the reader survives them."""
        outcomes = {f.key_id: FileOutcome(f.key_id) for f in files}
        scratch = Path(tempfile.mkdtemp(prefix=f"datalog-{self.batch_id}-"))
        try:
            self.reader.read(files, outcomes, scratch, Phases())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- staging, counting, writing --------------------------------------------------------------

    def _define_good_rows(self, relations: list[str]) -> None:
        """View `_dl_good`: every valid row with its instant and source key, from both paths.

        Rows of flagged files come from the line path only. A view, not a table: the COPY reads
        the rows where they are instead of copying them once more.
        """
        schemas = {t: {c: k for c, k in schema_of(self.conn, t).items() if c != "__dl_ts"} for t in relations}
        to_json = _conflicting_columns(list(schemas.values()))
        selects = []
        for table, schema in schemas.items():
            columns = ", ".join(f"to_json({quote(c)}) AS {quote(c)}" if c in to_json else quote(c) for c in schema)
            where = "__dl_ts IS NOT NULL"
            if table == "_dl_fast":
                where += f" AND {PATH_COLUMN} NOT IN (SELECT {PATH_COLUMN} FROM _dl_flagged)"
            selects.append(f"SELECT {columns}, __dl_ts FROM {table} WHERE {where}")
        if not selects:
            selects.append(f"SELECT NULL::VARCHAR AS {PATH_COLUMN}, NULL::TIMESTAMP AS __dl_ts WHERE false")
        self.conn.execute(
            f"""CREATE OR REPLACE TEMP VIEW _dl_good AS
            SELECT g.*, p.__dl_key, p.__dl_key_id
            FROM ({" UNION ALL BY NAME ".join(selects)}) g JOIN _dl_paths p USING ({PATH_COLUMN})"""
        )

    def _stage(self, result: ConvertResult, catalog: LakeCatalog) -> None:
        """Table `_dl_out`: the batch's rows as they will be written (fields with the dataset's
        types, `_rescued`, the output columns, `_record_hash`), each record once."""
        reserved = {*OUTPUT_COLUMNS, *INTERNAL_COLUMNS, "__dl_key_id", RESCUED, RECORD_HASH, HASH_SCHEME}
        batch = {c: k for c, k in schema_of(self.conn, "_dl_good").items() if c not in reserved}
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

    def _touched(self, replaced: list[str]) -> list[str]:
        """The held files (lake paths) that hold rows or quarantine records of the `replaced` keys:
        they are rewritten without them. The key list is variable `dl_replaced` from here on."""
        self.conn.execute("SET VARIABLE dl_replaced = $keys::VARCHAR[]", {"keys": replaced})
        if not (self.held and replaced):
            return []
        by_uri = {self.lake.uri(f.path): f.path for f in self.held}
        found = self.conn.execute(
            """SELECT DISTINCT filename FROM read_parquet($files, filename = true, union_by_name = true,
                hive_partitioning = false)
            WHERE list_contains(getvariable('dl_replaced'), source_file)""",
            {"files": list(by_uri)},
        ).fetchall()
        return sorted(by_uri[name] for (name,) in found)

    def _vanished_days(self, touched: list[str]) -> list[str]:
        """The dates of records that the replaced keys' rows held and their new versions do not:
        another key that carried the same record had its copy dropped as a duplicate, and must
        be read again for the record to stay in the lake (`outcomes.reread_duplicates`)."""
        files = [self.lake.uri(p) for p in touched if p.startswith(f"{DATASET}/")]
        if not files:
            return []
        self.conn.execute("SET VARIABLE dl_touched = $files", {"files": files})
        old = """(SELECT * FROM read_parquet(getvariable('dl_touched'), union_by_name = true,
            hive_partitioning = true, hive_types_autocast = false)
            WHERE list_contains(getvariable('dl_replaced'), source_file))"""
        hashed = self._stored_hash_sql(schema_of(self.conn, f"SELECT * FROM {old}"))
        found = self.conn.execute(
            f"""SELECT DISTINCT o.hiveperiod FROM (
                SELECT hiveperiod, datetime_wita, {hashed.columns[0]} AS h FROM {old}) o
            ANTI JOIN _dl_out n ON n.datetime_wita = o.datetime_wita AND n.{RECORD_HASH} = o.h
            ORDER BY 1""",
            hashed.params,
        ).fetchall()
        return [day for (day,) in found]

    def _remove_stored_duplicates(
        self, catalog: LakeCatalog, touched: list[str], replaced: list[str], attempts: int = 5
    ) -> None:
        """Delete from `_dl_out` the records the lake holds in the same directories: its LIVE
        files that stay (those of other writers, and those this batch holds but does not rewrite)
        and the rows this batch carries over from the files it rewrites.

        Only the stored rows within the batch's time span can repeat its records: the range lets
        DuckDB skip every row group whose statistics lie outside it, so a partition that grows
        hour by hour is not read whole for each new hour. A stored row of this DuckDB's hash
        scheme is compared by its `_record_hash`; any other row by its hash recomputed from its
        columns (see `shape`).
        """
        days = [d for (d,) in self.conn.execute("SELECT DISTINCT hiveperiod FROM _dl_out").fetchall()]
        dirs = [f"{DATASET}/hiveperiod={day}/dstrct_code={self.region}" for day in days]
        first, last = self.conn.execute("SELECT min(datetime_wita), max(datetime_wita) FROM _dl_out").fetchone()
        held = [f.path for f in self.held if f.path.rsplit("/", 1)[0] in dirs]
        # the rows of the replaced keys are in the touched files only; the others stay or are carried
        kept = " WHERE NOT list_contains(getvariable('dl_replaced'), source_file)" if touched else ""
        for attempt in range(1, attempts + 1):
            stored = catalog.stored_files(dirs) + held
            if not stored:
                return
            self.conn.execute("SET VARIABLE dl_stored = $files", {"files": [self.lake.uri(p) for p in stored]})
            files = (
                "(SELECT * FROM read_parquet(getvariable('dl_stored'), union_by_name = true, "
                f"hive_partitioning = false){kept})"
            )
            try:
                hashed = self._stored_hash_sql(schema_of(self.conn, f"SELECT * FROM {files}"))
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
        if self.reader.has_lines:
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

    def _carry(self, result: ConvertResult, touched: list[str], replaced: list[str]) -> None:
        """Rewrite the touched files of each dataset without the rows of the replaced keys (the
        variable `dl_replaced`): the other keys' rows, as they are stored, into new files of this
        batch beside its own (`part-{batch_id}-k*`)."""
        result.replaced_files = touched
        for dataset in (DATASET, QUARANTINE):
            files = [self.lake.uri(p) for p in touched if p.startswith(f"{dataset}/")]
            if not files:
                continue
            select = """SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = true,
                    hive_types_autocast = false)
                WHERE NOT list_contains(getvariable('dl_replaced'), source_file)"""
            (rows,) = self.conn.execute(f"SELECT count(*) FROM ({select})", {"files": files}).fetchone()
            if rows:
                self._copy(select, {"files": files}, dataset, rows, result, name="k")
            result.carried_rows += rows

    def _copy(
        self,
        select: str,
        params: dict[str, object],
        dataset: str,
        expected: int,
        result: ConvertResult,
        name: str = "",
    ) -> None:
        written = copy_to_lake(self.conn, self.lake, select, params, dataset, self.batch_id, expected, name=name)
        result.files += written
        result.bytes_written += sum(f.bytes for f in written)


def _written(outcome: FileOutcome) -> bool:
    """Whether the key's version read is the one its outcome records (its object was neither gone
    nor changed around the read)."""
    return not outcome.gone and outcome.changed_to is None
