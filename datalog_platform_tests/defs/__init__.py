"""Definition tests: the Dagster definitions (assets, checks, jobs, sensors, schedules, resources)
run in this process on ephemeral Dagster instances, with Dagster's own context builders and
`dg.materialize` / `execute_in_process`.
"""
