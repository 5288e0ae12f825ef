"""Kafka -> Bronze on an s3:// lake (SeaweedFS) against the real broker, exactly once.

The S3 fixtures come from tests/s3/conftest.py (imported: a conftest's fixtures are visible
only under its own directory). The options reach the ingester only through --storage-option
or MEDALLION_STORAGE_OPTIONS; no AWS_* variable is in any environment here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from engine.contract import schemas
from replay import api
from tests.kafka.conftest import ingest_cli, produce_values
from tests.lakes import FIXTURE, ROOT
from tests.s3.conftest import s3, s3_lake_uri  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


@pytest.mark.slow
def test_ingest_into_an_s3_lake_exactly_once_then_replay(s3, s3_lake_uri, broker, topic,  # noqa: F811
                                                        monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)  # the ingester subprocess inherits this environment
    monkeypatch.delenv("MEDALLION_STORAGE_OPTIONS", raising=False)
    opts = s3.storage_options()
    flags = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]

    fixture = pq.read_table(FIXTURE / "bronze.parquet")
    payloads = fixture.column("raw_payload").to_pylist()
    keys = [t or "-" for t in fixture.column("tenant_id").to_pylist()]
    assert produce_values(broker, topic, payloads, keys) == len(payloads) == 3849

    p = ingest_cli(s3_lake_uri, broker, topic, "--until-idle", "3", "--max-batch-messages", "1000",
                   *flags)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["messages"] == 3849 and out["batches"] >= 4 and out["dropped_batches"] == 0

    lake = api.open_lake(s3_lake_uri, opts)
    bronze = lake.read(schemas.BRONZE)
    assert bronze.num_rows == 3849
    where = list(zip(bronze.column("kafka_partition").to_pylist(),
                     bronze.column("kafka_offset").to_pylist(), strict=True))
    assert len(set(where)) == len(where), "a (partition, offset) landed twice"
    assert Counter(bronze.column("raw_payload").to_pylist()) == Counter(payloads)
    assert set(bronze.column("kafka_topic").to_pylist()) == {topic}

    # the offsets live in the Delta log on S3: another run, another group, adds nothing
    monkeypatch.setenv("MEDALLION_STORAGE_OPTIONS", json.dumps(opts))
    again = ingest_cli(s3_lake_uri, broker, topic, "--until-idle", "2", group="other")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["messages"] == 0
    assert lake.read(schemas.BRONZE, columns=["kafka_offset"]).num_rows == 3849

    # new messages after that: only they are added
    assert produce_values(broker, topic, payloads[:10], keys[:10]) == 10
    more = ingest_cli(s3_lake_uri, broker, topic, "--until-idle", "2")
    assert json.loads(more.stdout)["messages"] == 10, more.stderr

    run = subprocess.run([sys.executable, "-m", "replay", "run", "--lake", s3_lake_uri, "--ruleset",
                          "2026-02", "--executor", "local", "--reason", "kafka on s3", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    c = res["counts"]
    assert res["conservation_ok"] is True and all(ch["passed"] for ch in res["checks"])
    assert c[schemas.BRONZE] == 3859
    # as imported, the fixture gives 3839 / 7 / 3; ingested now, its future_timestamp event
    # (1 hour past its 2026-03-02 ingestion) is no longer in the future: valid, in Silver
    assert c[schemas.SILVER] == 3839 + 1 and c[schemas.QUARANTINE] == 7 - 1
    assert c[schemas.DUPLICATES] == 3 + 10  # the re-sent messages are copies of seen events
    reasons = api.sql(lake, "SELECT reason FROM silver_quarantine").column("reason").to_pylist()
    assert "future_timestamp" not in reasons and len(reasons) == 6
