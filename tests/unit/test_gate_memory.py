"""The validation gate's DuckDB memory cap: a check that cannot finish under it runs again
uncapped (it never fails a replay whose tables are fine), and the cap comes back after."""

from __future__ import annotations

import duckdb
import pytest

from engine.batch.checks import GATE_MEMORY, _failing


def test_a_check_over_the_cap_runs_again_without_it(tmp_path):
    con = duckdb.connect(config={"memory_limit": "32MiB", "temp_directory": str(tmp_path)})
    # one list of 8M integers: an aggregate state no operator can spill
    sql = "SELECT len(l) AS n FROM (SELECT list(i) AS l FROM range(8000000) t(i)) WHERE len(l) <> 8000000"
    with pytest.raises(duckdb.OutOfMemoryException):
        con.sql(sql).fetchall()
    assert _failing(con, con.sql(sql)) == (0, [])
    failing = "SELECT len(l) AS n FROM (SELECT list(i) AS l FROM range(8000000) t(i))"
    assert _failing(con, con.sql(failing)) == (1, [{"n": 8_000_000}])
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit == f"{GATE_MEMORY >> 20}.0 MiB"
