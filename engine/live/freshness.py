"""Freshness: how far Silver and Gold lag behind Bronze (``replay status``, follower metrics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.lake.tables import Lake
from engine.live.appends import Appended, appended_since


def _bronze_latest_ingestion(lake: Lake) -> datetime | None:
    """The newest ingestion_timestamp in Bronze, from the files' statistics in the Delta log."""
    adds = pa.table(lake.table(schemas.BRONZE).get_add_actions(flatten=True))
    col = "max.ingestion_timestamp"
    if col not in adds.column_names or not adds.num_rows:
        return None
    v = pc.max(adds.column(col)).as_py()
    if isinstance(v, datetime) and v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v


def freshness(lake: Lake) -> dict[str, Any]:
    """Bronze's latest version and ingestion time against what Silver and Gold reflect.

    ``lag_rows``: Bronze rows appended since the version Silver and Gold were built from
    (None when Bronze changed otherwise: a full replay is due); ``lag_seconds``: age of the
    oldest of them (0 when caught up).
    """
    if not lake.exists(schemas.BRONZE):
        return {"bronze_version": None, "lag_rows": 0, "lag_seconds": 0.0}
    bronze_v = lake.version(schemas.BRONZE)
    silver = lake.commit_metadata(schemas.SILVER) if lake.exists(schemas.SILVER) else {}
    gold = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
    reflected = silver.get("bronze_version")
    now = datetime.now(UTC)
    out: dict[str, Any] = {
        "bronze_version": bronze_v,
        "bronze_latest_ingestion": _bronze_latest_ingestion(lake),
        "silver_bronze_version": reflected,
        "gold_bronze_version": gold.get("bronze_version"),
        "gold_replay_id": gold.get("replay_id"),
    }
    if reflected is None:
        rows = lake.dataset(schemas.BRONZE).count_rows()
        out.update(lag_rows=rows, lag_seconds=0.0, lag_reason="Silver was never built")
        return out
    app = appended_since(lake, int(reflected), bronze_v)
    if isinstance(app, Appended):
        age = (now - app.oldest).total_seconds() if app.rows and app.oldest else 0.0
        out.update(lag_rows=app.rows, lag_seconds=round(max(age, 0.0), 3))
    else:
        out.update(lag_rows=None, lag_seconds=None, lag_reason=app)
    return out
