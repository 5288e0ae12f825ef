"""The lake on disk or object store: the storage resolver, Delta tables, staged files, the writer lease."""
