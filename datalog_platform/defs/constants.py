"""Names the definitions of several domains share."""

# Who answers for every asset here; the UI shows it on each asset and filters by it.
OWNERS = ["team:data-platform"]

# Set on every run that a sensor, a schedule or the command line launches: those runs ingest
# what is pending. A run without it was launched by a person (Materialize, a backfill) and
# rebuilds its partition.
TRIGGER_TAG = "datalog/trigger"
