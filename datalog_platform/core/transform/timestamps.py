"""The `heartbeat` rules in SQL, so every row is normalised inside DuckDB.

A number (or a string holding one) is an epoch whose unit follows its magnitude: below 1e10
seconds, below 1e13 milliseconds, below 1e16 microseconds, otherwise nanoseconds; fractions are
kept to the microsecond. An ISO-8601 date-time string (`T` or a space) with `Z` or an offset is
that instant, without a zone it is UTC. Anything else, and instants outside
[2000-01-01, 2100-01-01) UTC, are invalid (NULL). Results are naive TIMESTAMPs in UTC.

The rules are layered projections rather than nested macros: DuckDB expands a macro parameter
at every use, so nesting them multiplies the expression (measured: 6 s for 12,000 rows), while
each layer here computes its value once per row.
"""

from __future__ import annotations

import duckdb

_PLAIN_NUMBER = r"[+-]?\d+(\.\d*)?"
_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
_ISO = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|\s?[+-]\d{2}(:?\d{2})?)?"

# 2000-01-01 and 2100-01-01 as epoch microseconds.
_MIN_MICROS = 946_684_800_000_000
_MAX_MICROS = 4_102_444_800_000_000

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT")
NUMERIC_TYPES += ("UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE")

MACROS = (
    """CREATE OR REPLACE TEMP MACRO dl_in_range(ts) AS (
        CASE WHEN ts >= TIMESTAMP '2000-01-01' AND ts < TIMESTAMP '2100-01-01' THEN ts END)""",
    # Any value as the text it came as: a JSON string without its quotes, anything else as JSON.
    """CREATE OR REPLACE TEMP MACRO dl_raw_text(v) AS (
        CASE WHEN json_type(to_json(v)) = 'VARCHAR' THEN json_extract_string(to_json(v), '$')
             ELSE to_json(v)::VARCHAR END)""",
)


def install_macros(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the helper macros (TIMESTAMPTZ casts need the session in UTC)."""
    conn.execute("SET TimeZone = 'UTC'")
    for statement in MACROS:
        conn.execute(statement)


def is_numeric(duckdb_type: str) -> bool:
    return duckdb_type.upper() in NUMERIC_TYPES or duckdb_type.upper().startswith("DECIMAL")


def with_instant(source_sql: str, column_sql: str | None, duckdb_type: str | None, out: str) -> str:
    """SQL of `source_sql` plus a column `out`: the UTC instant of its heartbeat, or NULL.

    `column_sql` is the (quoted) heartbeat column of the source and `duckdb_type` the type
    `read_json` inferred for it; both are of our own making, never data.
    """
    kind = (duckdb_type or "").upper()
    if column_sql is None or not kind:
        return f"SELECT *, NULL::TIMESTAMP AS {out} FROM ({source_sql})"
    if kind.startswith("TIMESTAMP"):
        return f"SELECT *, dl_in_range({column_sql}::TIMESTAMP) AS {out} FROM ({source_sql})"
    if is_numeric(kind):
        text = f"{column_sql}::VARCHAR"
    elif kind == "VARCHAR":
        text = f"trim({column_sql})"
    elif kind == "JSON":
        # json_extract_string gives a JSON string unquoted and a JSON number as its digits
        text = f"trim(json_extract_string({column_sql}, '$'))"
    else:
        return f"SELECT *, NULL::TIMESTAMP AS {out} FROM ({source_sql})"
    # A plain decimal is split into its integer part (HUGEINT) and fraction digits, which keeps
    # every digit exact and is two orders of magnitude faster than a DECIMAL(38, 9) cast;
    # exponent notation falls back to DOUBLE.
    layers = [
        f"SELECT *, {text} AS __dl_h FROM ({source_sql})",
        f"SELECT *, regexp_full_match(__dl_h, '{_PLAIN_NUMBER}') AS __dl_p FROM (<<SOURCE>>)",
        f"""SELECT *,
            TRY_CAST(CASE WHEN __dl_p THEN split_part(__dl_h, '.', 1) END AS HUGEINT) AS __dl_i,
            CASE WHEN __dl_p THEN split_part(__dl_h, '.', 2) END AS __dl_f,
            CASE WHEN NOT __dl_p AND regexp_full_match(__dl_h, '{_NUMBER}')
                 THEN TRY_CAST(__dl_h AS DOUBLE) END AS __dl_d
        FROM (<<SOURCE>>)""",
        """SELECT *,
            CASE WHEN abs(__dl_i) < 1e10 THEN __dl_i * 1000000 + rpad(left(__dl_f, 6), 6, '0')::BIGINT
                 WHEN abs(__dl_i) < 1e13 THEN __dl_i * 1000 + rpad(left(__dl_f, 3), 3, '0')::BIGINT
                 WHEN abs(__dl_i) < 1e16 THEN __dl_i
                 WHEN __dl_i IS NOT NULL THEN __dl_i // 1000
                 WHEN abs(__dl_d) < 1e10 THEN floor(__dl_d * 1000000)
                 WHEN abs(__dl_d) < 1e13 THEN floor(__dl_d * 1000)
                 WHEN abs(__dl_d) < 1e16 THEN floor(__dl_d)
                 WHEN abs(__dl_d) < 1e30 THEN floor(__dl_d / 1000) END AS __dl_us
        FROM (<<SOURCE>>)""",
        f"""SELECT * EXCLUDE (__dl_h, __dl_p, __dl_i, __dl_f, __dl_d, __dl_us),
            CASE WHEN __dl_us >= {_MIN_MICROS} AND __dl_us < {_MAX_MICROS}
                     THEN make_timestamp(__dl_us::BIGINT)
                 WHEN __dl_i IS NULL AND __dl_d IS NULL AND regexp_full_match(__dl_h, '{_ISO}')
                     THEN dl_in_range(TRY_CAST(__dl_h AS TIMESTAMPTZ)::TIMESTAMP) END AS {out}
        FROM (<<SOURCE>>)""",
    ]
    sql = layers[0]
    for layer in layers[1:]:
        sql = layer.replace("<<SOURCE>>", sql)
    return sql
