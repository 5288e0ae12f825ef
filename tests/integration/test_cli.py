"""The replay CLI as a user runs it: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lakes import FIXTURE, ROOT


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
    assert {r["table"]: r.get("rows") for r in st["tables"]}["silver_quarantine"] == 7
    fresh = st["freshness"]
    assert fresh["lag_rows"] == 0 and fresh["follower"] is None
    assert fresh["silver_bronze_version"] == fresh["bronze_version"] == fresh["gold_bronze_version"]
    q = run("sql", "--lake", lk, "SELECT count(*) AS n FROM tenant_usage_1min WHERE tenant_id = $t",
            "--param", "t=acme", "--csv", check_rc=0).stdout
    assert q.splitlines()[-1] == "6"
    inj = run("sql", "--lake", lk, "SELECT count(*) AS n FROM tenant_usage_1min WHERE tenant_id = $t",
              "--param", "t=acme' OR '1'='1", "--csv", check_rc=0).stdout
    assert inj.splitlines()[-1] == "0"


@pytest.mark.parametrize("args,code,needle", [
    (("run", "--executor", "local", "--lake", "/nonexistent/x", "--ruleset", "2026-01"), 2, "replay import"),
    (("run", "--executor", "local", "--lake", "{lake}", "--ruleset", "nope"), 2, "neither a built-in"),
    (("rollback", "--lake", "{lake}", "r20260101T000000-00000000", "--reason", "x"), 2,
     "nothing to roll back"),
    (("import", "--lake", "/tmp/x", "/no/such.jsonl"), 2, "no such file"),
    (("run", "--ruleset"), 2, "expected one argument"),
    (("frobnicate",), 2, "invalid choice"),
    (("sql", "--lake", "/tmp/none", "SELECT 1"), 2, "no lake at /tmp/none"),
    (("status", "--lake", "/tmp/none"), 2, "no lake at /tmp/none"),
    (("history", "--lake", "/tmp/none", "--json"), 2, "no lake at /tmp/none"),
    (("run", "--lake", "/tmp/none", "--ruleset", "2026-01"), 2, "no lake at /tmp/none"),
    (("follow", "--executor", "local", "--address", "127.0.0.1:1"), 2, "--executor ray"),
    (("erase", "--lake", "{lake}", "--tenant", "a", "--tenant", "b", "--user", "u", "--reason", "r"), 2,
     "single --tenant"),
])
def test_errors_are_one_line_with_exit_codes(args, code, needle, tmp_path_factory):
    if "{lake}" in args:
        lake = tmp_path_factory.getbasetemp() / "errors-lake"
        if not lake.exists():
            run("import", "--lake", str(lake), "--format", "bronze-parquet",
                str(FIXTURE / "bronze.parquet"), check_rc=0)
        args = tuple(str(lake) if a == "{lake}" else a for a in args)
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


def test_experiment_diff_and_report_commands(tmp_path):
    lk = str(tmp_path / "lake")
    run("import", "--lake", lk, "--format", "bronze-parquet", str(FIXTURE / "bronze.parquet"), check_rc=0)
    run("run", "--executor", "local", "--lake", lk, "--ruleset", "2026-01", "--reason", "a", check_rc=0)
    report = tmp_path / "exp.html"
    out = json.loads(run("experiment", "--lake", lk, "--candidate", "2026-02", "--executor", "local",
                         "--report", str(report), "--json", check_rc=0).stdout)
    assert out["row_diffs"]["silver_api_usage"]["only_before"] == 2 and report.exists()
    assert {p["plan"] for p in out["plans"]} >= {"free", "starter"}
    listed = json.loads(run("experiment", "--lake", lk, "--list", "--json", check_rc=0).stdout)
    assert [e["name"] for e in listed] == [out["name"]]
    res = json.loads(run("run", "--executor", "local", "--lake", lk, "--ruleset", "2026-02",
                         "--reason", "promote", "--json", check_rc=0).stdout)
    rid = res["replay_id"]
    assert res["plan"]["reuse"] == out["name"]
    d = json.loads(run("diff", "--lake", lk, "--table", "silver_duplicates", "--from", f"{rid}:before",
                       "--to", rid, "--json", check_rc=0).stdout)
    assert d["counts"]["after"] == 3
    s = run("diff", "--lake", lk, "--summary", "--from", f"{rid}:before", check_rc=0).stdout
    assert "over_limit -> compliant" in s
    page = tmp_path / "r.html"
    run("report", "--lake", lk, "--from", f"{rid}:before", "--to", rid, "--out", str(page), check_rc=0)
    assert "<svg" in page.read_text()
    assert run("experiment", "--lake", lk, "--drop", out["name"], check_rc=0).returncode == 0
    bad = run("diff", "--lake", lk, "--from", "1")
    assert bad.returncode == 2 and "--table" in bad.stderr


def test_plan_and_a_refused_run_start_nothing(tmp_path):
    """`replay plan` (default executor: auto) and a `run` refused for want of --reason
    never start Ray: a plan runs nothing."""
    lk = str(tmp_path / "lake")
    run("import", "--lake", lk, "--format", "bronze-parquet", str(FIXTURE / "bronze.parquet"), check_rc=0)
    code = ("import sys; from replay.cli import main\n"
            f"assert main(['plan', '--lake', {lk!r}, '--ruleset', '2026-01']) == 0\n"
            f"assert main(['run', '--lake', {lk!r}, '--ruleset', '2026-01']) == 2\n"
            "print('RAY', 'ray' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "on the ray executor" in p.stdout  # the plan names where it would run
    assert p.stdout.strip().splitlines()[-1] == "RAY False"
    assert "--reason is required" in p.stderr


def test_import_after_an_erasure_says_what_it_dropped(tmp_path):
    lk = str(tmp_path / "lake")
    src = str(FIXTURE / "bronze.parquet")
    run("import", "--lake", lk, "--format", "bronze-parquet", src, check_rc=0)
    run("run", "--executor", "local", "--lake", lk, "--ruleset", "2026-01", "--reason", "a", check_rc=0)
    run("erase", "--executor", "local", "--lake", lk, "--tenant", "acme", "--reason", "gdpr", check_rc=0)
    again = run("import", "--lake", lk, "--format", "bronze-parquet", src, check_rc=0)
    erased = int(next(ln for ln in again.stdout.splitlines() if ln.startswith("rows_erased:")).split()[1])
    assert erased > 0 and f"{erased:,} rows belong to erased subjects" in again.stderr
