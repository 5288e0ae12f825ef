"""Kafka -> Bronze against a real broker: exactly once through kills, restarts and rebalances."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest

from engine.contract import schemas
from engine.contract.errors import CommitConflictError
from engine.ingest.generator import GeneratorConfig, generate, to_jsonl
from engine.ingest.kafka import IngestConfig, Ingester, produce
from replay import api
from tests.kafka.conftest import ingest_cli, produce_values

pytestmark = pytest.mark.kafka


def bronze_payloads(lake):
    t = lake.read(schemas.BRONZE)
    keys = list(zip(t.column("kafka_partition").to_pylist(), t.column("kafka_offset").to_pylist(),
                    strict=True))
    assert len(keys) == len(set(keys)), "a (partition, offset) landed twice"
    return Counter(t.column("raw_payload").to_pylist())


def values(n, tag="m"):
    return [json.dumps({"event_id": f"{tag}{i}", "pad": "x" * 200}).encode() for i in range(n)]


def wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_round_trip_exactly_once(lake, broker, topic):
    vals = values(3000)
    produce_values(broker, topic, vals)
    p = ingest_cli(lake.root, broker, topic, "--until-idle", "3", "--max-batch-messages", "700")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["messages"] == 3000
    assert bronze_payloads(lake) == Counter(vals)
    t = lake.read(schemas.BRONZE)
    assert set(t.column("kafka_topic").to_pylist()) == {topic}
    assert t.column("kafka_key").null_count == 0 and t.column("kafka_timestamp").null_count == 0
    assert t.column("event_id").null_count == 0  # best-effort extraction
    # a second run, even in another consumer group, adds nothing: Delta holds the offsets
    again = ingest_cli(lake.root, broker, topic, "--until-idle", "2", group="other")
    assert json.loads(again.stdout)["messages"] == 0 and lake.read(schemas.BRONZE).num_rows == 3000


def test_poison_messages_land_byte_for_byte_and_are_quarantined(lake, broker, topic):
    poison = [b"\xff\xfe\x00 not utf8", b"x" * (1024 * 1024), b"", b'{"event_id": "n", "v": NaN}',
              b"[1, 2]", None]
    produce_values(broker, topic, poison, keys=["a"] * len(poison))
    p = ingest_cli(lake.root, broker, topic, "--until-idle", "3")
    assert p.returncode == 0, p.stderr
    got = lake.read(schemas.BRONZE).sort_by("kafka_offset").column("raw_payload").to_pylist()
    assert got == poison
    api.run(lake, "2026-01", reason="poison")
    reasons = set(lake.read(schemas.QUARANTINE).column("reason").to_pylist())
    assert reasons == {"malformed_json"} and lake.read(schemas.QUARANTINE).num_rows == len(poison)


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart(lake, broker, topic):
    vals = values(20000, "k")
    produce_values(broker, topic, vals)
    proc = ingest_cli(lake.root, broker, topic, "--until-idle", "30", "--max-batch-messages", "1000",
                      "--max-batch-seconds", "0.3", wait=False)
    assert wait_for(lambda: lake.exists(schemas.BRONZE) and lake.version(schemas.BRONZE) >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lake.read(schemas.BRONZE).num_rows < 20000  # it really died mid-stream
    p = ingest_cli(lake.root, broker, topic, "--until-idle", "3")
    assert p.returncode == 0, p.stderr
    assert bronze_payloads(lake) == Counter(vals)


@pytest.mark.slow
def test_broker_restart_mid_stream(lake, broker, topic):
    first, second = values(4000, "a"), values(4000, "b")
    produce_values(broker, topic, first)
    proc = ingest_cli(lake.root, broker, topic, "--max-batch-seconds", "0.5", wait=False)
    assert wait_for(lambda: lake.exists(schemas.BRONZE) and lake.read(schemas.BRONZE).num_rows >= 4000)
    broker.stop()
    time.sleep(2)
    broker.start()
    produce_values(broker, topic, second)
    assert wait_for(lambda: lake.read(schemas.BRONZE).num_rows >= 8000, timeout=120)
    proc.send_signal(signal.SIGTERM)  # flushes, commits and exits 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["messages"] == 8000
    assert bronze_payloads(lake) == Counter(first + second)


@pytest.mark.slow
def test_two_ingesters_and_a_rebalance(lake, broker, topic):
    first, second = values(6000, "x"), values(6000, "y")
    produce_values(broker, topic, first)
    a = ingest_cli(lake.root, broker, topic, "--until-idle", "12", "--max-batch-seconds", "0.3",
                   "--max-batch-messages", "500", wait=False)
    assert wait_for(lambda: lake.exists(schemas.BRONZE) and lake.version(schemas.BRONZE) >= 2)
    b = ingest_cli(lake.root, broker, topic, "--until-idle", "12", "--max-batch-seconds", "0.3",
                   "--max-batch-messages", "500", wait=False)  # joins: the group rebalances
    time.sleep(3)
    produce_values(broker, topic, second)
    outs = [json.loads(p.communicate(timeout=180)[0]) for p in (a, b)]
    assert all(p.returncode == 0 for p in (a, b))
    assert sum(o["messages"] for o in outs) == 12000 and all(o["messages"] > 0 for o in outs)
    assert bronze_payloads(lake) == Counter(first + second)


def test_zombie_cannot_commit_offsets_delta_has_moved_past(lake, broker, topic):
    produce_values(broker, topic, values(400, "z"), keys=["same"] * 400)  # one partition
    live = Ingester(lake, IngestConfig(bootstrap_servers=broker.bootstrap, topic=topic, group_id="live", until_idle=2))
    live.run()
    assert lake.read(schemas.BRONZE).num_rows == 400
    zombie = Ingester(lake, IngestConfig(bootstrap_servers=broker.bootstrap, topic=topic, group_id="zombie", until_idle=2))
    zombie.delta_offset = lambda part, dt=None: None if dt is None else \
        dt.transaction_version(f"medallion-ingest/{topic}/{part}")  # a stale view when assigned
    zombie.run()
    assert zombie.stats.messages == 0 and zombie.stats.dropped_batches >= 1
    assert lake.read(schemas.BRONZE).num_rows == 400


def test_fenced_append_refuses_a_stale_snapshot(lake):
    from tests.helpers import bronze, event

    lake.ensure(schemas.BRONZE)
    stale = lake.table(schemas.BRONZE)
    lake.write(schemas.BRONZE, bronze([event()], topic="a"), mode="append", metadata={})
    with pytest.raises(CommitConflictError):
        lake.append_fenced(stale, schemas.BRONZE, bronze([event()], topic="b"), {}, [])
    assert lake.read(schemas.BRONZE).num_rows == 1


def test_ingest_then_replay_equals_jsonl_import(lake, broker, topic, tmp_path):
    hist = generate(GeneratorConfig(events=5000, tenants=8, seed=9, dup_rate=0.0, invalid_rate=0.02,
                                    late_rate=0.0))
    produce(hist, broker.bootstrap, topic)
    p = ingest_cli(lake.root, broker, topic, "--until-idle", "3")
    assert p.returncode == 0, p.stderr
    f = tmp_path / "same.jsonl"
    f.write_bytes(to_jsonl(hist))
    other = api.open_lake(tmp_path / "jsonl-lake")
    api.import_file(other, f)
    for lk in (lake, other):
        api.run(lk, "2026-02", reason="compare")
    cols = [c for c in schemas.SILVER_SCHEMA.names
            if c not in ("kafka_topic", "kafka_partition", "kafka_offset", "ingestion_timestamp")]
    key = [("event_id", "ascending"), ("tenant_id", "ascending")]
    assert lake.read(schemas.SILVER).select(cols).sort_by(key).equals(
        other.read(schemas.SILVER).select(cols).sort_by(key))
    for t in schemas.GOLD_TABLES:
        k = [(c, "ascending") for c in schemas.KEYS[t]]
        assert lake.read(t).sort_by(k).equals(other.read(t).sort_by(k)), t
    assert lake.read(schemas.QUARANTINE).num_rows == other.read(schemas.QUARANTINE).num_rows


def test_a_fresh_lake_reads_the_topic_from_its_beginning(tmp_path, broker, topic):
    """Delta is the only record of what a lake consumed: a lake rebuilt from scratch (same
    consumer group, whose committed offsets are at the end) reads every message again."""
    values = [json.dumps({"event_id": f"e{i}"}).encode() for i in range(300)]
    produce_values(broker, topic, values)
    for name in ("first", "rebuilt"):
        lk = tmp_path / name
        r = ingest_cli(lk, broker, topic, "--until-idle", "2", group="same-group")
        assert r.returncode == 0, r.stderr
        assert api.open_lake(lk).read(schemas.BRONZE).num_rows == 300, name
