"""Every command line of the README runs as typed (tests/readme.py: options in ``[...]``
dropped, placeholders filled): the walk-through of "Using it" here, in a fresh clone of the
repository as a user would have it; the blocks that need a server where that server is
started (see ``CLAIMED``), and a test that fails when a block is claimed by none."""

from __future__ import annotations

import json

import pytest

from replay import api
from tests.lakes import ROOT
from tests.readme import Shell, blocks, fill, without_options

#: Each README section with a ```sh block, and the test that runs its lines as typed.
CLAIMED = {
    "Quickstart (fresh machine, Python 3.11)":
        "tests/integration/test_readme_commands.py::test_make_demo (`make test` is CI itself)",
    "Using it": "tests/integration/test_readme_commands.py::test_using_it_walkthrough",
    "The live pipeline: incremental steps and `replay follow`":
        "tests/kafka/test_readme_kafka.py",
    "Kafka → Bronze, exactly once": "tests/kafka/test_readme_kafka.py",
    "A lake on an S3-compatible server": "tests/s3/test_readme_s3.py",
    "On Ray": "tests/ray/test_job_submit.py (the local block); the cluster.yaml block needs "
              "an AWS account: tests/unit/test_cluster_yaml.py runs its shell lines",
}

pytestmark = pytest.mark.slow


def test_every_block_is_claimed_by_a_test():
    sections = {b.section for b in blocks()}
    assert sections - set(CLAIMED) == set(), "a README block no test runs"
    assert set(CLAIMED) - sections == set(), "CLAIMED names a section the README lost"
    for where in CLAIMED.values():
        assert (ROOT / where.split("::")[0].split(" ")[0]).exists(), where


def _block(section: str) -> list[str]:
    (b,) = [b for b in blocks() if b.section == section]
    return [without_options(line) for line in b.lines]


def test_using_it_walkthrough(clone):
    sh = Shell(clone)
    values: dict[str, str] = {"T": "tenant-00007", "R": '"gdpr request 42"'}
    lake = clone / "lake"

    def bronze_folded() -> bool:
        f = api.freshness(lake)
        return f.get("lag_rows") == 0

    for line in _block("Using it"):
        if "REPLAY_ID" in line and "REPLAY_ID" not in values:
            fix = [r for r in api.history(lake) if r["reason"] == "dedup fix"]
            values["REPLAY_ID"] = fix[-1]["reprocessing_id"]
        r = sh.run(fill(line, values), until=bronze_folded if "follow" in line else None)
        assert r.returncode == 0, (r.line, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.line
    out = {r.line.split()[1]: r for r in sh.ran}
    assert "rows_added: " in out["import"].stdout
    assert "mode: full" in out["plan"].stdout and "on the ray executor" in out["plan"].stdout
    hist = api.history(lake)
    kinds = [(h["kind"], h["status"]) for h in hist]
    assert ("rollback", "success") in kinds and ("erasure", "success") in kinds
    assert ("archive", "success") in kinds and ("vacuum", "success") in kinds
    assert not [h for h in hist if h["status"] == "running"]
    assert (clone / "report.html").exists() and (clone / "exp.html").exists()
    assert "<svg" in (clone / "report.html").read_text()
    assert "tenant-00001" in out["sql"].stdout
    assert "follower" in out["follow"].stdout and "stopped" in out["follow"].stdout
    gone = api.sql(lake, "SELECT count(*) AS n FROM silver_api_usage WHERE tenant_id = $t",
                   {"t": "tenant-00007"}).to_pylist()
    assert gone == [{"n": 0}]
    assert json.loads(sh.run("replay status --lake ./lake --json").stdout)["freshness"]


def test_make_demo():
    """`make demo` as typed, in the repository (it writes ./lake there, as for a user)."""
    (line, _test) = _block("Quickstart (fresh machine, Python 3.11)")
    assert (line, _test) == ("make demo", "make test")
    sh = Shell(ROOT)
    r = sh.run(line, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "5. what changed, per plan" in r.stdout and "mode incremental" in r.stdout
    free = [ln for ln in r.stdout.splitlines() if ln.startswith("free ")]
    before, after = (int(x) for x in free[0].split()[1:3])
    assert after < before  # free 60 -> 100/min: fewer over-limit minutes
