"""One module per paper finding: a Config, and `run` writing its results through records."""
