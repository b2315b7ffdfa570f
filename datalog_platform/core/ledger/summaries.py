"""The summaries the sensors read instead of scanning millions of keys, and the triggers that keep them.

`key_counts` holds, for each (part_date, region, status), how many keys there are and the sums of
their attempts, rows, ids and versions; `device_hours` each device's newest key hour. Triggers on
`keys` keep both exact in the transaction that changes a key, on PostgreSQL (statement-level) and
SQLite (row-level); `schema.counts_maintained` says where. The tables themselves are in `schema`;
this module is plain SQL over them.
"""

from __future__ import annotations

import sqlalchemy as sa

_COUNT_COLUMNS = "part_date, dstrct_code, status, keys, attempts, rows, key_ids, versions"
_COUNT_GROUP = "part_date, coalesce(dstrct_code, ''), status"
_COUNT_FILL = (
    f"INSERT INTO key_counts ({_COUNT_COLUMNS}) "
    f"SELECT {_COUNT_GROUP}, count(*), sum(attempts), sum(coalesce(rows, 0)), sum(key_id), sum(version) FROM keys "
    f"GROUP BY {_COUNT_GROUP}"
)

# PostgreSQL: one statement-level trigger per event; the rows a statement inserted, changed or
# deleted are summed per group and added in group order (so two writers lock shared rows in the
# same order and cannot deadlock on them).
_PG_NEW = f"SELECT {_COUNT_GROUP}, 1, attempts, coalesce(rows, 0), key_id, version FROM new_keys"
_PG_OLD = f"SELECT {_COUNT_GROUP}, -1, -attempts, -coalesce(rows, 0), -key_id, -version FROM old_keys"


def _pg_add(source: str) -> str:
    return f"""
    INSERT INTO key_counts AS c ({_COUNT_COLUMNS})
    SELECT part_date, dstrct_code, status, sum(n), sum(a), sum(r), sum(k), sum(v)
    FROM ({source}) AS d (part_date, dstrct_code, status, n, a, r, k, v)
    GROUP BY part_date, dstrct_code, status
    HAVING sum(n) <> 0 OR sum(a) <> 0 OR sum(r) <> 0 OR sum(k) <> 0 OR sum(v) <> 0
    ORDER BY part_date, dstrct_code, status
    ON CONFLICT (part_date, dstrct_code, status) DO UPDATE
    SET keys = c.keys + excluded.keys, attempts = c.attempts + excluded.attempts, rows = c.rows + excluded.rows,
        key_ids = c.key_ids + excluded.key_ids, versions = c.versions + excluded.versions;"""


_PG_COUNT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION key_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN{_pg_add(_PG_NEW)}
    ELSIF TG_OP = 'DELETE' THEN{_pg_add(_PG_OLD)}
    ELSE{_pg_add(f"{_PG_NEW} UNION ALL {_PG_OLD}")}
    END IF;
    RETURN NULL;
END
$body$
"""
_PG_COUNT_TRIGGERS = {
    "key_counts_insert": "AFTER INSERT ON keys REFERENCING NEW TABLE AS new_keys",
    "key_counts_update": "AFTER UPDATE ON keys REFERENCING OLD TABLE AS old_keys NEW TABLE AS new_keys",
    "key_counts_delete": "AFTER DELETE ON keys REFERENCING OLD TABLE AS old_keys",
}
_HOURS_FILL = (
    "INSERT INTO device_hours (device_id, latest_hour) SELECT device_id, max(key_hour) FROM keys GROUP BY device_id"
)
# Each inserting statement moves its devices' latest hours forward, devices in order (no deadlock).
_PG_HOURS_FUNCTION = """
CREATE OR REPLACE FUNCTION device_hours_apply() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    INSERT INTO device_hours AS h (device_id, latest_hour)
    SELECT device_id, max(key_hour) FROM new_keys GROUP BY device_id ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE SET latest_hour = excluded.latest_hour
    WHERE excluded.latest_hour > h.latest_hour;
    RETURN NULL;
