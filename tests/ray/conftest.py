from __future__ import annotations

import pytest

from engine import schemas
from engine.generator import GeneratorConfig, generate
from engine.importers import append_new
from replay import api

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


def sorted_table(lake, table):
    keys = [(k, "ascending") for k in schemas.KEYS[table]]
    return lake.read(table).sort_by(keys)


def assert_same_tables(a, b):
    for t in OUTPUTS:
        ta, tb = sorted_table(a, t), sorted_table(b, t)
        assert ta.num_rows == tb.num_rows, t
        assert ta.equals(tb), t


def staged_orphans(lake, replay_id):
    """Files a replay staged that no table's latest snapshot references (should be swept)."""
    import os

    from engine.staging import PREFIX

    out = []
    for t in OUTPUTS:
        root = os.path.join(lake.root.removeprefix("file://"), t)
        live = lake.files(t) if lake.exists(t) else set()
        for d, _, files in os.walk(root):
            for f in files:
                rel = os.path.relpath(os.path.join(d, f), root)
                if f.startswith(f"{PREFIX}{replay_id}-") and rel not in live:
                    out.append(rel)
    return out


@pytest.fixture(scope="module")
def history_parts():
    """A generated history split into 3 Bronze appends (several files: several map tasks)."""
    t = generate(GeneratorConfig(events=30_000, tenants=25, days=0.3, seed=11))
    n = t.num_rows
    return [t.slice(0, n // 3), t.slice(n // 3, n // 3), t.slice(2 * (n // 3))]


def make_lake(path, parts):
    lk = api.open_lake(path)
    for p in parts:
        append_new(lk, p, "test", {"source": "test"})
    return lk
