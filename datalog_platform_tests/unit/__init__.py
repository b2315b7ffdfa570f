"""Unit tests: the plain logic of datalog_platform (core/, settings, and the `datalog` commands
through `cli.main`), called in this process.

They talk to real parts: local directories, moto's S3 server, SQLite files and the running
PostgreSQL, DuckDB (and Spark as a reader of the lake; spawned worker processes for the concurrent
claims). None runs the `datalog` command in a child process or a Dagster service: that is e2e/.
"""