END
$body$
"""
_HOURS_TRIGGER = "device_hours_insert"
_PG_HOURS_WHEN = "AFTER INSERT ON keys REFERENCING NEW TABLE AS new_keys"
_SQLITE_HOURS_BODY = (
    "AFTER INSERT ON keys BEGIN "
    "INSERT INTO device_hours (device_id, latest_hour) VALUES (NEW.device_id, NEW.key_hour) "
    "ON CONFLICT (device_id) DO UPDATE SET latest_hour = excluded.latest_hour "
    "WHERE excluded.latest_hour > latest_hour; "
    "END"
)
_TRIGGERS = (*_PG_COUNT_TRIGGERS, _HOURS_TRIGGER)


def _sqlite_add(row: str, sign: str) -> str:
    return (
        f"INSERT INTO key_counts ({_COUNT_COLUMNS}) VALUES ({row}.part_date, coalesce({row}.dstrct_code, ''), "
        f"{row}.status, {sign}1, {sign}{row}.attempts, {sign}coalesce({row}.rows, 0), {sign}{row}.key_id, "
        f"{sign}{row}.version) "
        "ON CONFLICT (part_date, dstrct_code, status) DO UPDATE SET keys = keys + excluded.keys, "
        "attempts = attempts + excluded.attempts, rows = rows + excluded.rows, key_ids = key_ids + excluded.key_ids, "
        "versions = versions + excluded.versions;"
    )


# SQLite: row-level triggers (its only kind); writers are serialised, so no order is needed.
_SQLITE_COUNT_TRIGGERS = {
    "key_counts_insert": f"AFTER INSERT ON keys BEGIN {_sqlite_add('NEW', '')} END",
    "key_counts_update": (
        "AFTER UPDATE OF part_date, dstrct_code, status, attempts, rows, version ON keys "
        f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '')} END"
    ),
    "key_counts_delete": f"AFTER DELETE ON keys BEGIN {_sqlite_add('OLD', '-')} END",
}


def counts_installed(conn: sa.Connection) -> bool:
    if conn.dialect.name == "postgresql":
        found = sa.text("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('keys') AND tgname = ANY(:names)")
    else:
        found = sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN :names").bindparams(
            sa.bindparam("names", expanding=True)
        )
    return conn.execute(found, {"names": list(_TRIGGERS)}).scalar_one() == len(_TRIGGERS)


def install_summaries(engine: sa.Engine, replace: bool = False) -> None:
    """Fill `key_counts` and `device_hours` from the keys and create the triggers that keep them (or,
    with `replace`, those of an older version), in one transaction that no write to `keys` can
    interleave with (a lock on PostgreSQL, the single writer on SQLite)."""
    with engine.connect() as conn:
        if not replace and counts_installed(conn):
            return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE"))
        if not replace and counts_installed(conn):
            return
        conn.execute(sa.text("DELETE FROM key_counts"))
        conn.execute(sa.text(_COUNT_FILL))
        conn.execute(sa.text("DELETE FROM device_hours"))
        conn.execute(sa.text(_HOURS_FILL))
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(_PG_COUNT_FUNCTION))
            conn.execute(sa.text(_PG_HOURS_FUNCTION))
            triggers = {name: (when, "key_counts_apply") for name, when in _PG_COUNT_TRIGGERS.items()}
            triggers[_HOURS_TRIGGER] = (_PG_HOURS_WHEN, "device_hours_apply")
            for name, (when, function) in triggers.items():
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON keys"))
                conn.execute(sa.text(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"))
        else:
            for name, body in {**_SQLITE_COUNT_TRIGGERS, _HOURS_TRIGGER: _SQLITE_HOURS_BODY}.items():
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
                conn.execute(sa.text(f"CREATE TRIGGER {name} {body}"))
