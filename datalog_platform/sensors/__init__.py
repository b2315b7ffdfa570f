"""Sensors of the code location; definitions.py registers every sensor listed in SENSORS."""

from datalog_platform.sensors.discovery import raw_logs_sensor
from datalog_platform.sensors.pending import pending_keys_sensor
from datalog_platform.sensors.recovery import batch_recovery_sensor, expired_lease_sensor

SENSORS = (raw_logs_sensor, pending_keys_sensor, batch_recovery_sensor, expired_lease_sensor)

__all__ = ["SENSORS", "batch_recovery_sensor", "expired_lease_sensor", "pending_keys_sensor", "raw_logs_sensor"]
