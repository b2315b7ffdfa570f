"""Tests of datalog_platform, grouped by what they exercise:

- `unit/`: the plain logic (datalog_platform/core, settings) in this process;
- `defs/`: the Dagster definitions (datalog_platform/defs, definitions.py) in this process;
- `e2e/`: real processes (the `datalog` command, `dagster-daemon`, `dagster-webserver`, a browser).

Fixtures they share are in conftest.py; helpers they share are in `support/`. A package, so that
helper modules import the same way however pytest is started.
"""
