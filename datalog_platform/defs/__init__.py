"""The Dagster definitions, one folder per domain (assets, checks, jobs, sensors, schedules), wired
together by `wiring.build_definitions` (which `datalog_platform.definitions` loads). They call the
plain logic of `datalog_platform.core`."""
