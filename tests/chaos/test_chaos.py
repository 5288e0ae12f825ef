"""Writers together under SIGKILL (issue 22): seeded schedules of real processes against one
lake, then the invariants (tests/chaos/runner.py). `make test` runs one short schedule on a
local lake and `make test-slow` another; `make chaos SEEDS=N [LAKES=local,s3]` runs many, on
local and S3 lakes."""

from __future__ import annotations

import os

import pytest

from tests.chaos.runner import Chaos

pytestmark = [pytest.mark.chaos, pytest.mark.kafka]

SEEDS = int(os.environ.get("MEDALLION_CHAOS_SEEDS", "2"))
FIRST = int(os.environ.get("MEDALLION_CHAOS_FIRST_SEED", "1"))
LAKES = os.environ.get("MEDALLION_CHAOS_LAKES", "local").split(",")


@pytest.mark.parametrize("kind", LAKES)
@pytest.mark.parametrize("seed", [  # `make test` runs the first; `make test-slow` the others
    pytest.param(s, marks=[pytest.mark.slow] if s != FIRST else []) for s in range(FIRST, FIRST + SEEDS)])
def test_schedule(seed, kind, broker, topic, tmp_path, request):
    if kind == "s3":
        s3 = request.getfixturevalue("s3")
        lake, storage = s3.uri(f"chaos-{seed}-{os.getpid()}-{tmp_path.name}"), s3.storage_options()
    else:
        lake, storage = str(tmp_path / "lake"), None
    chaos = Chaos(seed, tmp_path, broker.bootstrap, topic, lake, storage)
    chaos.run()
    chaos.check(tmp_path)
