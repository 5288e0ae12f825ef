"""Reading the lake with DuckDB: tables and past versions by name, user SQL, diffs and the entitlement summary."""
