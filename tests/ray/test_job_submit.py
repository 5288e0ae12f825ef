"""The README's "On Ray" block as typed: token auth on, `ray start --head`, then
`ray job submit --working-dir . -- replay run ...` from a clone, and `ray stop`."""

from __future__ import annotations

import subprocess

import pytest

from replay import api
from tests.lakes import FIXTURE, ROOT
from tests.readme import Shell, blocks, without_options

pytestmark = pytest.mark.ray


@pytest.mark.slow
def test_readme_job_submit_runs_a_replay(tmp_path):
    clone = tmp_path / "medallion-replay"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to(ROOT / ".venv")  # the user's `make venv`
    api.import_file(clone / "lake", FIXTURE / "bronze.parquet", "bronze-parquet")  # `make demo`'s lake
    (block, *_) = [b for b in blocks() if b.section == "On Ray"]
    lines = [without_options(line) for line in block.lines]
    assert lines[0] == ". .venv/bin/activate" and lines[-1] == "ray stop"
    home = tmp_path / "home"  # the token goes to ~/.ray: this test's own home
    home.mkdir()
    sh = Shell(clone, {"HOME": str(home)})
    try:
        for line in lines[:-1]:
            r = sh.run(line, timeout=300)
            assert r.returncode == 0, (r.line, r.stdout[-3000:], r.stderr[-3000:])
        # a client without the token is refused by the Jobs API
        anon = sh.run("RAY_AUTH_MODE=disabled ray job list --address http://127.0.0.1:8265",
                      timeout=120)
        assert anon.returncode != 0
    finally:
        stop = sh.run(lines[-1], timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
    assert (home / ".ray" / "auth_token").exists()
    submit = sh.ran[-3]  # the job's output ends with the replay's own lines
    assert "conservation |bronze| = |silver| + |quarantine| + |duplicates|: ok" in submit.stdout
    (row,) = api.history(clone / "lake")
    assert row["status"] == "success" and row["reason"] == "dedup fix"
    assert api.status(clone / "lake")[1]["rows"] == 3839  # silver under 2026-02
