"""The replay CLI as a user runs it: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURE, ROOT


def run(*args, check_rc=None):
    p = subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True, cwd=ROOT)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.stdout, p.stderr)
    return p


def test_import_run_status_sql(tmp_path):
    lk = str(tmp_path / "lake")
    out = json.loads(run("import", "--lake", lk, "--format", "bronze-parquet", str(FIXTURE / "bronze.parquet"),
                         "--json", check_rc=0).stdout)
    assert out["rows_added"] == 3849
    res = json.loads(run("run", "--executor", "local", "--lake", lk, "--ruleset", "2026-01", "--reason", "test", "--json", check_rc=0).stdout)
    assert res["conservation_ok"] and res["counts"]["silver_api_usage"] == 3841
    dry = run("run", "--executor", "local", "--lake", lk, "--ruleset", "2026-02", "--dry-run", check_rc=0).stdout
    assert "mode: full" in dry and "dedup" in dry
    assert "up to date" in run("plan", "--executor", "local", "--lake", lk, "--ruleset", "2026-01", check_rc=0).stdout
    st = json.loads(run("status", "--lake", lk, "--json", check_rc=0).stdout)
    assert {r["table"]: r.get("rows") for r in st}["silver_quarantine"] == 7
    q = run("sql", "--lake", lk, "SELECT count(*) AS n FROM tenant_usage_1min WHERE tenant_id = $t",
            "--param", "t=acme", "--format", "csv", check_rc=0).stdout
    assert q.splitlines()[-1] == "6"
    inj = run("sql", "--lake", lk, "SELECT count(*) AS n FROM tenant_usage_1min WHERE tenant_id = $t",
              "--param", "t=acme' OR '1'='1", "--format", "csv", check_rc=0).stdout
    assert inj.splitlines()[-1] == "0"


@pytest.mark.parametrize("args,code,needle", [
    (("run", "--executor", "local", "--lake", "/nonexistent/x", "--ruleset", "2026-01"), 2, "replay import"),
    (("run", "--executor", "local", "--lake", "/tmp", "--ruleset", "nope"), 2, "neither a built-in"),
    (("import", "--lake", "/tmp/x", "/no/such.jsonl"), 2, "no such file"),
    (("run", "--ruleset"), 2, "expected one argument"),
    (("frobnicate",), 2, "invalid choice"),
    (("sql", "--lake", "/tmp/none", "SELEC 1"), 2, "SQL: Parser Error"),
])
def test_errors_are_one_line_with_exit_codes(args, code, needle):
    p = run(*args)
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr


def test_debug_shows_traceback():
    p = run("--debug", "run", "--executor", "local", "--lake", "/tmp", "--ruleset", "nope")
    assert p.returncode == 2 and "Traceback" in p.stderr


def test_generate_jsonl_then_import(tmp_path):
    f = tmp_path / "g.jsonl"
    run("generate", "--events", "2000", "--tenants", "5", "--out", str(f), check_rc=0)
    assert len(f.read_bytes().splitlines()) >= 2000
    out = json.loads(run("import", "--lake", str(tmp_path / "l"), str(f), "--json", check_rc=0).stdout)
    assert out["rows_added"] == out["rows_read"] >= 2000
    p = run("generate", "--events", "10", "--dup-rate", "2")
    assert p.returncode == 2 and "between 0 and 1" in p.stderr
