"""The state service: container, network and IP allocation records in SQLite."""
