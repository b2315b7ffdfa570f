"""The Dagster definitions, one folder per domain (assets, checks, jobs, sensors, schedules),
wired together by `datalog_platform.definitions`. They call the plain logic of `datalog_platform.core`."""
