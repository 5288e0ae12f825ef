"""`make kafka-up` / `make kafka-down` as a user types them (from the repository root), on a
free port and a data dir of the test's own, with the jars every broker shares in <repo>/.kafka."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import servers
from tests.lakes import ROOT
from tests.servers import free_port_block, port_free
from tests.servers.kafka import DEFAULT_HOME, KAFKA_VERSION

pytestmark = pytest.mark.kafka


def make(target: str, port: int, data) -> subprocess.CompletedProcess:
    return servers.make(target, f"KAFKA_PORT={port}", f"KAFKA_DATA={data}", timeout=240)


def test_make_kafka_up_then_down(tmp_path):
    from confluent_kafka.admin import AdminClient

    port = free_port_block(2)  # the broker's port and its controller's (port + 1)
    data = tmp_path / "kafka"
    try:
        up = make("kafka-up", port, data)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"is up on 127.0.0.1:{port}" in up.stdout, up.stdout
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0})
        assert list(admin.list_topics(timeout=10).brokers) == [1]
        pid = int((data / "broker.pid").read_text())
        # one home for the jars, the tests' and the Makefile's: <repo>/.kafka, not in a package
        assert DEFAULT_HOME == ROOT / ".kafka"
        assert any((DEFAULT_HOME / f"kafka-{KAFKA_VERSION}" / "libs").glob("kafka_2.13-*.jar"))
        assert not (ROOT / "engine" / ".kafka").exists()
    finally:
        down = make("kafka-down", port, data)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (data / "broker.pid").exists()
    deadline = time.monotonic() + 10
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port_free(port)
    with pytest.raises(ProcessLookupError):  # the broker's JVM is gone
        os.kill(pid, 0)
