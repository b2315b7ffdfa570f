"""The assets of the code location."""

# Who answers for every asset here; the UI shows it on each asset and filters by it.
OWNERS = ["team:data-platform"]
