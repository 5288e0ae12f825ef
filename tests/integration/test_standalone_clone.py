"""The repository stands alone: a fresh `git clone`, with nothing beside it, passes the fixture
cross-check with its own code, its own fixture (tests/fixtures/basic) and its own contract
(docs/semantics.md). Nothing may reach outside the repository (no ../shared).

`git clone` sees committed files only: this checks what is committed, not the working tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.lakes import ROOT

#: What a clone must hold for the cross-check to stand alone (all committed).
REQUIRED = ("docs/semantics.md", "tests/fixtures/README.md", "tests/fixtures/basic/bronze.parquet",
            "tests/fixtures/basic/expected/2026-01", "tests/fixtures/basic/expected/2026-02")
CROSSCHECK = "tests/integration/test_fixture_crosscheck.py"


def _env() -> dict[str, str]:
    """The environment of the child processes: no path or git setting of ours leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") and k not in ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _under(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def test_a_fresh_clone_passes_the_crosscheck_alone(tmp_path):
    git = shutil.which("git")
    assert git is not None, "git is not installed: this test needs it (never skipped)"
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    clone = lonely / "repo"
    done = subprocess.run([git, "clone", "-q", str(ROOT), str(clone)], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in lonely.iterdir()] == ["repo"]  # nothing beside the clone

    missing = [p for p in REQUIRED if not (clone / p).exists()]
    assert not missing, f"not committed (git clone does not see them): {missing}"

    # The modules a child process imports in the clone are the clone's, not this checkout's
    # (the venv's editable install points at it) and not anything beside the clone.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import engine, rules, replay, tests.lakes as t; "
         "print(engine.__file__, rules.__file__, replay.__file__, t.__file__, t.ROOT, t.FIXTURE, "
         "sep='\\n')"],
        cwd=clone, capture_output=True, text=True, env=_env(), timeout=120)
    assert probe.returncode == 0, probe.stderr
    paths = probe.stdout.split("\n")[:6]
    assert len(paths) == 6, probe.stdout
    outside = [p for p in paths if not _under(p, clone)]
    assert not outside, f"imported or read from outside the clone {clone}: {outside}"
    assert Path(paths[5]).resolve() == (clone / "tests" / "fixtures" / "basic").resolve()

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", CROSSCHECK],
        cwd=clone, capture_output=True, text=True, env=_env(), timeout=280)
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), tail
    assert not re.search(r"failed|error|skipped|xfail|xpass|deselected", summary), tail
    assert [p.name for p in lonely.iterdir()] == ["repo"]  # and still nothing beside it
