"""The README's Kafka blocks as a user types them (tests/readme.py): "Kafka → Bronze, exactly
once", then "The live pipeline: incremental steps and `replay follow`", in a fresh clone of the
repository, on the README's default broker (localhost:9092, `make kafka-up`'s default).

The `make` lines run in the repository root (the venv they use lives there; see
tests.servers.make); every `replay` line runs in the clone, in one terminal (tests.readme.Shell).
The order is a user's who reads both sections: `make kafka-up`, `replay generate --to-kafka`,
`replay ingest` (Ctrl-C once Bronze holds every message), the "first build" line of "Using it"
(follow needs a lake with an active ruleset), the live block (`replay ingest ... &`,
`replay follow` while more events are produced, `replay status`), and `make kafka-down` last:
the live block's ingester needs the broker the Kafka block started.

`make kafka-up` keeps its data in <repo>/.kafka/run-9092 from one start to the next, so on a
second run the topic holds the messages of the first. A fresh lake (no offsets in Delta)
reads every partition from its beginning (Delta is the only record of what a lake consumed),
so Bronze must hold every offset of the topic exactly once, and the topic must have grown by
exactly what `replay generate` says it produced. The test starts from an empty broker (it
removes the data a previous run left) so that each run reads 100k messages, not a pile.
"""

from __future__ import annotations

import shlex
import shutil
import time
import urllib.request
from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.kafka import produce
from replay import api
from tests.lakes import ROOT
from tests.readme import Shell, blocks, without_options
from tests.servers import make, port_free

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KAFKA = "Kafka → Bronze, exactly once"
LIVE = "The live pipeline: incremental steps and `replay follow`"
BOOTSTRAP = "127.0.0.1:9092"  # the README's default, localhost:9092
TOPIC = "api-usage-events"
METRICS_PORT = 9464


def _block(section: str) -> list[str]:
    (b,) = [b for b in blocks() if b.section == section]
    return [without_options(line) for line in b.lines]


def _partitions(topic: str) -> dict[int, tuple[int, int]]:
    """Each partition of ``topic``: (low, high) watermarks ({} while the topic does not exist).
    All topics are listed: asking for one by name could auto-create it."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": BOOTSTRAP, "log_level": 0}).list_topics(timeout=30)
    if topic not in meta.topics:
        return {}
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "readme-test-watermarks",
                  "log_level": 0})
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                        for p in meta.topics[topic].partitions}
            except KafkaException:  # a restarted broker elects the partitions' leader first
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def _messages(parts: dict[int, tuple[int, int]]) -> int:
    return sum(hi - lo for lo, hi in parts.values())


def _starts(parts: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Where `replay ingest` starts each partition for a lake without offsets: its beginning."""
    return {p: lo for p, (lo, _hi) in parts.items()}


def _bronze_rows(lake) -> int:
    if not (lake / schemas.BRONZE / "_delta_log").exists():
        return 0
    return api.open_lake(lake).row_count(schemas.BRONZE)


