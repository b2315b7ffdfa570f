"""End-to-end tests: real processes. The `datalog` command in child processes (its errors too),
`dagster-daemon` and `dagster-webserver` in their own process groups, and the Dagster UI in a
headless Chromium. The slowest are the daemon, webserver and browser tests.
"""
