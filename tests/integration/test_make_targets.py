"""The Makefile's targets as a user types them (the others run elsewhere: `demo` in
test_readme_commands.py, `kafka-up/down` and `s3-up/down` in tests/kafka and tests/s3, the
chaos schedules in tests/chaos, `test` is CI itself)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.lakes import FIXTURE, ROOT
from tests.servers import make

CLAIMED = {
    "venv": "every target below depends on it", "test": "CI (.ci/run) runs it",
    "test-slow": "CI (.ci/run) runs it",
    "demo": "tests/integration/test_readme_commands.py::test_make_demo",
    "kafka-up": "tests/kafka/test_make_kafka.py", "kafka-down": "tests/kafka/test_make_kafka.py",
    "s3-up": "tests/s3/test_make_s3.py", "s3-down": "tests/s3/test_make_s3.py",
    "chaos": "test_make_chaos_dry_run (the schedules: tests/chaos)",
    "lint": "test_make_lint", "clean": "test_make_clean", "browser": "test_make_browser",
    "fixture-refresh": "test_make_fixture_refresh", "bench": "test_make_bench_short",
}


def test_every_target_is_claimed():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
    assert targets == set(CLAIMED), targets ^ set(CLAIMED)


def test_make_lint():
    r = make("lint")
    assert r.returncode == 0 and "All checks passed" in r.stdout, r.stdout + r.stderr


def test_make_browser():
    r = make("browser")  # installs Debian's chromium once; then a no-op
    assert r.returncode == 0 and shutil.which("chromium"), r.stderr


def test_make_chaos_dry_run():
    r = make("-n", "chaos", "SEEDS=3", "FIRST=7", "LAKES=local")
    assert r.returncode == 0
    assert "MEDALLION_CHAOS_SEEDS=3 MEDALLION_CHAOS_FIRST_SEED=7 MEDALLION_CHAOS_LAKES=local" in r.stdout


def test_make_clean(clone):
    for d in ("lake", ".pytest_cache"):
        (clone / d).mkdir()
    r = subprocess.run(["make", "clean"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (clone / "lake").exists(), r.stderr


def test_make_fixture_refresh(clone, tmp_path):
    """The documented refresh reproduces the committed copy from an upstream shared folder."""
    shared = tmp_path / "shared" / "fixtures"
    shutil.copytree(FIXTURE, shared / "basic")
    r = subprocess.run(["make", "fixture-refresh", f"SHARED={tmp_path / 'shared'}"], cwd=clone,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert st.stdout == ""  # byte for byte what is committed
    bad = subprocess.run(["make", "fixture-refresh", "SHARED=/nonexistent"], cwd=clone,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage: make fixture-refresh" in bad.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_make_bench_short():
    r = make("bench", "BENCH_ARGS=--events 20000 --tenants 20 --days 0.2 --memory-events 0 "
             "--validate-events 2000 --kafka-messages 0", timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for line in ("duckdb script (baseline)", "engine Gold equals the baseline's: True",
                 "full replay (local, API)", "gold-only (local, API)"):
        assert line in r.stdout, line
