"""`ray job submit --working-dir . -- replay run ...` against a cluster from `ray start --head`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replay import api
from tests.lakes import FIXTURE, ROOT

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    tmp = tmp_path_factory.mktemp("rayhead")
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2",
                            "--dashboard-host", "127.0.0.1", "--disable-usage-stats",
                            "--temp-dir", str(tmp)], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    yield env
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_job_submit_runs_a_replay(head, tmp_path):
    lake = tmp_path / "lake"
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    p = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".",
         "--", "replay", "run", "--lake", str(lake), "--ruleset", "2026-02", "--reason", "job",
         "--address", "auto", "--json"],
        cwd=ROOT, env=head, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    body = p.stdout[p.stdout.index("{"): p.stdout.rindex("}") + 1]
    result = json.loads(body)
    assert result["conservation_ok"] and result["plan"]["executor"] == "ray"
    (row,) = api.history(lake)
    assert row["status"] == "success" and row["reason"] == "job"
    assert api.status(lake)[1]["rows"] == 3839  # silver under 2026-02
