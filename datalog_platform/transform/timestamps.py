"""The `heartbeat` rules as DuckDB macros, so every row is normalised inside DuckDB.

A number (or a string holding one) is an epoch whose unit follows its magnitude: below 1e10
seconds, below 1e13 milliseconds, below 1e16 microseconds, otherwise nanoseconds; fractions are
kept to the microsecond. An ISO-8601 date-time string (`T` or a space) with `Z` or an offset is
that instant, without a zone it is UTC. Anything else, and instants outside
[2000-01-01, 2100-01-01) UTC, are invalid (NULL). Results are naive TIMESTAMPs in UTC.
"""

from __future__ import annotations

import duckdb

_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
_ISO = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|\s?[+-]\d{2}(:?\d{2})?)?"

# 2000-01-01 and 2100-01-01 as epoch microseconds.
_MIN_MICROS = 946_684_800_000_000
_MAX_MICROS = 4_102_444_800_000_000

MACROS = (
    """CREATE OR REPLACE TEMP MACRO dl_epoch(d) AS (
        CASE WHEN abs(d) < 1e10 THEN floor(d * 1000000)::HUGEINT
             WHEN abs(d) < 1e13 THEN floor(d * 1000)::HUGEINT
             WHEN abs(d) < 1e16 THEN floor(d)::HUGEINT
             ELSE floor(d)::HUGEINT // 1000 END)""",
    f"""CREATE OR REPLACE TEMP MACRO dl_from_micros(m) AS (
        CASE WHEN m >= {_MIN_MICROS} AND m < {_MAX_MICROS} THEN make_timestamp(m::BIGINT) END)""",
    """CREATE OR REPLACE TEMP MACRO dl_in_range(ts) AS (
        CASE WHEN ts >= TIMESTAMP '2000-01-01' AND ts < TIMESTAMP '2100-01-01' THEN ts END)""",
    """CREATE OR REPLACE TEMP MACRO dl_number_text(t) AS dl_from_micros(dl_epoch(
        COALESCE(TRY_CAST(t AS DECIMAL(38, 9)), TRY_CAST(TRY_CAST(t AS DOUBLE) AS DECIMAL(38, 9)))))""",
    f"""CREATE OR REPLACE TEMP MACRO dl_text(s) AS (
        CASE WHEN regexp_full_match(trim(s), '{_NUMBER}') THEN dl_number_text(trim(s))
             WHEN regexp_full_match(trim(s), '{_ISO}')
                 THEN dl_in_range(TRY_CAST(trim(s) AS TIMESTAMPTZ)::TIMESTAMP) END)""",
    """CREATE OR REPLACE TEMP MACRO dl_json(j) AS (
        CASE json_type(j) WHEN 'VARCHAR' THEN dl_text(json_extract_string(j, '$'))
             WHEN 'BIGINT' THEN dl_number_text(j::VARCHAR)
             WHEN 'UBIGINT' THEN dl_number_text(j::VARCHAR)
             WHEN 'DOUBLE' THEN dl_number_text(j::VARCHAR) END)""",
)

_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT")
_NUMERIC_TYPES += ("UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE")


def install_macros(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the macros on this connection (TIMESTAMPTZ casts need the session in UTC)."""
    conn.execute("SET TimeZone = 'UTC'")
    for statement in MACROS:
        conn.execute(statement)


def instant_expression(column_sql: str | None, duckdb_type: str | None) -> str:
    """SQL for the UTC instant of a heartbeat column of the type `read_json` inferred for it.

    `column_sql` is an already-quoted identifier or expression of our own making.
    """
    if column_sql is None or duckdb_type is None:
        return "NULL::TIMESTAMP"
    kind = duckdb_type.upper()
    if kind in _NUMERIC_TYPES or kind.startswith("DECIMAL"):
        return f"dl_number_text({column_sql}::VARCHAR)"
    if kind == "VARCHAR":
        return f"dl_text({column_sql})"
    if kind == "JSON":
        return f"dl_json({column_sql})"
    if kind.startswith("TIMESTAMP"):
        return f"dl_in_range({column_sql}::TIMESTAMP)"
    return "NULL::TIMESTAMP"
