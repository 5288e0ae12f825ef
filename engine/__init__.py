"""The machinery of medallion-replay: lake, importers, pipeline, executors, queries."""
