"""`--json` everywhere: each command's stdout is exactly one JSON document (`follow` and
`ingest`, which stream: one JSON object per line), on a small lake; text goes to stderr."""

from __future__ import annotations

import json

import pytest

from replay.cli import main
from replay.commands import COMMANDS
from tests.lakes import FIXTURE

#: Commands whose --json is checked elsewhere, against the server they need.
ELSEWHERE = {"ingest": "tests/kafka/test_ingest.py (ingest_cli parses its --json)"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lk = str(tmp_path_factory.mktemp("json") / "lake")
    assert main(["import", "--lake", lk, "--format", "bronze-parquet", str(FIXTURE / "bronze.parquet"),
                 "--json"]) == 0
    return lk


def _json(capsys, *argv, lines=False):
    capsys.readouterr()
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    if lines:
        return [json.loads(line) for line in out.splitlines()]
    return json.loads(out)  # the whole of stdout is one document


def test_every_command_speaks_json(lake, capsys, tmp_path):
    seen = set()

    def j(cmd, *rest, **kw):
        seen.add(cmd)
        return _json(capsys, cmd, *rest, **kw)

    L = ("--lake", lake)
    assert j("plan", *L, "--ruleset", "2026-01", "--executor", "local")["mode"] == "full"
    r1 = j("run", *L, "--ruleset", "2026-01", "--reason", "t", "--executor", "local")
    assert r1["conservation_ok"]
    r2 = j("run", *L, "--ruleset", "2026-02", "--reason", "t", "--executor", "local")
    rid = r2["replay_id"]
    assert j("history", *L)[-1]["reprocessing_id"] == rid
    assert j("status", *L)["freshness"]["lag_rows"] == 0
    assert j("sql", *L, "SELECT count(*) AS n FROM silver_api_usage")[0]["n"] == 3839
    assert j("diff", *L, "--table", "silver_duplicates", "--from", f"{rid}:before")["table"]
    assert "plans" in j("diff", *L, "--summary", "--from", f"{rid}:before")
    rep = j("report", *L, "--from", f"{rid}:before", "--to", rid, "--out", str(tmp_path / "r.html"))
    assert rep["report"] == str(tmp_path / "r.html")
    exp = j("experiment", *L, "--candidate", "free-100", "--executor", "local")
    assert j("experiment", *L, "--list")[0]["name"] == exp["name"]
    assert j("experiment", *L, "--drop", exp["name"]) == {"dropped": exp["name"]}
    assert j("rollback", *L, rid, "--reason", "t")["replay_id"] == rid
    assert j("recover", *L) == []
    steps = j("follow", *L, "--until-idle", "0", "--executor", "local", lines=True)
    assert steps[-1]["event"] == "summary" and steps[-1]["bronze_version"] is not None
    assert j("erase", *L, "--tenant", "acme", "--reason", "t", "--dry-run")["dry_run"] is True
    assert j("optimize", *L, "--dry-run")["dry_run"] is True
    assert j("vacuum", *L, "--dry-run")["dry_run"] is True
    assert j("archive", *L, "--before", "2000-01-01", "--to", str(tmp_path / "cold"),
             "--dry-run")["dry_run"] is True
    assert j("rules")["rulesets"]
    g = j("generate", "--events", "100", "--tenants", "2", "--out", str(tmp_path / "g.jsonl"))
    assert g["rows"] >= 100
    assert j("import", *L, str(tmp_path / "g.jsonl"))["rows_added"] >= 100
    assert seen | set(ELSEWHERE) == set(COMMANDS), set(COMMANDS) - seen - set(ELSEWHERE)
