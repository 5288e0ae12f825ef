"""Conservation (docs/semantics.md §3) on random histories: every Bronze row lands in exactly one Silver table."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.fold.pipeline import Compiled
from engine.ingest.generator import GeneratorConfig, generate
from rules.ruleset import load_ruleset


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.integers(0, 3000), tenants=st.integers(1, 30), seed=st.integers(0, 10**6),
       dup=st.floats(0, 0.5), invalid=st.floats(0, 0.5), ruleset=st.sampled_from(["2026-01", "2026-02"]))
def test_conservation(events, tenants, seed, dup, invalid, ruleset):
    bronze = generate(GeneratorConfig(events=events, tenants=tenants, seed=seed, dup_rate=dup,
                                      invalid_rate=invalid, days=0.2))
    c = Compiled.of(load_ruleset(ruleset))
    valid, quarantine = c.validate(bronze)
    silver, dups = c.dedup(valid)
    assert bronze.num_rows == silver.num_rows + quarantine.num_rows + dups.num_rows
    key = ["kafka_topic", "kafka_partition", "kafka_offset"]
    seen = set()
    for t in (silver, quarantine, dups):
        for r in t.select(key).to_pylist():
            k = tuple(r.values())
            assert k not in seen
            seen.add(k)
    assert len(seen) == bronze.num_rows
