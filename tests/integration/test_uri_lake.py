"""A lake addressed by URI (file://) goes through the object-store code paths (URIs, delta-rs's
filesystem); its lease is the file lease of its directory, the one every spelling of it takes."""

from __future__ import annotations

import pytest

from engine.lake.lease import Lease, LeaseHeldError, lease_for
from replay import api
from tests.integration.test_lease import plant_expired
from tests.lakes import FIXTURE


@pytest.fixture
def uri_lake(tmp_path):
    lk = api.open_lake(f"file://{tmp_path}/lake")
    api.import_file(lk, FIXTURE / "bronze.parquet", "bronze-parquet")
    return lk


def test_replay_and_rollback_on_a_uri_lake(uri_lake):
    a = api.run(uri_lake, "2026-01", reason="a")
    b = api.run(uri_lake, "2026-02", reason="b")
    assert a.conservation_ok and b.conservation_ok
    assert api.sql(uri_lake, "SELECT count(*) AS n FROM silver_api_usage").column("n")[0].as_py() == 3839
    api.rollback(uri_lake, b.plan.replay_id, reason="undo")
    assert api.sql(uri_lake, "SELECT count(*) AS n FROM silver_api_usage").column("n")[0].as_py() == 3841
    assert api.plan(uri_lake, "2026-01").up_to_date


def test_the_lease_refuses_a_second_replay_whatever_the_spelling(uri_lake):
    holder = lease_for(uri_lake, "r-holder")
    assert isinstance(holder, Lease)
    plain = api.open_lake(uri_lake.storage.local_path())
    with holder:
        for lake in (uri_lake, plain):
            with pytest.raises(LeaseHeldError, match="r-holder is running"):
                api.run(lake, "2026-01", reason="second")
    assert holder.read() is None  # released
    api.run(uri_lake, "2026-01", reason="now free")


def test_expired_lease_is_taken_over(uri_lake):
    plant_expired(uri_lake)
    api.run(uri_lake, "2026-01", reason="takes over")


def test_tasks_stage_files_through_the_object_store_filesystem(uri_lake, monkeypatch, tmp_path):
    """delta-rs's own filesystem (what s3:// uses) writes, lists and sweeps the staged files."""
    import engine.lake.storage
    from engine.contract import schemas
    from engine.execution.local import LocalExecutor

    monkeypatch.setattr(engine.lake.storage, "LOCAL_SHORTCUT", False)
    res = api.run(uri_lake, "2026-02", reason="via delta-rs fs", executor=LocalExecutor(2), shards=3)
    assert res.conservation_ok
    rid = res.plan.replay_id
    orphan = uri_lake.stage(schemas.SILVER, uri_lake.read(schemas.SILVER), f"{rid}-retried")
    assert orphan.files and uri_lake.sweep(schemas.SILVER, rid) == len(orphan.files)
    assert api.sql(uri_lake, "SELECT count(*) AS n FROM silver_api_usage").column("n")[0].as_py() == 3839
    assert all(p.split("/")[-1].startswith(f"part-mr-{rid}-") for p in uri_lake.files(schemas.SILVER))
