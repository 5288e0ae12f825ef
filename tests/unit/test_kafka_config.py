"""--kafka-config files and secret redaction (no broker needed)."""

from __future__ import annotations

import pytest

from engine.contract.errors import UsageError
from engine.ingest.kafka import app_id, read_kafka_config, redact


def test_reads_librdkafka_settings(tmp_path):
    f = tmp_path / "client.properties"
    f.write_text("# SASL\nsecurity.protocol=SASL_SSL\nsasl.mechanism = PLAIN\n"
                 "sasl.password=hunter2\nssl.key.password=k\n\n")
    cfg = read_kafka_config(f)
    assert cfg == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                   "sasl.password": "hunter2", "ssl.key.password": "k"}
    shown = redact(cfg)
    assert shown["sasl.password"] == "***" and shown["ssl.key.password"] == "***"
    assert shown["security.protocol"] == "SASL_SSL" and "hunter2" not in str(shown)


def test_bad_config_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_kafka_config(tmp_path / "missing")
    f = tmp_path / "bad"
    f.write_text("just a line\n")
    with pytest.raises(UsageError, match="key=value"):
        read_kafka_config(f)


def test_offsets_app_id_is_per_topic_partition():
    assert app_id("api-usage-events", 3) == "medallion-ingest/api-usage-events/3"
