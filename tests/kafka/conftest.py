"""A real Apache Kafka broker (KRaft) started by the project's own script (tests/servers/kafka.py)
for these tests; its jars are the ones `make kafka-up` uses, in <repo>/.kafka."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.lakes import ROOT
from tests.servers.kafka import Broker

_topics = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = Broker(port=int(os.environ.get("MEDALLION_TEST_KAFKA_PORT", "19192")),
               data=tmp_path_factory.mktemp("kafka"))  # jars: DEFAULT_HOME, <repo>/.kafka
    b.start()  # a broker that cannot start fails the run: these tests never skip
    yield b
    b.stop()


@pytest.fixture
def topic(broker):
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"t{next(_topics)}-{int(time.time() * 1000)}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    fut = admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name]
    fut.result(30)
    return name


def produce_values(broker, topic, values, keys=None):
    from engine.ingest.kafka import produce

    tbl = pa.table({"raw_payload": pa.array(values, pa.binary()),
                    "tenant_id": pa.array(keys or [f"k{i % 7}" for i in range(len(values))], pa.string())})
    return produce(tbl, broker.bootstrap, topic)


def ingest_cli(lake, broker, topic, *extra, group="g", wait=True):
    args = [sys.executable, "-m", "replay", "ingest", "--lake", str(lake), "--bootstrap-servers",
            broker.bootstrap, "--topic", topic, "--group-id", group, "--json", *extra]
    if not wait:  # stderr to a file: a full pipe would block a long-running ingester
        err = open(Path(str(lake)).parent / f"ingest-{time.monotonic_ns()}.err", "w")  # noqa: SIM115
        return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
