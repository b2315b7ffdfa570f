"""Unit tests: the plain logic of datalog_platform (core/, settings), called in this process.

They talk to real parts: local directories, moto's S3 server, SQLite files and the running
PostgreSQL, DuckDB; none starts a process of the platform.
"""
