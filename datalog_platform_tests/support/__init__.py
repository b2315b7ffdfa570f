"""Helpers the test modules share; no test module imports another test module or conftest.

- `pipeline`: the in-process ingest path (register, claim, ingest, rebuild) over two stores and a ledger;
- `raw_data`: raw log files written (`ndjson`, `raw_key`, `epoch_seconds`) and their records read back;
- `lake`: the lake read back (rows, (source_file, seq) ids, partition directories, a batch's files);
- `ledger_helpers`: isolated PostgreSQL schemas, claim workers for spawned processes, the ledger's
  keys, batches and devices read back, and a ledger holding keys in every status (requeue);
- `cli_helpers`: the `datalog` command in child processes, and a lake filled by `datalog ingest`;
- `daemon_helpers`: the services' environment, `dagster-daemon` and `dagster-webserver` as process
  groups, GraphQL, the process tree and the instance's sensor ticks and runs;
- `s3`: boto3 clients, DuckDB access and fresh buckets on moto's S3 server;
- `net`: free ports on 127.0.0.1.
"""
