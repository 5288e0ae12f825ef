"""Small fixture builders for tests (data made in code)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from engine.contract import schemas
from engine.fold.pipeline import Compiled
from rules.ruleset import load_ruleset

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def event(**over: Any) -> dict[str, Any]:
    base = {"event_id": "e1", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "acme",
            "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200}
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def payload(obj: Any) -> bytes:
    return obj if isinstance(obj, bytes) else json.dumps(obj).encode()


def bronze(payloads: list[Any], ingestion: list[datetime] | None = None,
           partitions: list[int] | None = None, offsets: list[int] | None = None,
           topic: str = "t") -> pa.Table:
    n = len(payloads)
    ing = ingestion or [T0 + timedelta(seconds=i) for i in range(n)]
    return pa.table({
        "raw_payload": pa.array([payload(p) for p in payloads], pa.binary()),
        "kafka_topic": pa.array([topic] * n, pa.string()),
        "kafka_partition": pa.array(partitions or [0] * n, pa.int32()),
        "kafka_offset": pa.array(offsets or list(range(n)), pa.int64()),
        "kafka_timestamp": pa.array(ing, schemas.TS),
        "kafka_key": pa.nulls(n, pa.binary()),
        "ingestion_timestamp": pa.array(ing, schemas.TS),
        "ingestion_date": pa.array([d.date() for d in ing], pa.date32()),
        "event_id": pa.nulls(n, pa.string()),
        "tenant_id": pa.nulls(n, pa.string()),
        "event_timestamp": pa.nulls(n, schemas.TS),
    }, schema=schemas.BRONZE_SCHEMA)


def compiled(name: str = "2026-01") -> Compiled:
    return Compiled.of(load_ruleset(name))


def reasons(payloads: list[Any], ruleset: str = "2026-01", **kw: Any) -> list[str | None]:
    """validate@1 verdict per payload, in input order (None = valid)."""
    b = bronze(payloads, **kw)
    valid, quarantine = compiled(ruleset).validate(b)
    by_offset = {r["kafka_offset"]: r["reason"] for r in quarantine.to_pylist()}
    return [by_offset.get(i) for i in range(len(payloads))]


def fold(payloads: list[Any], ruleset: str = "2026-01", **kw: Any) -> dict[str, pa.Table]:
    """Bronze -> every Silver and Gold table, through the real pipeline."""
    c = compiled(ruleset)
    valid, quarantine = c.validate(bronze(payloads, **kw))
    silver, dups = c.dedup(valid)
    minute, hourly, alerts = c.gold(silver)
    return {"silver": silver, "quarantine": quarantine, "duplicates": dups,
            "minute": minute, "hourly": hourly, "alerts": alerts}


@pytest.fixture(params=["native", "msgspec"])
def each_decoder(request: pytest.FixtureRequest):
    """Run a test once per fast-path decoder: the native extension (``make venv`` builds it:
    its absence fails, never skips) and msgspec (where the extension is not installed)."""
    from rules import _fastpath

    if request.param == "native":
        assert _fastpath.native_enabled(), "the native decoder (rules/_native) is not installed"
        yield "native"
    else:
        with _fastpath.msgspec_decoder():
            assert not _fastpath.native_enabled()
            yield "msgspec"
