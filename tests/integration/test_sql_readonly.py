"""``replay sql`` is read-only over the lake's tables, as a user types it.

One SELECT runs, on a DuckDB connection locked once the lake's tables are registered: no
COPY ... TO, no CREATE/SET/ATTACH/INSTALL..., no second statement, no file or URL read unless
``--allow-local-files`` (local files only, still one SELECT). A refusal exits 1 with one line
on stderr (QueryRefusedError); a query that cannot run (syntax) stays a usage error, exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.contract.errors import QueryRefusedError
from replay import api
from tests.lakes import FIXTURE

REPLAY = Path(sys.executable).parent / "replay"  # the console script `make venv` installs


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("sql") / "lake"
    api.import_file(root, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(root, "2026-01", reason="sql tests")
    return str(root)


@pytest.fixture
def local_csv(tmp_path) -> Path:
    f = tmp_path / "local.csv"
    f.write_text("a,b\n1,2\n3,4\n")
    return f


def sql(lake: str, query: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = [str(REPLAY)] if REPLAY.is_file() else [sys.executable, "-m", "replay"]
    return subprocess.run([*argv, "sql", "--lake", lake, query, *flags], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def rows(p: subprocess.CompletedProcess) -> list[dict]:
    assert p.returncode == 0, (p.returncode, p.stderr)
    return json.loads(p.stdout)


def refused(p: subprocess.CompletedProcess, needle: str = "SQL refused") -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    return lines[0]


def test_a_select_with_a_bound_parameter_runs(lake, tmp_path):
    q = "SELECT count(*) AS n FROM tenant_usage_1min WHERE tenant_id = $t"
    assert rows(sql(lake, q, "--param", "t=acme", "--json", cwd=tmp_path)) == [{"n": 6}]
    inj = sql(lake, q, "--param", "t=acme' OR '1'='1", "--json", cwd=tmp_path)
    assert rows(inj) == [{"n": 0}]  # bound, not formatted in
    # Bronze, a version by name and the catalog still read under the lock
    p = sql(lake, "SELECT (SELECT count(*) FROM bronze_api_usage) AS b, "
                  "(SELECT count(*) FROM silver_api_usage__v1) AS s", "--json", cwd=tmp_path)
    assert rows(p) == [{"b": 3849, "s": 3841}]
    assert {"name": "tenant_usage_1min"} in rows(sql(lake, "SHOW TABLES", "--json", cwd=tmp_path))


def test_copy_to_is_refused_and_writes_nothing(lake, tmp_path):
    out = tmp_path / "x.csv"
    line = refused(sql(lake, f"COPY (SELECT * FROM tenant_usage_1min) TO '{out}'", cwd=tmp_path))
    assert "COPY is not a query" in line
    assert not out.exists()


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM '{csv}'",
    "SELECT * FROM read_csv('local.csv')",  # relative to the working directory
    "SELECT * FROM glob('/etc/*')",
])
def test_reading_files_is_refused_by_default(lake, local_csv, query):
    line = refused(sql(lake, query.format(csv=local_csv), cwd=local_csv.parent))
    assert "--allow-local-files" in line


@pytest.mark.parametrize("query,kind", [
    ("SET enable_external_access = true", "SET"),
    ("RESET lock_configuration", "SET"),
    ("ATTACH '{dir}/other.duckdb' AS other", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("CREATE TABLE t AS SELECT 1 AS a", "CREATE"),
    ("INSERT INTO tenant_usage_1min SELECT * FROM tenant_usage_1min", "INSERT"),
    ("DELETE FROM tenant_usage_1min", "DELETE"),
    ("EXPORT DATABASE '{dir}/export'", "EXPORT"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL pragma_version()", "CALL"),
])
def test_statements_other_than_select_are_refused(lake, tmp_path, query, kind):
    line = refused(sql(lake, query.format(dir=tmp_path), cwd=tmp_path))
    assert f"{kind} is not a query" in line
    assert sorted(tmp_path.iterdir()) == []  # nothing attached, exported or written


@pytest.mark.parametrize("query", [
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{dir}/x.csv'",
    "SELECT 1; SET enable_external_access = true; SELECT * FROM read_text('/etc/hostname')",
])
def test_several_statements_are_refused(lake, tmp_path, query):
    assert "statements" in refused(sql(lake, query.format(dir=tmp_path), cwd=tmp_path))
    assert sorted(tmp_path.iterdir()) == []


def test_a_query_that_does_not_parse_is_still_a_usage_error(lake, tmp_path):
    p = sql(lake, "SELEC 1", cwd=tmp_path)
    assert p.returncode == 2 and "SQL: Parser Error" in p.stderr and len(p.stderr.splitlines()) == 1


def test_allow_local_files_reads_a_local_csv_but_never_writes(lake, local_csv, tmp_path):
    p = sql(lake, f"SELECT sum(a)::INT AS a, sum(b)::INT AS b FROM read_csv('{local_csv}')",
            "--allow-local-files", "--json", cwd=tmp_path)
    assert rows(p) == [{"a": 4, "b": 6}]
    # joined with a lake table, parameters still bound
    p = sql(lake, f"SELECT count(*) AS n FROM tenant_usage_1min, read_csv('{local_csv}') c "
                  "WHERE tenant_id = $t AND c.a = 1", "--allow-local-files", "--param", "t=acme",
            "--json", cwd=tmp_path)
    assert rows(p) == [{"n": 6}]
    out = tmp_path / "out.csv"
    assert "COPY is not a query" in refused(sql(lake, f"COPY (SELECT 1) TO '{out}'",
                                                 "--allow-local-files", cwd=tmp_path))
    assert not out.exists()
    refused(sql(lake, "SET enable_external_access = true", "--allow-local-files", cwd=tmp_path))
    # local files only: never a URL
    assert "never URLs" in refused(sql(lake, "SELECT * FROM read_csv('https://example.com/x.csv')",
                                       "--allow-local-files", cwd=tmp_path))


def test_the_python_api_raises_query_refused_with_exit_code_1(lake, tmp_path):
    with pytest.raises(QueryRefusedError, match="COPY is not a query") as exc:
        api.sql(lake, f"COPY (SELECT 1) TO '{tmp_path}/x.csv'")
    assert exc.value.exit_code == 1 and not (tmp_path / "x.csv").exists()
    with pytest.raises(QueryRefusedError, match="allow-local-files"):
        api.sql(lake, "SELECT * FROM read_text('/etc/hostname')")
    assert api.sql(lake, "SELECT count(*) AS n FROM silver_api_usage").column("n")[0].as_py() == 3841
