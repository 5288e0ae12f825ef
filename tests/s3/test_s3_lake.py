"""A lake on a real S3-compatible server, reached only through MEDALLION_STORAGE_OPTIONS /
--storage-option (never AWS_* environment variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from engine.contract import schemas
from engine.execution.shuffle import AREA, ShuffleArea, stale_areas
from engine.lake.storage import Storage
from replay import api
from tests.lakes import FIXTURE, ROOT

pytestmark = pytest.mark.s3


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS_* variable (the options must suffice)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    return env


@pytest.fixture
def no_aws_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replay", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_plan_and_run_on_an_s3_lake_list_experiments_with_the_lake_options(s3, s3_lake_uri, no_aws_env,
                                                                           monkeypatch):
    """Regression: the experiments listing built its own filesystem without the options and
    went to real AWS, so `replay plan` failed on any s3:// lake."""
    monkeypatch.setenv("MEDALLION_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    lk = api.open_lake(s3_lake_uri)  # the API reads the variable exactly like the CLI
    assert lk.storage_options == s3.storage_options()
    api.import_file(lk, FIXTURE / "bronze.parquet", "bronze-parquet")
    assert api.experiments(lk) == []
    p = api.plan(lk, "2026-01")
    assert p.mode == "full" and p.rows == 3849
    res = api.run(lk, "2026-01", reason="s3")
    assert res.conservation_ok and res.counts[schemas.SILVER] == 3841
    exp = api.Experiment(lk, "dedup-fix").run()
    assert [e["name"] for e in api.experiments(lk)] == [exp.name]
    assert exp.diff(schemas.SILVER).counts["only_before"] == 2
    api.drop(lk, exp.name)
    assert api.experiments(lk) == []


def test_cli_on_an_s3_lake_with_options_from_the_environment_or_flags(s3, s3_lake_uri):
    opts = s3.storage_options()
    env = clean_env(MEDALLION_STORAGE_OPTIONS=json.dumps(opts))
    p = cli("import", "--lake", s3_lake_uri, "--format", "bronze-parquet",
            str(FIXTURE / "bronze.parquet"), "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows_added"] == 3849
    p = cli("plan", "--lake", s3_lake_uri, "--ruleset", "2026-01", "--executor", "local", "--json",
            env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["mode"] == "full"
    flags = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]
    p = cli("run", "--lake", s3_lake_uri, "--ruleset", "2026-01", "--executor", "local",
            "--reason", "s3 flags", "--json", *flags, env=clean_env())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["conservation_ok"] is True
    p = cli("experiment", "--lake", s3_lake_uri, "--list", "--json", *flags, env=clean_env())
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr
    p = cli("status", "--lake", s3_lake_uri, "--json", *flags, env=clean_env())
    rows = {r["table"]: r for r in json.loads(p.stdout)["tables"]}
    assert rows[schemas.SILVER]["rows"] == 3841


def test_shuffle_pieces_on_the_object_store(s3, s3_lake_uri):
    """On an S3 lake a map task's buckets are objects under ``<lake>/_shuffle/<run>``
    (compressed, fetched whole), read back equal, and gone with the area."""
    opts = tuple(sorted(s3.storage_options().items()))
    area = ShuffleArea.create(s3_lake_uri, opts)
    assert area.root.startswith(f"{s3_lake_uri}/{AREA}/")
    t = pa.table({"tenant_id": pa.array([f"t{i % 5}" for i in range(100_000)]),
                  "n": pa.array([i % 10 for i in range(100_000)], pa.int64())})  # compressible
    pieces = area.write([t.slice(0, 60_000), t.slice(0, 0), t.slice(60_000)])
    assert pieces[1] is None and all(p.size < 0.5 * t.slice(0, p.rows).nbytes for p in (pieces[0], pieces[2]))
    back = area.read(pieces)
    assert len(back) == 2 and back[0].equals(t.slice(0, 60_000)) and back[1].equals(t.slice(60_000))
    lake = Storage(s3_lake_uri, opts)
    assert lake.child(AREA).list_dirs() == [area.root.rsplit("/", 1)[-1]]
    assert stale_areas(lake, 3600) == [] and [a.root for a in stale_areas(lake, -1)] == [area.root]
    area.delete()
    assert lake.child(AREA).list_dirs() == [] and not area.storage.exists()
