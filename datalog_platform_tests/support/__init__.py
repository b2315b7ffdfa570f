"""Helpers the test modules share; no test module imports another test module or conftest.

- `pipeline`: the in-process ingest path (register, claim, ingest, rebuild) over two stores and a ledger.
- `cli_helpers`: the `datalog` command in child processes, raw data and the lake read back.
- `daemon_helpers`: `dagster-daemon` and `dagster-webserver` as process groups, GraphQL, the instance.
- `ledger_helpers`: isolated PostgreSQL schemas and claim workers for spawned processes.
"""
