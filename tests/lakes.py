"""Shared test library: paths of the repo and of its fixture (tests/fixtures/basic), and lake
comparison helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

from engine.contract import schemas
from engine.ingest.importers import append_new
from engine.lake.staging import PREFIX
from replay import api

ROOT = Path(__file__).resolve().parent.parent
# The cross-check fixture lives in the repository (tests/fixtures/README.md): nothing outside ROOT.
FIXTURE = ROOT / "tests" / "fixtures" / "basic"
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


def make_lake(path, parts):
    lk = api.open_lake(path)
    for p in parts:
        append_new(lk, p, "test", {"source": "test"})
    return lk


def orphans(lk):
    """Parquet files under Bronze that no commit ever added (a lost race's staged files must
    not stay behind)."""
    root = Path(lk.root.removeprefix("file://")) / schemas.BRONZE
    live = {unquote(a["add"]["path"]) for log in (root / "_delta_log").glob("*.json")
            for a in map(json.loads, log.read_text().splitlines()) if "add" in a}
    return [str(f.relative_to(root)) for f in root.rglob("*.parquet")
            if "_delta_log" not in f.parts and str(f.relative_to(root)) not in live]
