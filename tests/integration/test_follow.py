"""``replay follow``: a live follower keeps Gold exact while Bronze grows, survives SIGKILL,
stops cleanly on SIGTERM, and lets rule-change replays and rollbacks through."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import pyarrow as pa
import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from tests.integration.test_incremental import assert_equals_full
from tests.lakes import ROOT


@pytest.fixture(scope="module")
def history():
    return generate(GeneratorConfig(events=6000, tenants=8, seed=11, days=0.3, dup_rate=0.1,
                                    late_rate=0.05, plan_change_rate=0.2))


def batches(b: pa.Table, n: int) -> list[pa.Table]:
    step = -(-b.num_rows // n)
    return [b.slice(i, step) for i in range(0, b.num_rows, step)]


def follower(lake, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "replay", "follow", "--lake", lake.root, "--interval", "0.2", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MEDALLION_LEASE_WAIT": "60", **(env or {})})


def wait_for(pred, timeout=60.0, every=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return False


def caught_up(lake) -> bool:
    f = api.freshness(lake)
    return (f["lag_rows"] == 0 and f["silver_bronze_version"] == f["bronze_version"]
            and f["gold_bronze_version"] == f["bronze_version"]
            and all(r["status"] != "running" for r in api.history(lake) if r["kind"] != "follow"))


def bronze(lake) -> pa.Table:
    return lake.read(schemas.BRONZE)


def test_follow_folds_appends_as_they_land_and_reports_freshness(tmp_path, history):
    parts = batches(history, 4)
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    proc = follower(lake, "--until-idle", "4", "--metrics-port", "0")
    try:
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        for p in parts[1:]:
            append_new(lake, p, "t", {"source": "test"})
            assert wait_for(lambda: caught_up(lake), 60), api.freshness(lake)
            assert_equals_full(lake, bronze(lake), "2026-01")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.count("(incremental, 2026-01): folded") == 3, out
    (session,) = [r for r in api.history(lake) if r["kind"] == "follow"]
    assert session["status"] == "success" and "3 steps" in session["details"]
    assert [r["kind"] for r in api.history(lake)] == ["replay", "follow"]  # steps folded into it
    assert api.freshness(lake)["follower"] is None


def test_follow_serves_prometheus_metrics(tmp_path, history):
    lake = api.open_lake(tmp_path / "lake")
    parts = batches(history, 2)
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    port = 20000 + random.randrange(5000)
    proc = follower(lake, "--metrics-port", str(port), "--until-idle", "3")
    try:
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        append_new(lake, parts[1], "t", {"source": "test"})
        assert wait_for(lambda: caught_up(lake), 60)

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert wait_for(lambda: "medallion_follow_steps_total 1.0" in scrape(), 30)
        text = scrape()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("medallion_") and " " in line}
    assert values["medallion_follow_rows_folded_total"] == parts[1].num_rows
    assert values["medallion_follow_steps_total"] == 1
    assert values["medallion_follow_lag_rows"] == 0
    assert values["medallion_follow_last_success_timestamp_seconds"] > time.time() - 120
    assert values["medallion_follow_step_seconds_count"] == 1


def test_sigterm_finishes_the_step_and_exits_zero(tmp_path, history):
    lake = api.open_lake(tmp_path / "lake")
    parts = batches(history, 2)
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-02")
    proc = follower(lake)
    try:
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        append_new(lake, parts[1], "t", {"source": "test"})
        time.sleep(0.3)  # most likely inside the step
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = api.history(lake)
    assert all(r["status"] != "running" for r in rows)
    assert [r["status"] for r in rows if r["kind"] == "follow"] == ["success"]
    if not caught_up(lake):  # stopped before the step began: the next follower folds it
        api.run(lake, "2026-02")
    assert_equals_full(lake, bronze(lake), "2026-02")


@pytest.mark.slow
def test_sigkill_at_any_point_then_restart_converges(tmp_path, history):
    """Kill -9 the follower at random moments (mid-step included), several times; a restarted
    follower settles what the dead one left and ends exact."""
    rnd = random.Random(5)
    lake = api.open_lake(tmp_path / "lake")
    parts = batches(history, 5)
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    for p in parts[1:]:
        proc = follower(lake)
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        append_new(lake, p, "t", {"source": "test"})
        time.sleep(rnd.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # a step killed after some commits leaves a ledger row running: the next start settles it
    proc = follower(lake, "--until-idle", "3")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert caught_up(lake)
    assert all(r["status"] != "running" for r in api.history(lake) if r["kind"] != "follow")
    assert_equals_full(lake, bronze(lake), "2026-01")


def test_a_step_dying_between_commits_is_settled_and_the_restart_is_exact(tmp_path, history):
    lake = api.open_lake(tmp_path / "lake")
    parts = batches(history, 2)
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    append_new(lake, parts[1], "t", {"source": "test"})
    proc = follower(lake, env={"MEDALLION_FAULT_AFTER_COMMITS": "3"})
    proc.communicate(timeout=120)
    assert proc.returncode == 99  # the driver died with 3 of the step's tables committed
    assert any(r["status"] == "running" for r in api.history(lake))
    proc = follower(lake, "--until-idle", "2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    kinds = [(r["kind"], r["status"]) for r in api.history(lake)]
    assert ("recovery", "success") in kinds and ("replay", "failed") in kinds
    assert_equals_full(lake, bronze(lake), "2026-01")


def test_rule_change_replay_and_rollback_while_following(tmp_path, history, monkeypatch):
    """A replay with a new ruleset and its rollback run while the follower runs and appends
    land: neither is refused; the follower continues with whichever ruleset is active."""
    monkeypatch.setenv("MEDALLION_LEASE_WAIT", "60")
    parts = batches(history, 5)
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    proc = follower(lake, "--until-idle", "8")
    try:
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        append_new(lake, parts[1], "t", {"source": "test"})
        res = api.run(lake, "2026-02", "full", reason="rules change")  # waits for a step at most
        assert res.plan.mode == "full"
        append_new(lake, parts[2], "t", {"source": "test"})
        assert wait_for(lambda: caught_up(lake), 60)
        assert_equals_full(lake, bronze(lake), "2026-02")
        api.rollback(lake, res.plan.replay_id, "back to 2026-01")
        append_new(lake, parts[3], "t", {"source": "test"})
        assert wait_for(lambda: caught_up(lake) and lake.commit_metadata(schemas.MINUTE).get(
            "ruleset_name") == "2026-01", 60)
        assert_equals_full(lake, bronze(lake), "2026-01")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "2026-02): folded" in out and "2026-01): folded" in out


def test_scoped_replay_from_a_time_while_following_is_the_checkpoint_reset(tmp_path, history,
                                                                          monkeypatch):
    """The seed's "stream replay by checkpoint reset" is `replay run --ruleset NEW --start T`
    while following: rows from T on take the new rules, older ones stay, and the follower goes
    on folding new rows with the new rules (incrementally: no full replay of the history)."""
    from datetime import timedelta

    import pyarrow.compute as pc

    from tests.integration.test_incremental import _sorted, full_fold

    monkeypatch.setenv("MEDALLION_LEASE_WAIT", "60")
    parts = batches(history, 3)
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    start = pc.min(parts[0].column("event_timestamp")).as_py() + timedelta(hours=2)
    proc = follower(lake, "--until-idle", "5")
    try:
        assert wait_for(lambda: api.freshness(lake)["follower"] is not None, 30)
        res = api.run(lake, "free-100", start=start, reason="from T")  # plan_limits@2: Gold only
        assert res.plan.mode == "gold" and res.plan.scope is not None
        append_new(lake, parts[1], "t", {"source": "test"})
        assert wait_for(lambda: caught_up(lake), 60)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "(incremental, free-100): folded" in out and "(full" not in out and "(gold" not in out
    assert lake.commit_metadata(schemas.MINUTE).get("mixed_with")  # still marked mixed
    data = bronze(lake)
    hour = pa.scalar(start.replace(minute=0, second=0, microsecond=0), schemas.TS)
    new_hours = {lake_hour for lake_hour in pc.unique(pc.floor_temporal(
        parts[1].column("event_timestamp").drop_null(), unit="hour")).to_pylist()}
    got = _sorted(lake.read(schemas.MINUTE), schemas.MINUTE)
    for ruleset, keep in (("free-100", lambda ws: ws >= hour.as_py()),
                          ("2026-01", lambda ws: ws < hour.as_py())):
        want = _sorted(full_fold(data, ruleset)[schemas.MINUTE], schemas.MINUTE)
        rows = [r for r in want.to_pylist() if keep(r["window_start"])
                and (ruleset == "free-100" or r["window_start"].replace(minute=0) not in new_hours)]
        mine = {(r["tenant_id"], r["window_start"]): r for r in got.to_pylist()}
        assert all(mine[(r["tenant_id"], r["window_start"])] == r for r in rows), ruleset


def test_follower_compaction_merges_step_files_and_steps_stay_exact(tmp_path, history):
    from engine.execution.local import LocalExecutor
    from engine.live.follow import FollowConfig, Follower

    parts = batches(history, 6)
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, parts[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    lines: list[str] = []
    f = Follower(lake, LocalExecutor(1), FollowConfig(compact_every=2), out=lines.append)
    for p in parts[1:5]:
        append_new(lake, p, "t", {"source": "test"})
        assert f.step() > 0
    before = {t: len(lake.files(t)) for t in (schemas.SILVER, schemas.MINUTE, schemas.DEDUP_STATE)}
    f.compact()
    after = {t: len(lake.files(t)) for t in before}
    assert all(after[t] < before[t] for t in before), (before, after)
    assert any(line.startswith("compacted") for line in lines)
    assert [r["kind"] for r in api.history(lake)][-1] == "optimize"
    append_new(lake, parts[5], "t", {"source": "test"})
    res = api.run(lake, "2026-01")
    assert res.plan.mode == "incremental"
    assert_equals_full(lake, bronze(lake), "2026-01")


def test_a_second_follower_is_refused_in_one_line(tmp_path, history):
    from engine.lake.lease import lease_for

    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, batches(history, 2)[0], "t", {"source": "test"})
    api.run(lake, "2026-01")
    holder = lease_for(lake, "f-other", name="follower").acquire()
    try:
        assert api.freshness(lake)["follower"]["session"] == "f-other"
        proc = follower(lake, "--until-idle", "1")
        out, err = proc.communicate(timeout=60)
    finally:
        holder.release()
    assert proc.returncode == 1 and "another follower is running" in err
    assert len(err.strip().splitlines()) == 1
    assert [r["kind"] for r in api.history(lake)] == ["replay"]  # no session was opened
