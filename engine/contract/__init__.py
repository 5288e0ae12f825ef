"""The pure contract between rules and engine: Arrow schemas, the error hierarchy, in-memory SQL (no I/O, no Ray, no Delta)."""
