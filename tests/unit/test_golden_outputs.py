"""Golden outputs: every released rule version, and the fold, pinned on a canonical history.

A released rule version never changes behaviour: a change is a new version (a new module,
a new class), and rulesets opt into it. These tests hold each built-in rule version (every
``(name, version)`` of ``builtin_registry().versions()``) to the output it had when it was
recorded, and the fold (``Compiled.of(ruleset)``: validate, dedup, Gold) to its output for
the released rulesets, at the current ``FOLD_VERSION``.

Files (tests/golden/, see its README):

- ``history.parquet``: the canonical Bronze history, generated once from :data:`CANONICAL`
  and kept, so that changes to the generator never move the goldens.
- ``rules/<name>@<version>.json``: per rule version, the digest of its output for each
  recorded input (its input is computed from the history by the upstream rule versions
  and the fold's SQL, so a new ``FOLD_VERSION`` can give a gold rule a new input; recorded
  cases are never rewritten, new inputs add cases).
- ``fold/v<FOLD_VERSION>/<ruleset>.json``: the six tables the fold makes for the ruleset.

A digest is the row count, the column types and the sha256 of the rows sorted in a canonical
JSON form: kilobytes, not the data.

Recording: ``MEDALLION_UPDATE_GOLDEN=1 pytest tests/unit/test_golden_outputs.py`` writes
what is *missing* only (a new rule version's file, a new input's case, a new fold version's
files, the history) and never rewrites a recorded digest: an output that differs from its
record fails with or without the variable.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.contract import schemas
from engine.fold.pipeline import FOLD_VERSION, Compiled
from engine.ingest.generator import GeneratorConfig, generate
from rules.base import Registry, RuleParams
from rules.registry import builtin_registry
from rules.ruleset import builtin_ruleset, make_ref

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
HISTORY = GOLDEN / "history.parquet"
#: The canonical history (generated once into HISTORY; the file is what the tests read).
#: (burst_share 0.4: every gold rule has rows to act on: over-limit minutes, burst use, abuse)
CANONICAL = GeneratorConfig(events=3000, tenants=12, days=0.2, seed=1234, dup_rate=0.05,
                            invalid_rate=0.03, late_rate=0.02, burst_share=0.4)
#: Released rulesets whose fold output is pinned (add a ruleset here when it is released).
FOLD_RULESETS = ("2026-01", "2026-02")
UPDATE = os.environ.get("MEDALLION_UPDATE_GOLDEN") == "1"
RULE_VERSIONS = builtin_registry().versions()

RELEASED = ("A released rule version never changes behaviour; make the change a new version "
            "(a new rule module and class with the next version number) and let rulesets opt "
            "into it.")
FOLD_CHANGED = ("If the fold's own SQL or merging changed on purpose, bump FOLD_VERSION in "
                "engine/fold/pipeline.py and record the new version's goldens with "
                "MEDALLION_UPDATE_GOLDEN=1.")


# -- digests -------------------------------------------------------------------------------------


def _cell(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (decimal.Decimal, dt.timedelta)):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _cell(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_cell(x) for x in v]
    return v


def digest(value: pa.Table | list[str]) -> dict[str, Any]:
    """Rows (sorted, columns by name) and column types -> a small, order-free digest."""
    if not isinstance(value, pa.Table):
        return {"values": sorted(value)}
    names = sorted(value.column_names)
    t = value.select(names)
    columns = [f"{f.name} {f.type}" for f in t.schema]
    rows = sorted(json.dumps([_cell(v) for v in row.values()], separators=(",", ":"))
                  for row in t.to_pylist())
    h = hashlib.sha256(json.dumps(columns).encode())
    for r in rows:
        h.update(r.encode())
        h.update(b"\n")
    return {"rows": t.num_rows, "columns": columns, "sha256": h.hexdigest()}


def input_key(inputs: dict[str, Any]) -> str:
    payload = json.dumps({k: digest(v) if isinstance(v, pa.Table) else v
                          for k, v in sorted(inputs.items())}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _save(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(recorded) | set(now)):
        a, b = recorded.get(name), now.get(name)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{name}: {'new output' if a is None else 'output gone'}")
        elif "values" in a or "values" in b:
            out.append(f"{name}: {a.get('values')} -> {b.get('values')}")
        else:
            what = [f"rows {a['rows']} -> {b['rows']}"] if a["rows"] != b["rows"] else []
            if a["columns"] != b["columns"]:
                what.append(f"columns {a['columns']} -> {b['columns']}")
            out.append(f"{name}: {', '.join(what) or 'same row count, different rows'}")
    return out


# -- the canonical inputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bronze() -> pa.Table:
    if not HISTORY.exists():
        if not UPDATE:
            pytest.fail(f"{HISTORY} is missing; record it with MEDALLION_UPDATE_GOLDEN=1")
        HISTORY.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(generate(CANONICAL), HISTORY, compression="zstd", compression_level=19)
    return pq.read_table(HISTORY)


def _quantile_bounds(valid: pa.Table, n: int) -> list[tuple[Any, Any]]:
    """[lo, hi) ingestion-time bounds cutting ``valid`` into ``n`` chunks (as the fold does)."""
    ints = np.sort(pc.cast(valid.column("ingestion_timestamp"), pa.int64()).to_numpy())
    cuts = sorted({int(ints[i * len(ints) // n]) for i in range(1, n)} - {int(ints[0])})
    edges: list[Any] = [None, *[pa.scalar(c, pa.int64()).cast(schemas.TS) for c in cuts], None]
    return list(zip(edges[:-1], edges[1:], strict=True))


@pytest.fixture(scope="module")
def stages(bronze) -> dict[str, Any]:
    """Every rule slot's canonical input, made by released rule versions and the fold:
    validate@1 (plans of plan_limits@1), dedup@2, the fold's minutes, plan_limits@2,
    burst_allowance@1."""
    reg = builtin_registry()
    c01 = Compiled.of(builtin_ruleset("2026-01", reg), reg)
    c02 = Compiled.of(builtin_ruleset("2026-02", reg), reg)
    valid = schemas.conform(c01.validate(bronze)[0], schemas.VALID_SCHEMA)
    silver = c02.dedup(valid)[0]
    minutes = Compiled.minutes(silver)
    limits = make_ref("plan_limits", 2, registry=reg)
    limited = limits.rule(reg).apply(limits.typed_params(reg), minutes)
    burst = make_ref("burst_allowance", 1, registry=reg)
    bursted = burst.rule(reg).apply(burst.typed_params(reg), limited)
    return {"bronze": bronze, "known_plans": sorted(c01.known_plans), "valid": valid,
            "silver": silver, "minutes": minutes, "limited": limited, "bursted": bursted}


def _dedup(cls: Any, params: RuleParams, st: dict[str, Any]) -> tuple[dict, dict]:
    silver, dups = cls.apply(params, st["valid"])
    outputs = {"silver": silver, "duplicates": dups}
    inputs: dict[str, Any] = {"valid": st["valid"]}
    if hasattr(cls, "apply_chunk"):  # the chunked fold of a big shard: 3 chunks, state carried
        bounds = _quantile_bounds(st["valid"], 3)
        parts: list[tuple[pa.Table, pa.Table]] = []
        state = None
        for i, (lo, hi) in enumerate(bounds):
            ts = st["valid"].column("ingestion_timestamp")
            mask = pc.and_(pc.greater_equal(ts, lo) if lo is not None else pc.is_valid(ts),
                           pc.less(ts, hi) if hi is not None else pc.is_valid(ts))
            until = None if i == len(bounds) - 1 else hi.as_py()
            s, d, state = cls.apply_chunk(params, st["valid"].filter(mask), state, until)
            parts.append((s, d))
        outputs["silver_chunked"] = pa.concat_tables([s for s, _ in parts])
        outputs["duplicates_chunked"] = pa.concat_tables([d for _, d in parts])
        inputs["chunks"] = [[None if b is None else b.as_py().isoformat() for b in pair]
                            for pair in bounds]
    return inputs, outputs


#: slot -> (cls, params, stages) -> (inputs, outputs): how a rule of the slot is called.
DRIVERS = {
    "validate": lambda cls, p, st: (
        {"bronze": st["bronze"], "known_plans": st["known_plans"]},
        dict(zip(("valid", "quarantine"), cls.apply(p, st["bronze"], frozenset(st["known_plans"])),
                 strict=True))),
    "dedup": _dedup,
    "plan_limits": lambda cls, p, st: (
        {"minutes": st["minutes"]},
        {"minutes": cls.apply(p, st["minutes"]), "known_plans": sorted(cls.known_plans(p))}),
    "burst_allowance": lambda cls, p, st: (
        {"limited": st["limited"]}, {"minutes": cls.apply(p, st["limited"])}),
    "abuse": lambda cls, p, st: ({"bursted": st["bursted"]}, {"alerts": cls.apply(p, st["bursted"])}),
    "region_usage": lambda cls, p, st: ({"silver": st["silver"]}, {"region": cls.apply(p, st["silver"])}),
}


# -- the tests -----------------------------------------------------------------------------------


def _rule_path(name: str, version: int) -> Path:
    return GOLDEN / "rules" / f"{name}@{version}.json"


@pytest.mark.parametrize(("name", "version"), RULE_VERSIONS, ids=[f"{n}@{v}" for n, v in RULE_VERSIONS])
def test_a_released_rule_version_keeps_its_output(stages, name, version):
    reg: Registry = builtin_registry()
    ref = make_ref(name, version, registry=reg)  # its default parameters
    if name not in DRIVERS:
        pytest.fail(f"no golden driver for the {name!r} slot: add one to DRIVERS in {__file__}")
    inputs, outputs = DRIVERS[name](ref.rule(reg), ref.typed_params(reg), stages)
    key = input_key(inputs)
    now = {k: digest(v) for k, v in outputs.items()}
    path = _rule_path(name, version)
    doc = _load(path) or {"rule": f"{name}@{version}", "cases": {}}
    case = doc["cases"].get(key)
    if case is None:
        if not UPDATE:
            what = ("a new rule version" if not doc["cases"] else
                    "its input changed: an upstream rule version or the fold's SQL (FOLD_VERSION) "
                    "changed, not this rule")
            pytest.fail(f"no golden output of {name}@{version} for its canonical input ({what}); "
                        f"record it with MEDALLION_UPDATE_GOLDEN=1 (adds {path.name}; recorded "
                        "outputs are never rewritten)")
        doc["cases"][key] = {"fold_version": FOLD_VERSION, "outputs": now,
                             "params": ref.params}
        _save(path, doc)
        return
    diff = _differences(case["outputs"], now)
    assert not diff, (f"{name}@{version} changed its output on the canonical history: "
                      f"{'; '.join(diff)}. {RELEASED}")


def test_recorded_rule_versions_are_all_still_registered():
    recorded = sorted(p.stem for p in (GOLDEN / "rules").glob("*.json"))
    registered = {f"{n}@{v}" for n, v in RULE_VERSIONS}
    gone = [r for r in recorded if r not in registered]
    assert not gone, f"released rule version(s) {gone} disappeared: released versions stay"


@pytest.mark.parametrize("name", FOLD_RULESETS)
def test_the_fold_keeps_its_output_for_a_released_ruleset(bronze, name):
    reg = builtin_registry()
    ruleset = builtin_ruleset(name, reg)
    compiled = Compiled.of(ruleset, reg)
    valid, quarantine = compiled.validate(bronze)
    silver, duplicates = compiled.dedup(schemas.conform(valid, schemas.VALID_SCHEMA))
    minute, hourly, alerts = compiled.gold(silver)
    tables = {schemas.QUARANTINE: quarantine, schemas.SILVER: silver, schemas.DUPLICATES: duplicates,
              schemas.MINUTE: minute, schemas.HOURLY: hourly, schemas.ALERTS: alerts}
    now = {t: digest(v) for t, v in tables.items()}
    path = GOLDEN / "fold" / f"v{FOLD_VERSION}" / f"{name}.json"
    doc = _load(path)
    history = digest(bronze)
    if doc is None:
        if not UPDATE:
            pytest.fail(f"no golden fold output for ruleset {name} at fold version {FOLD_VERSION}; "
                        f"record it with MEDALLION_UPDATE_GOLDEN=1 (writes {path})")
        _save(path, {"fold_version": FOLD_VERSION, "ruleset": name,
                     "ruleset_fingerprint": ruleset.fingerprint, "history": history,
                     "outputs": now})
        return
    assert doc["history"] == history, f"{HISTORY} is not the history {path} was recorded on"
    assert doc["ruleset_fingerprint"] == ruleset.fingerprint, (
        f"released ruleset {name} changed its fingerprint ({doc['ruleset_fingerprint']} -> "
        f"{ruleset.fingerprint}): a rule version or its default parameters changed. {RELEASED}")
    diff = _differences(doc["outputs"], now)
    assert not diff, (f"the fold's output for ruleset {name} changed on the canonical history: "
                      f"{'; '.join(diff)}. {RELEASED} {FOLD_CHANGED}")


def test_a_fold_version_change_makes_silver_and_gold_stale(lake, monkeypatch):
    import engine.batch.apply
    import engine.batch.plan
    from replay import api
    from tests.lakes import FIXTURE

    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(lake, "2026-01", reason="fold v1")
    assert lake.commit_metadata(schemas.MINUTE)["fold_version"] == FOLD_VERSION
    assert lake.commit_metadata(schemas.SILVER)["fold_version"] == FOLD_VERSION
    assert api.plan(lake, "2026-01").up_to_date
    # a newer fold: Silver (and so Gold) is stale
    monkeypatch.setattr(engine.batch.plan, "FOLD_VERSION", FOLD_VERSION + 1)
    p = api.plan(lake, "2026-01")
    assert p.mode == "full"
    assert f"the fold changed since Silver was built (fold version {FOLD_VERSION} -> " \
           f"{FOLD_VERSION + 1})" in p.reasons
    # Gold built by another fold version than the one planning: a Gold replay
    monkeypatch.setattr(engine.batch.plan, "FOLD_VERSION", FOLD_VERSION)
    monkeypatch.setattr(engine.batch.apply, "FOLD_VERSION", FOLD_VERSION + 1)
    api.run(lake, "free-100", reason="recorded as another fold version")  # a Gold-only replay
    p = api.plan(lake, "free-100")
    assert p.mode == "gold" and p.reasons == (
        f"the fold changed since Gold was built (fold version {FOLD_VERSION + 1} -> {FOLD_VERSION})",)
