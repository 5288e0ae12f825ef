"""The whole CLI, as subprocesses, on an s3:// lake served by SeaweedFS.

The storage options reach every process (the CLI's, a local Ray's workers) only through
MEDALLION_STORAGE_OPTIONS or --storage-option: no AWS_* variable is in any environment here
(neither the subprocesses' nor this process's). Each test shares one lake across its steps.
Fixture: 3849 Bronze rows; 2026-01 keeps 3841 in Silver, 2026-02 (dedup@2) 3839.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from engine.contract import schemas
from engine.execution.shuffle import AREA
from engine.lake.lease import DeltaLease, lease_for
from engine.lake.storage import Storage
from replay import api
from tests.lakes import FIXTURE, ROOT

pytestmark = pytest.mark.s3

BRONZE_PARQUET = FIXTURE / "bronze.parquet"
ROWS = 3849
SILVER_2026_01 = 3841
SILVER_2026_02 = 3839


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch):
    """No AWS_* variable (nor MEDALLION_STORAGE_OPTIONS) in this process or the subprocesses."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("MEDALLION_STORAGE_OPTIONS", raising=False)


class Cli:
    """``python -m replay`` against one lake; options from the environment or from flags."""

    def __init__(self, s3, lake: str):
        self.lake = lake
        self.opts = s3.storage_options()
        self.flags = [a for k, v in self.opts.items() for a in ("--storage-option", f"{k}={v}")]

    def env(self, with_options: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_") and k != "MEDALLION_STORAGE_OPTIONS"}
        if with_options:
            env["MEDALLION_STORAGE_OPTIONS"] = json.dumps(self.opts)
        env.update(extra)
        return env

    def __call__(self, cmd: str, *args: str, lake: bool = True, flags: bool = False,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``flags``: options as --storage-option only (none in the environment)."""
        argv = [sys.executable, "-m", "replay", cmd, *(["--lake", self.lake] if lake else []), *args,
                *(self.flags if flags else [])]
        return subprocess.run(argv, cwd=ROOT, env=env or self.env(with_options=not flags),
                              capture_output=True, text=True, timeout=300)

    def json(self, cmd: str, *args: str, **kw) -> object:
        p = self(cmd, *args, "--json", **kw)
        assert p.returncode == 0, f"replay {cmd}: exit {p.returncode}: {p.stderr}"
        return json.loads(p.stdout)

    def count(self, sql: str, **params: str) -> int:
        ps = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
        rows = self.json("sql", sql, *ps)
        assert len(rows) == 1
        return next(iter(rows[0].values()))

    def status(self) -> dict[str, dict]:
        return {r["table"]: r for r in self.json("status")["tables"]}

    def plan_work(self, ruleset: str) -> dict:
        d = self.json("plan", "--ruleset", ruleset, "--executor", "local")
        return {k: d[k] for k in ("mode", "reasons", "tables", "rows", "source_table", "up_to_date")}


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = p.stderr.strip()
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("replay: error: "), err
    for w in words:
        assert w in err, err
    return err


def conserved(run: dict) -> None:
    c = run["counts"]
    assert run["conservation_ok"] is True
    assert all(ch["passed"] for ch in run["checks"]), [ch for ch in run["checks"] if not ch["passed"]]
    assert c[schemas.BRONZE] == c[schemas.SILVER] + c[schemas.QUARANTINE] + c[schemas.DUPLICATES]


@pytest.fixture
def cli(s3, s3_lake_uri):
    c = Cli(s3, s3_lake_uri)
    out = c.json("import", "--format", "bronze-parquet", str(BRONZE_PARQUET))
    assert out["rows_added"] == ROWS and out["rows_skipped"] == 0
    return c


@pytest.mark.slow
def test_replay_diff_experiment_report_sql_rollback_recover_on_s3(cli, tmp_path):
    rules = cli.json("rules", lake=False)
    assert {"2026-01", "2026-02", "dedup-fix", "free-100"} <= set(rules["rulesets"])
    assert rules["rulesets"]["dedup-fix"]["rules"]["dedup"] == 2

    a = cli.json("run", "--ruleset", "2026-01", "--executor", "local", "--reason", "baseline")
    conserved(a)
    assert a["mode"] == "full" and a["counts"][schemas.SILVER] == SILVER_2026_01

    # experiment: scratch area on S3 under the lake, production untouched, an HTML report
    report = tmp_path / "exp.html"
    exp = cli.json("experiment", "--candidate", "dedup-fix", "--executor", "local",
                   "--report", str(report))
    assert exp["scratch"] == f"{cli.lake}/_experiments/{exp['name']}"
    assert exp["row_diffs"][schemas.SILVER] == {"before": SILVER_2026_01, "after": SILVER_2026_02,
                                               "only_before": 2, "only_after": 0, "changed": 0}
    assert exp["row_diffs"][schemas.DUPLICATES]["after"] == 3
    html = report.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and exp["name"] in html
    assert [e["name"] for e in cli.json("experiment", "--list")] == [exp["name"]]
    assert cli.status()[schemas.SILVER]["rows"] == SILVER_2026_01  # production unchanged

    b = cli.json("run", "--ruleset", "2026-02", "--executor", "local", "--reason", "dedup fix")
    conserved(b)
    assert b["mode"] == "full" and b["counts"][schemas.SILVER] == SILVER_2026_02
    rb = b["replay_id"]

    # diff: a row diff on the key and the entitlement summary, between Delta versions on S3
    d = cli.json("diff", "--table", schemas.SILVER, "--from", f"{rb}:before", "--to", rb)
    assert d["counts"] == {"before": SILVER_2026_01, "after": SILVER_2026_02, "only_before": 2,
                           "only_after": 0, "changed": 0}
    assert {r["event_id"] for r in d["samples"]["only_before"]} == {"pub-000486", "pub-000487"}
    s = cli.json("diff", "--summary", "--from", f"{rb}:before", "--to", rb)
    plans = {r["plan"]: r for r in s["plans"]}
    assert plans["free"]["overage_before"] > 0 == plans["free"]["overage_after"]
    assert s["flips"] == [{"flip": "over_limit -> compliant", "plan": "free", "tenants": 1}]
    p = cli("diff", "--from", f"{rb}:before")  # neither --table nor --summary
    one_line_error(p, 2, "--summary")

    out = tmp_path / "report.html"
    p = cli("report", "--from", f"{rb}:before", "--to", rb, "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"report: {out}"
    assert "<svg" in out.read_text() and rb in out.read_text()

    # sql: parameters and versions by name
    # (the two rows dedup@2 drops are globex's)
    assert cli.count("SELECT count(*) AS n FROM silver_api_usage WHERE tenant_id = $t", t="globex") == 4
    assert cli.count(f'SELECT count(*) FROM "silver_api_usage@{rb}:before" WHERE tenant_id = $t '
                     "AND subscription_plan = $p", t="globex", p="starter") == 6
    assert cli.count(f'SELECT count(*) AS n FROM "silver_api_usage@{rb}:before"') == SILVER_2026_01
    assert cli.count(f'SELECT count(*) AS n FROM "silver_api_usage@{rb}"') == SILVER_2026_02
    one_line_error(cli("sql", "SELECT * FROM no_such_table"), 2)

    # rollback: every table back, one audited operation; a second one is refused
    back = cli.json("rollback", rb, "--reason", "undo", flags=True)
    assert back["replay_id"] == rb and set(back["restored"]) == set(b["versions"])
    assert back["restored"] == a["versions"]
    st = cli.status()
    assert st[schemas.SILVER]["rows"] == SILVER_2026_01 and st[schemas.SILVER]["ruleset"] == "2026-01"
    assert st[schemas.BRONZE]["rows"] == ROWS
    one_line_error(cli("rollback", rb, "--reason", "again"), 2, "rolled_back")
    assert cli.plan_work("2026-01")["up_to_date"] is True

    # recover: a driver killed after 2 of 6 commits leaves a mix and its lease on S3
    p = cli("run", "--ruleset", "2026-02", "--executor", "local", "--reason", "killed",
            env=cli.env(MEDALLION_FAULT_AFTER_COMMITS="2"))
    assert p.returncode == 99, p.stderr
    mixed = {t: r.get("ruleset") for t, r in cli.status().items() if t in schemas.SILVER_TABLES}
    assert sorted(mixed.values()) == ["2026-01", "2026-02", "2026-02"]
    running = [r for r in cli.json("history") if r["status"] == "running"]
    assert len(running) == 1
    dead = running[0]["reprocessing_id"]
    # the dead driver's lease (a Delta table on S3) holds until its TTL: recover says so
    one_line_error(cli("recover"), 1, dead, "is running")
    lease = lease_for(api.open_lake(cli.lake, cli.opts), "test")
    assert isinstance(lease, DeltaLease)
    held = lease.read()
    assert held["owner"] == dead
    lease._write({**held, "heartbeat": time.time() - 3600})  # as if its TTL had passed
    assert cli.json("recover", flags=True) == [{"replay_id": dead, "outcome": "rolled back 2 of 6 tables"}]
    st = cli.status()
    assert {st[t]["ruleset"] for t in (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)} == {"2026-01"}
    assert st[schemas.SILVER]["rows"] == SILVER_2026_01
    p = cli("recover")
    assert p.returncode == 0 and p.stdout.strip() == "nothing to recover", p.stderr

    ledger = cli.json("history")
    assert [(r["kind"], r["status"]) for r in ledger] == [
        ("replay", "success"), ("replay", "rolled_back"), ("rollback", "success"),
        ("replay", "failed"), ("recovery", "success")]
    assert ledger[2]["target_id"] == rb and ledger[4]["target_id"] == dead
    p = cli("history")  # the text table
    assert p.returncode == 0 and rb in p.stdout and "rolled_back" in p.stdout

    # status, rules (text) and a plan work with the options as flags and no environment
    assert cli.json("status", flags=True)["tables"][0]["rows"] == ROWS
    p = cli("rules", lake=False)
    assert p.returncode == 0 and f"fingerprint {rules['rulesets']['2026-01']['fingerprint']}" in p.stdout
    assert cli.plan_work("2026-02")["mode"] == "full"


@pytest.mark.slow
@pytest.mark.ray
def test_run_on_a_local_ray_with_options_as_flags_only(cli):
    """The Ray workers read Bronze and stage task files on S3 with the options the driver got
    as --storage-option (nothing in any environment), and give the local executor's rows."""
    ray_run = cli.json("run", "--ruleset", "2026-01", "--executor", "ray", "--reason", "on ray",
                       flags=True)
    conserved(ray_run)
    assert ray_run["plan"]["executor"] == "ray" and ray_run["plan"]["buckets"] > 1
    assert ray_run["counts"][schemas.SILVER] == SILVER_2026_01
    # the shuffle went through objects under the lake, all removed when the replay ended
    shuffle = Storage(cli.lake, tuple(sorted(cli.opts.items()))).child(AREA)
    fs, _ = shuffle.filesystem()
    left = fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
    assert shuffle.list_dirs() == [] and [i.path for i in left if i.type == pafs.FileType.File and i.path] == []
    assert cli.plan_work("2026-01")["up_to_date"] is True
    local = cli.json("run", "--ruleset", "2026-01", "--mode", "full", "--executor", "local",
                     "--reason", "reference")
    conserved(local)
    for t in (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES):
        d = cli.json("diff", "--table", t, "--from", ray_run["replay_id"], "--to", local["replay_id"])
        assert (d["counts"]["only_before"], d["counts"]["only_after"], d["counts"]["changed"]) == \
            (0, 0, 0), (t, d["counts"])
        assert d["counts"]["before"] == d["counts"]["after"] == ray_run["counts"][t]


def split_fixture(tmp_path, parts: int = 3) -> list[str]:
    t = pq.read_table(BRONZE_PARQUET)
    step = -(-t.num_rows // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"bronze-{i}.parquet"
        pq.write_table(t.slice(i * step, step), path)
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_erase_optimize_vacuum_on_s3(s3, s3_lake_uri, tmp_path):
    cli = Cli(s3, s3_lake_uri)
    for path in split_fixture(tmp_path):  # three imports: three small Bronze files
        assert cli.json("import", "--format", "bronze-parquet", path)["rows_skipped"] == 0
    a = cli.json("run", "--ruleset", "2026-01", "--executor", "local", "--reason", "a")
    conserved(a)
    assert a["counts"][schemas.SILVER] == SILVER_2026_01
    work = {rs: cli.plan_work(rs) for rs in ("2026-01", "2026-02", "free-100")}

    dry = {t["table"]: t for t in cli.json("optimize", "--dry-run")["tables"]}
    assert dry[schemas.BRONZE]["files"] == 3
    opt = cli.json("optimize", flags=True)
    assert opt[schemas.BRONZE]["files_before"] == 3 and opt[schemas.BRONZE]["files_after"] == 1
    assert opt[schemas.BRONZE]["zorder"] == ["tenant_id", "event_timestamp"]
    assert {rs: cli.plan_work(rs) for rs in work} == work  # neutral

    # erase the tenant globex: 7 Bronze rows (6 in Silver, 1 duplicate)
    dry = cli.json("erase", "--tenant", "globex", "--reason", "gdpr", "--dry-run")
    assert dry["dry_run"] is True and dry["rows"] == 7 and "globex" not in json.dumps(dry)
    assert cli.count("SELECT count(*) FROM bronze_api_usage") == ROWS  # nothing changed
    done = cli.json("erase", "--tenant", "globex", "--reason", "gdpr", "--executor", "local",
                    flags=True)
    assert done["rows_erased"] == 7 and "globex" not in json.dumps(done)
    # filtered reads of the files the erasure rewrote (a delta-rs rewrite stored strings as
    # Arrow views, which pyarrow's filters refused next to plain strings)
    tables = (schemas.BRONZE, schemas.SILVER, schemas.QUARANTINE, schemas.DUPLICATES, schemas.MINUTE)
    counts = ", ".join(f"(SELECT count(*) FROM {t}) AS {t}, (SELECT count(*) FROM {t} "
                       f"WHERE tenant_id = $t) AS {t}__t" for t in tables)
    n = cli.json("sql", f"SELECT {counts}", "--param", "t=globex")[0]
    assert {t: n[f"{t}__t"] for t in tables} == dict.fromkeys(tables, 0)
    assert n[schemas.BRONZE] == ROWS - 7 and n[schemas.SILVER] == SILVER_2026_01 - 6
    assert n[schemas.BRONZE] == n[schemas.SILVER] + n[schemas.QUARANTINE] + n[schemas.DUPLICATES]
    assert cli.plan_work("2026-01")["up_to_date"] is True
    one_line_error(cli("rollback", a["replay_id"], "--reason", "undo"), 2, "erasure",
                   done["erasure_id"])

    b = cli.json("run", "--ruleset", "2026-02", "--executor", "local", "--reason", "b")
    conserved(b)
    assert b["counts"][schemas.BRONZE] == ROWS - 7

    # vacuum --retain-hours 0: the dry run counts what the vacuum removes; then the versions
    # before it are gone and a rollback to them is refused in one line
    vdry = cli.json("vacuum", "--retain-hours", "0", "--dry-run")
    assert vdry["dry_run"] is True and vdry["files"] > 0
    vac = cli.json("vacuum", "--retain-hours", "0")
    assert vac["files_removed"] == vdry["files"], (vac["tables"], vdry["tables"])
    assert vac["readable_from"][schemas.SILVER] >= b["versions"][schemas.SILVER]
    one_line_error(cli("rollback", b["replay_id"], "--reason", "too late"), 2, "vacuum",
                   vac["operation_id"])
    one_line_error(cli("diff", "--table", schemas.SILVER, "--from", f"{b['replay_id']}:before"), 2,
                   "vacuum")
    assert cli.plan_work("2026-02")["up_to_date"] is True
    assert cli.count("SELECT count(*) FROM silver_api_usage") == b["counts"][schemas.SILVER]
    ledger = cli.json("history")
    assert [r["kind"] for r in ledger] == ["replay", "optimize", "erasure", "replay", "vacuum"]
    assert {r["status"] for r in ledger} == {"success"}


@pytest.mark.slow
def test_archive_to_another_s3_prefix(s3, s3_lake_uri):
    cli = Cli(s3, s3_lake_uri)
    cold = f"{s3_lake_uri}-cold"
    assert cli.json("import", "--format", "bronze-parquet", str(BRONZE_PARQUET))["rows_added"] == ROWS
    conserved(cli.json("run", "--ruleset", "2026-01", "--executor", "local", "--reason", "a"))
    work = {rs: cli.plan_work(rs) for rs in ("2026-01", "2026-02", "free-100")}
    assert work["2026-02"]["mode"] == "full" and work["free-100"]["mode"] == "gold"

    dry = cli.json("archive", "--before", "2026-03-03", "--to", cold, "--dry-run")
    assert dry == {"dry_run": True, "to": cold, "before": "2026-03-03", "previous_cutoff": None,
                   "dates": ["2026-03-02"], "rows": ROWS}
    out = cli.json("archive", "--before", "2026-03-03", "--to", cold, flags=True)
    assert out["archive"] == cold and out["rows_moved"] == ROWS and out["cutoff"] == "2026-03-03"
    st = cli.status()
    assert st["bronze (hot)"]["rows"] == 0 and st["bronze (hot)"]["location"] == cli.lake
    assert st["bronze (archive)"]["rows"] == ROWS and st["bronze (archive)"]["location"] == cold
    assert {rs: cli.plan_work(rs) for rs in work} == work  # the same work, read from the archive
    assert cli.count("SELECT count(*) FROM bronze_api_usage") == ROWS
    one_line_error(cli("archive", "--before", "2026-03-03", "--to", f"{s3_lake_uri}-other"), 2,
                   "--to must name it")

    full = cli.json("run", "--ruleset", "2026-01", "--mode", "full", "--executor", "local",
                    "--reason", "after archive")
    conserved(full)
    assert full["plan"]["rows"] == ROWS and full["counts"][schemas.BRONZE] == ROWS
    assert full["counts"][schemas.SILVER] == SILVER_2026_01
    again = cli.json("import", "--format", "bronze-parquet", str(BRONZE_PARQUET))
    assert again["rows_added"] == 0 and again["rows_skipped"] == ROWS  # archived rows count
    b = cli.json("run", "--ruleset", "2026-02", "--executor", "local", "--reason", "b")
    conserved(b)
    assert b["counts"][schemas.SILVER] == SILVER_2026_02
    archive_row = [r for r in cli.json("history") if r["kind"] == "archive"]
    assert len(archive_row) == 1 and archive_row[0]["status"] == "success"
    assert archive_row[0]["target_id"] == cold
