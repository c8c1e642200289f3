"""hubtree: model hubs read as data."""
