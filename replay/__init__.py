"""medallion-replay: what users touch (CLI and Python API), thin over :mod:`engine`."""
