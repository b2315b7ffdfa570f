"""Settings recorded in DATALOG_HOME (`datalog.env`): they apply under the environment, which wins,
and a recorded value that is not valid fails, naming the setting.

Real parts only: a DATALOG_HOME directory in tmp_path and `Settings.from_env`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datalog_platform.settings import Settings, SettingsError, record_home_setting


def test_settings_recorded_in_the_home_apply_under_the_environment(tmp_path: Path) -> None:
    """`datalog.env` in DATALOG_HOME supplies settings the environment does not set."""
    home = tmp_path / "home"
    record_home_setting(home, "DATALOG_PARTITIONS_START_DATE", "2026-11-30")
    record_home_setting(home, "DATALOG_KEY_LIMIT_PER_RUN", "7")
    settings = Settings.from_env({"DATALOG_HOME": str(home), "DATALOG_KEY_LIMIT_PER_RUN": "9"})
    assert (settings.partitions_start_date, settings.key_limit_per_run) == ("2026-11-30", 9)
    record_home_setting(home, "DATALOG_KEY_LIMIT_PER_RUN", "many")
    with pytest.raises(SettingsError, match="DATALOG_KEY_LIMIT_PER_RUN"):
        Settings.from_env({"DATALOG_HOME": str(home)})
