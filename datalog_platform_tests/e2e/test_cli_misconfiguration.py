"""Misconfiguration of the `datalog` command: a short, clear error instead of a traceback or a silent success.

Covers every setting the command reads being wrong, one scenario each: an S3 endpoint that cannot
be reached, no AWS credentials, credentials S3 refuses, a bucket that does not exist, a malformed
S3 URL, a raw directory that does not exist (an error for every reader, `datalog generate` still
creates it), a ledger database that cannot be reached or does not exist, a ledger URL with an
unknown scheme or that does not parse, integer and float settings that are not numbers or out of
range, a DuckDB memory size that is not one, and a registry CSV that is not there. Each exits 2
with at most a few lines on stderr that name the setting, never a traceback (unless `--debug` or
DATALOG_DEBUG=1 asks for one) and never a password or an AWS key. (The discovery sensor's own error
for a missing raw directory is in defs/test_discovery_sensor.py.)

Real parts only: `python -m datalog_platform.cli` in subprocesses with a prepared environment,
local directories, a closed TCP port on 127.0.0.1 (connection refused), moto's S3 server on
127.0.0.1 (the shared one, and one started here that checks credentials), PostgreSQL on 127.0.0.1
(a closed port, and the running server named by DATALOG_TEST_POSTGRES_URL, skipped when unset),
and SQLite. Nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from datalog_platform_tests.support import ledger_helpers
from datalog_platform_tests.support.cli_helpers import cli_env, describe, run_cli
from datalog_platform_tests.support.net import free_port

CONFIG_ERROR = 2
MAX_STDERR_LINES = 5
PASSWORD = "s3cr3t-pw"
AWS_KEY_ID = "AKIDS3CR3TKEYID"
AWS_SECRET = "s3cr3t-key"
SECRETS = (PASSWORD, AWS_KEY_ID, AWS_SECRET)


@pytest.fixture(scope="module")
def moto_auth_server() -> Iterator[str]:
    """A moto S3 server in a child process that checks credentials (it knows no access keys, so
    every signed request is refused with InvalidAccessKeyId); yields its endpoint URL."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def scenario_env(home: Path, **overrides: str | None) -> dict[str, str]:
    """`cli_env` with AWS keys that must never be printed and no other AWS credential source (no
    shared files, no instance metadata); an override of None unsets the variable."""
    env = cli_env(
        home,
        AWS_ACCESS_KEY_ID=AWS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def assert_clear_error(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    """Exit code 2, a few lines on stderr naming each of `names`, no traceback, no secret."""
    assert proc.returncode == CONFIG_ERROR, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    assert 0 < len(proc.stderr.strip().splitlines()) <= MAX_STDERR_LINES, describe(proc)
    for name in names:
        assert name in proc.stderr, describe(proc)
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr, describe(proc)


# (command, environment overrides, what stderr must name); in the overrides {home} is the
# DATALOG_HOME, {tmp} an existing directory, {closed} a closed port, {moto} the shared moto
# server, {moto_auth} the one that checks credentials.
CASES = [
    pytest.param(
        ("ingest",),
        {"DATALOG_RAW_URL": "s3://raw-bucket/logs", "DATALOG_S3_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
        "DATALOG_S3_ENDPOINT_URL",
        id="s3-endpoint-unreachable",
    ),
    pytest.param(
        ("ingest",),
        {
            "DATALOG_RAW_URL": "s3://raw-bucket/logs",
            "DATALOG_S3_ENDPOINT_URL": "http://127.0.0.1:{closed}",
            "AWS_ACCESS_KEY_ID": None,
            "AWS_SECRET_ACCESS_KEY": None,
        },
        "AWS_ACCESS_KEY_ID",
        id="s3-no-credentials",
    ),
    pytest.param(
        ("ingest",),
        {"DATALOG_RAW_URL": "s3://raw-bucket/logs", "DATALOG_S3_ENDPOINT_URL": "{moto_auth}"},
        "InvalidAccessKeyId",
        id="s3-credentials-refused",
    ),
    pytest.param(
        ("ingest",),
        {"DATALOG_RAW_URL": "s3://no-such-bucket/logs", "DATALOG_S3_ENDPOINT_URL": "{moto}"},
        "NoSuchBucket",
        id="s3-bucket-missing",
    ),
    pytest.param(("ingest",), {"DATALOG_LAKE_URL": "s3:/lake-bucket"}, "DATALOG_LAKE_URL", id="s3-url-malformed"),
    pytest.param(
        ("ingest",),
        {"DATALOG_S3_ENDPOINT_URL": "127.0.0.1:9000"},
        "DATALOG_S3_ENDPOINT_URL",
        id="s3-endpoint-malformed",
    ),
    pytest.param(("ingest",), {"DATALOG_RAW_URL": "{home}/raw-typo"}, "DATALOG_RAW_URL", id="raw-directory-missing"),
    pytest.param(
        ("ledger", "status"),
        {"DATALOG_LEDGER_URL": f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{{closed}}/ledger"},
        "DATALOG_LEDGER_URL",
        id="ledger-unreachable",
    ),
    pytest.param(
        ("ledger", "status"), {"DATALOG_LEDGER_URL": "foo://x"}, "DATALOG_LEDGER_URL", id="ledger-unknown-scheme"
    ),
    pytest.param(
        ("ledger", "status"),
        {"DATALOG_LEDGER_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/ledger"},
        "DATALOG_LEDGER_URL",
        id="ledger-url-malformed",
    ),
    pytest.param(
        ("ledger", "status"),
        {"DATALOG_LEDGER_URL": "sqlite:///{tmp}"},
        "DATALOG_LEDGER_URL",
        id="ledger-sqlite-a-directory",
    ),
    pytest.param(("ingest",), {"DATALOG_RAM_LIMIT": "lots"}, "DATALOG_RAM_LIMIT", id="ram-limit-not-a-size"),
    pytest.param(
        ("ingest",), {"DATALOG_KEY_LIMIT_PER_RUN": "-5"}, "DATALOG_KEY_LIMIT_PER_RUN", id="key-limit-negative"
    ),
    pytest.param(
        ("ingest",), {"DATALOG_TZ_OFFSET_HOURS": "eight"}, "DATALOG_TZ_OFFSET_HOURS", id="tz-offset-not-a-number"
    ),
    pytest.param(
        ("ingest",), {"DATALOG_TZ_OFFSET_HOURS": "15"}, "DATALOG_TZ_OFFSET_HOURS", id="tz-offset-out-of-range"
    ),
    pytest.param(("ingest",), {"DATALOG_THREADS": "0"}, "DATALOG_THREADS", id="threads-zero"),
    pytest.param(("ingest",), {"DATALOG_LEASE_SECONDS": "15m"}, "DATALOG_LEASE_SECONDS", id="lease-not-a-number"),
    pytest.param(
        ("ledger", "status"),
        {"DATALOG_QUARANTINE_WARN_RATE": "5%"},
        "DATALOG_QUARANTINE_WARN_RATE",
        id="rate-not-a-number",
    ),
    pytest.param(
        ("ledger", "status"),
        {"DATALOG_QUARANTINE_FAIL_RATE": "1.5"},
        "DATALOG_QUARANTINE_FAIL_RATE",
        id="rate-out-of-range",
    ),
    pytest.param(
        ("ingest",),
        {"DATALOG_PARTITIONS_START_DATE": "01/01/2020"},
        "DATALOG_PARTITIONS_START_DATE",
        id="start-date-not-iso",
    ),
    pytest.param(("devices", "load", "{home}/no-such.csv"), {}, "no-such.csv", id="registry-csv-missing"),
]


@pytest.mark.parametrize(("command", "overrides", "named"), CASES)
def test_misconfiguration_is_one_clear_line(
    tmp_path: Path,
    moto_server: str,
    moto_auth_server: str,
    command: tuple[str, ...],
    overrides: dict[str, str | None],
    named: str,
) -> None:
    home = tmp_path / "home"

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, home=home, closed=free_port(), moto=moto_server, moto_auth=moto_auth_server)

    env = scenario_env(home, **{name: None if value is None else fill(value) for name, value in overrides.items()})
    started = time.monotonic()
    proc = run_cli(env, *(fill(arg) for arg in command), timeout=120)
    assert_clear_error(proc, named)
    assert time.monotonic() - started < 60, f"took {time.monotonic() - started:.0f}s\n{describe(proc)}"


def test_missing_raw_directory_is_an_error_until_generate_writes_it(tmp_path: Path) -> None:
    """Reading a raw directory that does not exist fails (and does not create it); `datalog
    generate` creates it, after which `datalog ingest` registers what it wrote."""
    home = tmp_path / "home"
    raw = tmp_path / "raw"
    env = scenario_env(home, DATALOG_RAW_URL=str(raw))
    assert_clear_error(run_cli(env, "ingest"), "DATALOG_RAW_URL", str(raw))
    assert not raw.exists()

    generated = run_cli(env, "generate", "--devices", "1", "--hours", "2", "--rows", "3")
    assert generated.returncode == 0, describe(generated)
    assert raw.is_dir()
    ingested = run_cli(env, "ingest")
    assert ingested.returncode == 0, describe(ingested)
    assert "registered 2 new object(s)" in ingested.stdout, describe(ingested)


def test_ledger_database_missing_on_a_reachable_server(tmp_path: Path) -> None:
    """A PostgreSQL server that answers but has no such database: named, password masked."""
    base = os.environ.get(ledger_helpers.POSTGRES_URL_ENV)
    if not base:
        pytest.skip(f"{ledger_helpers.POSTGRES_URL_ENV} is not set")
    url = sa.make_url(base).set(password=PASSWORD, database="datalog_no_such_database")
    env = scenario_env(tmp_path / "home", DATALOG_LEDGER_URL=url.render_as_string(hide_password=False))
    proc = run_cli(env, "ledger", "status")
    assert_clear_error(proc, "DATALOG_LEDGER_URL", "datalog_no_such_database", "***")


@pytest.mark.parametrize(
    ("args", "debug_env"),
    [(("--debug", "ingest"), {}), (("ingest",), {"DATALOG_DEBUG": "1"})],
    ids=["flag", "environment"],
)
def test_debug_shows_the_traceback(tmp_path: Path, args: tuple[str, ...], debug_env: dict[str, str]) -> None:
    """With --debug or DATALOG_DEBUG=1 the same error shows its traceback, then the same line."""
    env = scenario_env(tmp_path / "home", DATALOG_KEY_LIMIT_PER_RUN="-5", **debug_env)
    proc = run_cli(env, *args)
    assert proc.returncode == CONFIG_ERROR, describe(proc)
    assert "Traceback (most recent call last)" in proc.stderr, describe(proc)
    assert "SettingsError" in proc.stderr, describe(proc)
    assert proc.stderr.strip().splitlines()[-1].startswith("datalog: DATALOG_KEY_LIMIT_PER_RUN="), describe(proc)
