"""The line path: the files of a batch that DuckDB's reader could not take whole, line by line.

Each file is streamed from the store in blocks of about `LINE_BLOCK_BYTES`, so a file of any size
passes with Python holding one block; Python only splits the bytes into lines (C speed). DuckDB
validates each line into `_dl_lines` (a reason for each bad line), spilling to disk beyond its
memory limit, and the clean lines go to one local NDJSON file per source file for its reader.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.timestamps import with_instant

MALFORMED_JSON = "malformed_json"
INVALID_TIMESTAMP = "invalid_timestamp"
# The line path reads a file in blocks of this many bytes.
LINE_BLOCK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    key_id: int
    key: str


@dataclass
class FileOutcome:
    key_id: int
    rows: int = 0
    quarantined_lines: int = 0
    duplicate_rows: int = 0  # valid rows not written: the record is already in the batch or the lake
    error: str | None = None  # set when the file could not be read at all


def line_blocks(store: ObjectStore, key: str) -> Iterator[list[tuple[int, str, bool]]]:
    """(1-based line number, text, whether it is valid UTF-8) of every non-blank line of an
    object, in blocks of about LINE_BLOCK_BYTES; a line that is not UTF-8 keeps its text with
    replacement characters, for the quarantine record. `.gz` objects are decompressed."""
    with store.open(key) as raw:
        stream = gzip.GzipFile(fileobj=raw) if key.endswith(".gz") else raw
        number = 0
        rest = b""
        while True:
            data = stream.read(LINE_BLOCK_BYTES)
            lines = (rest + data).split(b"\n")
            rest = lines.pop() if data else b""
            block = []
            for line in lines:
                number += 1
                line = line.rstrip(b"\r")
                if not line.strip():
                    continue
                try:
                    block.append((number, line.decode("utf-8"), True))
                except UnicodeDecodeError:
                    block.append((number, line.decode("utf-8", errors="replace"), False))
            yield block
            if not data:
                return


def validate_lines(
    conn: duckdb.DuckDBPyConnection,
    raw: ObjectStore,
    files: list[SourceFile],
    outcomes: dict[int, FileOutcome],
    scratch: Path,
) -> dict[str, SourceFile]:
    """Every line of `files` into table `_dl_lines` with its reason (NULL when clean); a file that
    cannot be read gets its error in `outcomes` and no lines. Returns the clean files written
    under `scratch`, by path."""
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE _dl_lines (key_id BIGINT, source_file VARCHAR,
            line_number BIGINT, raw_line VARCHAR, reason VARCHAR)"""
    )
    lines = _LineBuffer(conn)
    for f in files:
        try:
            for block in line_blocks(raw, f.key):
                lines.add(f, block)
        except (OSError, EOFError, zlib.error) as exc:
            outcomes[f.key_id].error = f"unreadable: {type(exc).__name__}: {exc}"
            lines.drop(f.key_id)
    lines.flush()
    return _write_clean_lines(conn, {f.key_id: f for f in files}, scratch)


class _LineBuffer:
    """Lines of one or more files, validated into `_dl_lines` by one INSERT per LINE_BLOCK_BYTES
    gathered, so a batch of many small files costs a few statements, not one per file."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.columns: dict[str, list[object]] = {name: [] for name in _BUFFER_TYPES}
        self.size = 0

    def add(self, source: SourceFile, block: list[tuple[int, str, bool]]) -> None:
        if not block:
            return
        numbers, texts, utf8 = zip(*block, strict=True)
        self.columns["key_id"] += [source.key_id] * len(block)
        self.columns["source_file"] += [source.key] * len(block)
        self.columns["line_number"] += numbers
        self.columns["raw_line"] += texts
        self.columns["utf8"] += utf8
        self.size += sum(map(len, texts))
        if self.size >= LINE_BLOCK_BYTES:
            self.flush()

    def drop(self, key_id: int) -> None:
        """Forget every line of one file, gathered or already inserted."""
        keep = [i for i, k in enumerate(self.columns["key_id"]) if k != key_id]
        self.columns = {name: [values[i] for i in keep] for name, values in self.columns.items()}
        self.conn.execute("DELETE FROM _dl_lines WHERE key_id = $key_id", {"key_id": key_id})

    def flush(self) -> None:
        if not self.columns["key_id"]:
            return
        table = pa.table({name: pa.array(self.columns[name], kind) for name, kind in _BUFFER_TYPES.items()})
        self.conn.register("_dl_lines_arrow", table)
        objects = """SELECT key_id, source_file, line_number, raw_line,
                CASE WHEN utf8 AND json_valid(raw_line)
                     THEN json_type(raw_line) = 'OBJECT' ELSE false END AS __dl_object
            FROM _dl_lines_arrow"""
        heartbeats = f"""SELECT *, CASE WHEN __dl_object THEN json_extract(raw_line, '$.heartbeat') END AS __dl_hb
            FROM ({objects})"""
        self.conn.execute(
            f"""INSERT INTO _dl_lines
            SELECT key_id, source_file, line_number, raw_line,
                CASE WHEN NOT __dl_object THEN '{MALFORMED_JSON}'
                     WHEN __dl_ts IS NULL THEN '{INVALID_TIMESTAMP}' END
            FROM ({with_instant(heartbeats, "__dl_hb", "JSON", "__dl_ts")})"""
        )
        self.conn.unregister("_dl_lines_arrow")
        self.columns = {name: [] for name in _BUFFER_TYPES}
        self.size = 0


_BUFFER_TYPES = {
    "key_id": pa.int64(),
    "source_file": pa.string(),
    "line_number": pa.int64(),
    "raw_line": pa.string(),
    "utf8": pa.bool_(),
}


def _write_clean_lines(
    conn: duckdb.DuckDBPyConnection, by_id: dict[int, SourceFile], scratch: Path
) -> dict[str, SourceFile]:
    """The clean lines of `_dl_lines`, one NDJSON file per source file, streamed from DuckDB."""
    clean: dict[str, SourceFile] = {}
    current: int | None = None
    out = None
    cursor = conn.execute("SELECT key_id, raw_line FROM _dl_lines WHERE reason IS NULL ORDER BY key_id, line_number")
    try:
        while rows := cursor.fetchmany(50_000):
            for key_id, raw_line in rows:
                if key_id != current:
                    if out is not None:
                        out.close()
                    current, path = key_id, scratch / f"{key_id}.json"
                    out = path.open("w", encoding="utf-8")
                    clean[str(path)] = by_id[key_id]
                out.write(raw_line)
                out.write("\n")
    finally:
        if out is not None:
            out.close()
    return clean
