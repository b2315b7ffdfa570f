"""How a batch's record fields are written: the dataset's column types, rescue, record identity.

Every field is written with the type the dataset already has for it (`schema_fields`). A value
of another type is cast where the cast is lossless (the string "21.5" for a DOUBLE field);
otherwise the column is NULL and the row keeps the original value under the field's name in the
`_rescued` JSON column. Numbers only widen: BIGINT values of a DOUBLE field are cast, and DOUBLE
values of a BIGINT field make the field DOUBLE from then on (files of both read as DOUBLE).

`_record_hash` identifies a record for deduplication: its instant and every non-NULL field but
`heartbeat` (whose text may differ for the same instant), by name, numbers as DOUBLE, so the
same record hashes alike whatever batch or file it came in. It is the XOR of DuckDB's `hash()`
of the instant and of each (name, value) pair, cut to 63 bits: one hash per value, no text built.
A field a file lacks adds nothing, so files written before a field existed hash their records
alike, and the hash of stored rows can be recomputed from their columns alone.

DuckDB does not promise `hash()` is the same across its versions, so every row also carries
`_record_hash_scheme`: the hash of a fixed probe under the DuckDB that wrote it. Rows of another
scheme (another DuckDB, or the MD5 of lakes written before; no scheme at all) are compared by
recomputing their hash from their columns (see `convert`), never by the stored value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from datalog_platform.core.transform.timestamps import is_numeric

RESCUED = "_rescued"
RECORD_HASH = "_record_hash"
HASH_SCHEME = "_record_hash_scheme"
HEARTBEAT = "heartbeat"
_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER")
_INTEGER_TYPES += ("UBIGINT", "UHUGEINT")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class Shape:
    """The SELECT list that writes a batch's fields, and the parameters it binds."""

    columns: list[str] = field(default_factory=list)
    params: dict[str, object] = field(default_factory=dict)
    rescues: list[str] = field(default_factory=list)  # {field name, rescued value} of each field that may rescue

    def param(self, value: object) -> str:
        name = f"dl_p{len(self.params)}"
        self.params[name] = value
        return f"${name}"


def widened_type(conn: duckdb.DuckDBPyConnection, lake: str, batch: str) -> str:
    """The type both numeric types cast to without loss, as DuckDB's own union picks it."""
    return conn.execute(f"SELECT typeof([NULL::{lake}, NULL::{batch}][1])").fetchone()[0]


def _conversion(name: str, batch_type: str, lake_type: str) -> tuple[str, str]:
    """(the value as the lake's type or NULL, the condition under which the value is rescued)."""
    column = quote(name)
    if lake_type == "JSON":
        value = f"to_json({column})"
    else:
        text = f"dl_raw_text({column})"
        value = f"TRY_CAST({text} AS {lake_type})"
        if lake_type in _INTEGER_TYPES:
            # "21.7" casts to 22: only a value that was already whole casts without loss
            value = f"CASE WHEN TRY_CAST({text} AS DOUBLE) = {value} THEN {value} END"
    return value, f"{column} IS NOT NULL AND ({value}) IS NULL"


def shape_fields(batch: dict[str, str], lake: dict[str, str]) -> Shape:
    """The columns that write `batch` (field -> the type this batch read) as `lake` types."""
    shape = Shape()
    for name, batch_type in batch.items():
        column = quote(name)
        lake_type = lake.get(name, batch_type)
        if name == HEARTBEAT:
            # kept as the text it came as, whatever mix of formats a batch carried
            shape.columns.append(column if batch_type == "VARCHAR" else f"dl_raw_text({column}) AS {column}")
        elif batch_type == lake_type:
            shape.columns.append(column)
        elif is_numeric(batch_type) and is_numeric(lake_type):
            shape.columns.append(f"CAST({column} AS {lake_type}) AS {column}")
        else:
            value, rescued_when = _conversion(name, batch_type, lake_type)
            shape.columns.append(f"{value} AS {column}")
            key = shape.param(name)
            shape.rescues.append(f"{{'k': {key}, 'v': CASE WHEN {rescued_when} THEN to_json({column}) END}}")
    if shape.rescues:
        entries = f"list_filter([{', '.join(shape.rescues)}], e -> e.v IS NOT NULL)"
        shape.columns.append(f"CASE WHEN len({entries}) > 0 THEN to_json(map_from_entries({entries})) END AS {RESCUED}")
    else:
        shape.columns.append(f"NULL::JSON AS {RESCUED}")
    return shape


def hash_scheme(conn: duckdb.DuckDBPyConnection) -> str:
    """The name of this DuckDB's `_record_hash`: its hash of a probe of every kind of value a
    record hashes, so a DuckDB whose `hash()` differs gets a scheme of its own."""
    (probe,) = conn.execute(
        """SELECT hash('datalog', 1.5::DOUBLE, 42::BIGINT, TIMESTAMP '2000-01-02 03:04:05', {'a': [1, 2]},
            '{"b": null}'::JSON, 'text')"""
    ).fetchone()
    return f"duckdb-hash:{probe:016x}"


def record_hash_sql(shape: Shape, field_types: dict[str, str], instant: str) -> str:
    """The `_record_hash` expression over the written columns `field_types` (field -> type)."""
    combined = f"hash({instant})"
    for name in sorted([*field_types, RESCUED]):
        if name == HEARTBEAT:
            continue
        column = quote(name)
        value = f"CAST({column} AS DOUBLE)" if is_numeric(field_types.get(name, "JSON")) else column
        # A NULL adds nothing: a field a record does not carry and a NULL field hash alike.
        term = f"CASE WHEN {column} IS NOT NULL THEN hash({shape.param(name)}, {value}) ELSE 0::UBIGINT END"
        combined = f"xor({combined}, {term})"
    return f"CAST({combined} & 9223372036854775807 AS BIGINT)"
