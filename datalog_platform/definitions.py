"""The code location Dagster loads (`dagster dev`, the webserver, the daemon): the settings are
read from the environment once, here, and everything is wired from them."""

from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings

defs = build_definitions(Settings.from_env())
