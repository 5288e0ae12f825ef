"""Operating a lake for years (coming): erasure, vacuum, compaction and Z-order, archive."""
