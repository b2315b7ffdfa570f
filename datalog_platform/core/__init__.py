"""The platform's domain logic in plain Python and SQL: the ledger and its claim protocol, the
DuckDB transform, the object stores, the lake's manifest readers, discovery, quality, analytics,
the warehouse and compaction. Nothing here imports Dagster (the linter enforces it); the Dagster
definitions in `datalog_platform.defs` call these functions."""
