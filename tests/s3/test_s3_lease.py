"""The Delta lease on a real S3-compatible store (SeaweedFS): processes racing for it, a
stalled owner losing it (the scenarios of tests/integration/test_lease.py)."""

from __future__ import annotations

import pytest

from engine.lake.lease import DeltaLease, lease_for
from replay import api
from tests.integration.test_lease import RACERS, race_rounds, stalled_owner_loses

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_lake(s3, s3_lake_uri):
    return api.open_lake(s3_lake_uri, s3.storage_options())


def test_exactly_one_of_racing_processes_takes_the_lease_on_s3(s3_lake):
    assert isinstance(lease_for(s3_lake, "probe"), DeltaLease)
    losses = race_rounds(s3_lake)
    # every racer read the same version: the losers lost the conditional commit itself
    assert all(len(lost) == RACERS - 1 for lost in losses)
    assert all("at the same time" in m for lost in losses for m in lost), losses


@pytest.mark.parametrize("mode", ["beat", "check"])
def test_a_stalled_owner_loses_to_the_new_owner_on_s3(s3_lake, mode):
    stalled_owner_loses(s3_lake, mode)
