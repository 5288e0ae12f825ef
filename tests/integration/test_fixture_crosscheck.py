"""The cross-check fixture (tests/fixtures/basic): our tables equal an independent
implementation of docs/semantics.md, row for row (how they are compared: tests/fixtures/README.md)."""

from __future__ import annotations

import datetime as dt

import pyarrow.csv as pcsv
import pytest

from engine.contract import schemas
from replay import api
from tests.lakes import FIXTURE

TABLES = [schemas.SILVER, schemas.QUARANTINE, schemas.DUPLICATES, schemas.MINUTE, schemas.HOURLY,
          schemas.ALERTS]


def _norm(rows, cols):
    out = []
    for r in rows:
        vals = []
        for c in cols:
            v = r[c]
            if isinstance(v, dt.datetime):
                v = v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo else v
            vals.append(v)
        out.append(tuple(vals))
    return sorted(out, key=repr)


@pytest.fixture(scope="module")
def fixture_lake(tmp_path_factory):
    if not (FIXTURE / "bronze.parquet").exists():
        pytest.fail(f"cross-check fixture missing at {FIXTURE}: it is part of the repository "
                    "(tests/fixtures/README.md); restore it from git or with "
                    "`make fixture-refresh SHARED=<upstream shared dir>`")
    lk = api.open_lake(tmp_path_factory.mktemp("fx") / "lake")
    res = api.import_file(lk, FIXTURE / "bronze.parquet", "bronze-parquet")
    assert res.rows_added == 3849
    return lk


@pytest.mark.parametrize("ruleset", ["2026-01", "2026-02"])
def test_tables_equal_expected(fixture_lake, ruleset):
    res = api.run(fixture_lake, ruleset, mode="full")
    assert res.conservation_ok
    for table in TABLES:
        expected = pcsv.read_csv(FIXTURE / "expected" / ruleset / f"{table}.csv")
        cols = expected.column_names
        got = fixture_lake.read(table)
        exp_rows = _norm(expected.to_pylist(), cols)
        got_rows = _norm(got.to_pylist(), cols)
        assert len(got_rows) == len(exp_rows), table
        assert got_rows == exp_rows, table


def test_reimport_adds_nothing(fixture_lake):
    res = api.import_file(fixture_lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    assert (res.rows_added, res.rows_skipped) == (0, 3849)
