"""Getting events into Bronze: file importers, the exactly-once Kafka ingester, the generator."""