def _ok(r) -> None:
    assert r.returncode == 0, (r.line if hasattr(r, "line") else r.args, r.stdout[-3000:],
                               r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _make(line: str):
    assert line.startswith("make "), line
    r = make(*shlex.split(line)[1:])
    _ok(r)
    return r


@pytest.mark.timeout(1500)
def test_readme_kafka_then_live_blocks(clone):
    kafka_lines, live = _block(KAFKA), _block(LIVE)
    assert [ln.split()[:2] for ln in kafka_lines] == [
        ["make", "kafka-up"], ["replay", "generate"], ["replay", "ingest"], ["make", "kafka-down"]]
    assert live[0].endswith("&") and live[1].startswith("replay follow") \
        and f"--metrics-port {METRICS_PORT}" in live[1] and live[2].startswith("replay status")
    (first_build,) = [ln for ln in _block("Using it") if '"first build"' in ln]
    busy = [p for p in (9092, 9093, METRICS_PORT) if not port_free(p)]
    assert not busy, (f"ports {busy} are in use: the README's commands need localhost:9092 (and "
                      f"the controller's 9093) for `make kafka-up` and {METRICS_PORT} for "
                      "`replay follow --metrics-port`; stop what listens there (`make kafka-down`?)")
    # a user's terminal: the default lease wait, not the suite's 0
    sh = Shell(clone, env={"MEDALLION_LEASE_WAIT": "120"})
    lake = clone / "lake"
    timings: dict[str, float] = {}
    shutil.rmtree(ROOT / ".kafka" / "run-9092", ignore_errors=True)  # no broker runs (ports free)
    try:
        t0 = time.monotonic()
        up = _make(kafka_lines[0])
        assert "is up on 127.0.0.1:9092" in up.stdout, up.stdout
        before = _messages(_partitions(TOPIC))

        gen = sh.run(kafka_lines[1], timeout=300)
        _ok(gen)
        produced = int(next(x for x in gen.stdout.splitlines()
                            if x.startswith("produced: ")).split(": ")[1])
        assert produced >= 100_000, gen.stdout  # the events and their duplicate deliveries
        parts = _partitions(TOPIC)
        assert _messages(parts) == before + produced, (before, produced, parts)
        starts = _starts(parts)
        total = sum(hi - starts[p] for p, (_lo, hi) in parts.items())
        assert total >= produced, (starts, parts)  # at least everything just produced

        ing = sh.run(kafka_lines[2], timeout=300, until=lambda: _bronze_rows(lake) >= total)
        _ok(ing)
        assert f"messages: {total}" in ing.stdout, ing.stdout
        assert _bronze_rows(lake) == total
        timings["kafka block"] = time.monotonic() - t0

        t0 = time.monotonic()
        _ok(sh.run(first_build, timeout=900))
        timings["first build"] = time.monotonic() - t0

        t0 = time.monotonic()
        _ok(sh.run(live[0]))  # replay ingest ... &
        state: dict = {"extra": 0, "metrics": None}

        def gold_up_to_date() -> bool:
            if not state["extra"]:  # more events while follow runs: later than the history
                more = generate(GeneratorConfig(events=3_000, tenants=20, seed=7, days=0.05,
                                                start=datetime(2026, 3, 2, 1, tzinfo=UTC)))
                state["extra"] = produce(more, BOOTSTRAP, TOPIC)
                state["total"] = sum(hi - starts[p] for p, (_lo, hi) in _partitions(TOPIC).items())
            if state["metrics"] is None:
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as resp:
                        state["metrics"] = resp.read().decode()
                except OSError:
                    pass  # not serving yet
            return (state["metrics"] is not None and _bronze_rows(lake) == state["total"]
                    and api.freshness(lake).get("lag_rows") == 0)

        fol = sh.run(live[1], timeout=600, until=gold_up_to_date)
        _ok(fol)
        status = sh.run(live[2])
        _ok(status)
        bg = sh.close()  # Ctrl-C the background ingester
        for r in bg:
            _ok(r)
        timings["live block"] = time.monotonic() - t0
        end = _partitions(TOPIC)  # the topic as the broker holds it, before it goes down
    finally:
        sh.close()
        down = make(*shlex.split(kafka_lines[3])[1:])
        print("timings:", {k: round(v, 1) for k, v in timings.items()})
    _ok(down)

    total = state["total"]
    assert _messages(end) == before + produced + state["extra"]
    assert "medallion_follow_steps_total" in state["metrics"], state["metrics"][:2000]
    assert "(incremental, 2026-01): folded" in fol.stdout, fol.stdout
    assert "follower" in fol.stdout and "stopped" in fol.stdout, fol.stdout
    assert "lag 0 rows" in status.stdout, status.stdout
    # the background ingester resumed from Bronze's offsets: exactly the messages added since
    assert f"messages: {state['extra']}" in bg[0].stdout, bg[0].stdout

    # Bronze holds every message of the topic once: per partition, offsets low..high-1
    bronze = api.open_lake(lake).read(schemas.BRONZE)
    assert bronze.num_rows == total
    assert set(pc.unique(bronze["kafka_topic"]).to_pylist()) == {TOPIC}
    by_part = bronze.group_by("kafka_partition").aggregate(
        [("kafka_offset", "min"), ("kafka_offset", "max"), ("kafka_offset", "count_distinct"),
         ("kafka_offset", "count")])
    got = {r["kafka_partition"]: (r["kafka_offset_min"], r["kafka_offset_max"] + 1,
                                  r["kafka_offset_count_distinct"], r["kafka_offset_count"])
           for r in by_part.to_pylist()}
    want = {p: (starts[p], hi, hi - starts[p], hi - starts[p])
            for p, (_lo, hi) in end.items() if hi > starts[p]}
    assert got == want

    f = api.freshness(lake)
    assert f["lag_rows"] == 0 and f["follower"] is None
    assert not [h for h in api.history(lake) if h["status"] == "running"]
    deadline = time.monotonic() + 15
    while not (port_free(9092) and port_free(METRICS_PORT)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port_free(9092) and port_free(METRICS_PORT)
