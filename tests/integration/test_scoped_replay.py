"""Range and tenant replays: inside the scope equal to a full replay, outside untouched."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from engine.contract import schemas
from engine.fold.scope import Scope
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from replay.demo import RULESET_DIR

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


@pytest.fixture(scope="module")
def bronze():
    return generate(GeneratorConfig(events=40_000, tenants=20, days=0.5, seed=5, dup_rate=0.05))


def lake_with(path, bronze, ruleset):
    lk = api.open_lake(path)
    append_new(lk, bronze, "t", {})
    api.run(lk, ruleset, mode="full")
    return lk


def rows(lake, table, scope, inside):
    t = lake.read(table)
    m = scope.mask(t, table)
    t = t.filter(m if inside else pc.invert(m))
    return sorted(map(repr, t.to_pylist()))


@pytest.mark.parametrize("scope_args", [
    {"start": "2026-03-01T03:20:00Z", "end": "2026-03-01T06:05:00Z"},
    {"tenants": ["tenant-00000", "tenant-00003"]},
    {"start": "2026-03-01T02:00:00Z", "end": "2026-03-01T04:00:00Z", "tenants": ["tenant-00001"]},
])
def test_scoped_full_replay(tmp_path, bronze, scope_args):
    old = lake_with(tmp_path / "old", bronze, "2026-01")
    new = lake_with(tmp_path / "new", bronze, "2026-02")
    scoped = lake_with(tmp_path / "scoped", bronze, "2026-01")
    res = api.run(scoped, "2026-02", mode="full", **scope_args)
    scope = res.plan.scope
    assert scope is not None and res.conservation_ok
    for t in OUTPUTS:
        assert rows(scoped, t, scope, True) == rows(new, t, scope, True), t
        assert rows(scoped, t, scope, False) == rows(old, t, scope, False), t
    # the lake now mixes rulesets: an unscoped plan wants a full replay
    assert api.plan(scoped, "2026-02").mode == "full"


def test_range_is_widened_to_whole_hours():
    s = Scope.of("2026-03-01T03:20:00Z", "2026-03-01T06:05:00Z")
    assert s.start == datetime(2026, 3, 1, 3, tzinfo=UTC) and s.end == datetime(2026, 3, 1, 7, tzinfo=UTC)
    assert Scope.of("2026-03-01T03:00:00Z", "2026-03-01T04:00:00Z").end.hour == 4


def test_scoped_gold_replay(tmp_path, bronze):
    old = lake_with(tmp_path / "old", bronze, "2026-01")
    scoped = lake_with(tmp_path / "scoped", bronze, "2026-01")
    ref = lake_with(tmp_path / "ref", bronze, "2026-01")
    ruleset = RULESET_DIR / "free-100.toml"
    api.run(ref, ruleset, mode="gold")
    res = api.run(scoped, ruleset, start="2026-03-01T01:00:00Z", end="2026-03-01T05:00:00Z")
    assert res.plan.mode == "gold"
    for t in schemas.GOLD_TABLES:
        assert rows(scoped, t, res.plan.scope, True) == rows(ref, t, res.plan.scope, True)
        assert rows(scoped, t, res.plan.scope, False) == rows(old, t, res.plan.scope, False)


def test_bad_scope_flags(tmp_path):
    from engine.contract.errors import UsageError

    with pytest.raises(UsageError, match="--start"):
        Scope.of("yesterday", None)
    with pytest.raises(UsageError, match="before --end"):
        Scope.of("2026-03-02T00:00:00Z", "2026-03-01T00:00:00Z")
