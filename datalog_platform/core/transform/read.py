"""Reading one batch's raw files into DuckDB: the fast path, the line path and the guards around them.

Fast path: one `read_json` over every file of the batch (DuckDB's own reader, straight from the
store). With `ignore_errors`, a line DuckDB cannot parse becomes a row of NULLs, so it has no valid
heartbeat: a file is clean exactly when every row it produced has a valid instant. Files that are
not clean take the line path (`lines`), which is what gives line numbers, raw lines and reasons;
the clean lines it keeps are read back by the same `read_json`.

Guards: a file whose records carry more than `max_fields` distinct field names is quarantined
whole; a file with records nested deeper than `lines.MAX_DEPTH`, or one that DuckDB's reader
refuses by name (a line over its object size), takes the line path, which quarantines such lines
and keeps their neighbours. Around the read, each object's version is looked up (`unchanged`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from datalog_platform.core.ledger.raw_keys import raw_listing_prefix
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.lines import MAX_DEPTH, FileOutcome, SourceFile, validate_lines
from datalog_platform.core.transform.shape import quote
from datalog_platform.core.transform.timestamps import with_instant

PATH_COLUMN = "__dl_path"
# Columns of the reads that are not record fields.
INTERNAL_COLUMNS = (PATH_COLUMN, "__dl_ts", "__dl_key")
# DuckDB expands these as globs in a file list; such keys (and, on S3, anything unusual in a URL)
# are read by the line path instead.
_LOCAL_SAFE = re.compile(r"[^*?\[\]{}]+")
_S3_SAFE = re.compile(r"[A-Za-z0-9._\-/=]+")


@dataclass(frozen=True)
class ReadLimits:
    """What one file may be: the longest line (also DuckDB's `maximum_object_size`) and the most
    distinct top-level field names its records may carry."""

    max_line_bytes: int
    max_fields: int


def type_depth_bound(duckdb_type: str) -> int:
    """At least how deeply a DuckDB type nests (lists, structs, maps), computed without recursion:
    its deepest parentheses plus all its list brackets. It may count more than the depth, never
    less."""
    depth = deepest = 0
    for char in duckdb_type:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest + duckdb_type.count("[]")


def _fast_path_eligible(store: ObjectStore, key: str) -> bool:
    pattern = _S3_SAFE if store.uri().startswith("s3://") else _LOCAL_SAFE
    return pattern.fullmatch(key) is not None


def _read_json_sql(max_line_bytes: int) -> str:
    """read_json over the file list in the variable `dl_files` (see `BatchReader.set_files`)."""
    return (
        # sample_size = -1: infer types from every line, not the first 20,480 of each file; a
        # field or type first seen later would otherwise be dropped or nulled without a trace.
        "read_json(getvariable('dl_files'), format = 'newline_delimited', records = true, "
        f"ignore_errors = true, union_by_name = true, filename = '{PATH_COLUMN}', "
        # a `name=value` directory in a raw path is not a column of the records
        "sample_size = -1, hive_partitioning = false, "
        # records stay records however many rare fields they carry (a file's width is ours to limit)
        f"map_inference_threshold = -1, maximum_object_size = {int(max_line_bytes)})"
    )


def schema_of(conn: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column -> type of a table, view or query."""
    return {name: kind for name, kind, *_ in conn.execute(f"DESCRIBE {relation}").fetchall()}


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


class BatchReader:
    """Reads the raw files of one batch into one DuckDB connection: `_dl_fast` (the fast path),
    `_dl_lines` and `_dl_clean` (the line path). `line_path` are the key ids to read line by line
    whatever the fast path would make of them."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        raw: ObjectStore,
        limits: ReadLimits,
        line_path: frozenset[int] = frozenset(),
    ) -> None:
        self.conn = conn
        self.raw = raw
        self.limits = limits
        self.line_path = line_path
        self.has_lines = False

    def unchanged(self, files: Sequence[SourceFile], outcomes: dict[int, FileOutcome]) -> list[SourceFile]:
        """The files whose object is still the version claimed; the others are marked gone or
        changed (with the version found) in `outcomes`."""
        found = self.raw.stat_many([f.key for f in files], raw_listing_prefix)
        unchanged = []
        for f in files:
            info = found.get(f.key)
            if info is None:
                outcomes[f.key_id].gone = True
            elif f.version is not None and info.version.differs_from(f.version):
                outcomes[f.key_id].changed_to = info
            else:
                unchanged.append(f)
        return unchanged

    def read(
        self, files: Sequence[SourceFile], outcomes: dict[int, FileOutcome], scratch: Path, phases: Phases
    ) -> tuple[dict[str, SourceFile], list[str], int]:
        """Read the files into `_dl_fast` and `_dl_clean` (and the line path's `_dl_lines`):
        returns the paths read with their files, the relations that hold their rows, and how
        many files took the line path."""
        paths: dict[str, SourceFile] = {}
        relations: list[str] = []
        fast, slow = [], []
        for f in files:
            (fast if f.key_id not in self.line_path and _fast_path_eligible(self.raw, f.key) else slow).append(f)
        if fast:
            with phases("read"):
                read, to_line_path = self._fast_read({self.raw.uri(f.key): f for f in fast}, outcomes)
            slow += to_line_path
            if read:
                paths.update(read)
                relations.append("_dl_fast")
        if slow:
            with phases("line_path"):
                clean = validate_lines(self.conn, self.raw, slow, outcomes, scratch, self.limits.max_line_bytes)
                self.has_lines = True
                clean = self._clean_read(clean, outcomes)
                if clean:
                    paths.update(clean)
                    relations.append("_dl_clean")
        return paths, relations, len(slow)

    def _read_with_instant(self) -> str:
        """read_json of a file list, plus the UTC instant `__dl_ts` of each row's heartbeat.

        `to_json` makes the rules independent of the type read_json inferred for the field; a
        batch whose records all lack `heartbeat` fails to bind and takes the line path.
        """
        read = _read_json_sql(self.limits.max_line_bytes)
        return with_instant(f"SELECT * FROM {read}", "to_json(heartbeat)", "JSON", "__dl_ts")

    def set_files(self, paths: dict[str, SourceFile]) -> None:
        """Table `_dl_paths` (path -> key, key id) and variable `dl_files` (the path list).

        Passed as Arrow: a Python list parameter of 1,000 paths costs DuckDB ~0.2 s to convert.
        """
        table = pa.table(
            {
                PATH_COLUMN: pa.array(list(paths), pa.string()),
                "__dl_key": pa.array([f.key for f in paths.values()], pa.string()),
                "__dl_key_id": pa.array([f.key_id for f in paths.values()], pa.int64()),
            }
        )
        self.conn.register("_dl_paths_arrow", table)
        self.conn.execute("CREATE OR REPLACE TEMP TABLE _dl_paths AS SELECT * FROM _dl_paths_arrow")
        self.conn.unregister("_dl_paths_arrow")
        self.conn.execute(f"SET VARIABLE dl_files = (SELECT list({PATH_COLUMN}) FROM _dl_paths)")

    def _fast_read(
        self, paths: dict[str, SourceFile], outcomes: dict[int, FileOutcome]
    ) -> tuple[dict[str, SourceFile], list[SourceFile]]:
        """Read the files once, with their instants, into `_dl_fast`. Returns the files read (the
        rows of those flagged in table `_dl_flagged` are not used) and the files for the line
        path: the flagged ones (a line without a valid instant), those nested too deeply, those
        the reader refused by name; all of them if it refused the set without naming one.
        Files with too many fields are quarantined whole (`outcomes`) and not read."""
        to_line_path: list[SourceFile] = []
        while paths:
            self.set_files(paths)
            try:
                wide = self._materialize("_dl_fast", paths, outcomes)
            except duckdb.OutOfMemoryException:
                raise  # the line path would need more memory, not less
            except duckdb.Error as exc:
                named = [path for path in paths if path in str(exc)]
                if not named:
                    return {}, to_line_path + list(paths.values())
                to_line_path += [paths.pop(path) for path in named]
                continue
            deep = [] if wide else self._nested_too_deep("_dl_fast")
            if wide or deep:
                to_line_path += [paths.pop(path) for path in deep if path not in wide]
                for path in wide:
                    del paths[path]
                continue
            self.conn.execute(
                f"CREATE OR REPLACE TEMP TABLE _dl_flagged AS "
                f"SELECT DISTINCT {PATH_COLUMN} FROM _dl_fast WHERE __dl_ts IS NULL"
            )
            flagged = [path for (path,) in self.conn.execute(f"SELECT {PATH_COLUMN} FROM _dl_flagged").fetchall()]
            return paths, to_line_path + [paths[path] for path in flagged]
        return {}, to_line_path

    def _clean_read(self, clean: dict[str, SourceFile], outcomes: dict[int, FileOutcome]) -> dict[str, SourceFile]:
        """The clean lines of the line path into `_dl_clean`; a file with too many fields is
        quarantined whole and its lines dropped. Returns the files read."""
        while clean:
            self.set_files(clean)
            wide = self._materialize("_dl_clean", clean, outcomes)
            if not wide:
                return clean
            dropped = [clean.pop(path).key_id for path in wide]
            self.conn.execute("DELETE FROM _dl_lines WHERE list_contains($ids, key_id)", {"ids": dropped})
        return clean

    def _materialize(self, table: str, paths: dict[str, SourceFile], outcomes: dict[int, FileOutcome]) -> list[str]:
        """Table `table`: the read of the files of `dl_files` with their instants. Returns the files
        with too many fields (`_too_many_fields`): when there are any, the table is not to be used.

        A read of thousands of columns takes a block of memory a column and may run out before it
        is done: then what the read would be (its bound schema, without reading a row into it) is
        what is counted, and the error stands only if no file is too wide."""
        read = self._read_with_instant()
        try:
            self.conn.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {read}")
        except duckdb.OutOfMemoryException:
            wide = self._too_many_fields(paths, outcomes, read)
            if not wide:
                raise
            return wide
        return self._too_many_fields(paths, outcomes, table)

    def _too_many_fields(
        self, paths: dict[str, SourceFile], outcomes: dict[int, FileOutcome], relation: str
    ) -> list[str]:
        """The files (of `dl_files`, read as `relation`) whose records carry more than `max_fields`
        distinct top-level field names, quarantined whole in `outcomes`. Counted only when the
        whole read has more columns than that: the usual batch costs nothing."""
        columns = [c for c in schema_of(self.conn, relation) if c not in INTERNAL_COLUMNS]
        if len(columns) <= self.limits.max_fields:
            return []
        wide = self.conn.execute(
            """SELECT filename, count(DISTINCT field) FROM (
                SELECT filename, unnest(json_keys(json)) AS field
                FROM read_ndjson_objects(getvariable('dl_files'), filename = true, ignore_errors = true,
                    hive_partitioning = false))
            GROUP BY ALL HAVING count(DISTINCT field) > $max""",
            {"max": self.limits.max_fields},
        ).fetchall()
        for path, fields in wide:
            outcomes[paths[path].key_id].error = (
                f"too_many_fields: its records carry {fields} distinct field names, more than "
                f"DATALOG_MAX_FIELDS ({self.limits.max_fields})"
            )
        return [path for path, _ in wide]

    def _nested_too_deep(self, table: str) -> list[str]:
        """The files of `table` with a value of a column that may nest deeper than MAX_DEPTH."""
        deep = [c for c, kind in schema_of(self.conn, table).items() if type_depth_bound(kind) > MAX_DEPTH]
        if not deep:
            return []
        having = " OR ".join(f"{quote(c)} IS NOT NULL" for c in deep)
        return [path for (path,) in self.conn.execute(f"SELECT DISTINCT {PATH_COLUMN} FROM {table} WHERE {having}")]
