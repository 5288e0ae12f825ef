"""What Bronze gained since a version: the files its data commits added, from the Delta log.

An incremental step (docs/semantics.md §11) folds only the rows added since the Bronze version the
current Silver and Gold reflect. Those rows are the files added by the data commits
between that version and now, read straight from ``_delta_log/<version>.json``. The
answer is None (fold the whole history instead) when it cannot be exact:

- a data commit removed files (an overwrite, a delete, an erasure): Bronze did not only grow;
- a maintenance commit (OPTIMIZE) compacted away a file added since, before it was folded:
  its rows now sit in a file that also holds folded rows;
- the log entries were cleaned up (a vacuum past them): the adds are no longer known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from engine.contract import schemas
from engine.lake.tables import Lake, is_neutral


@dataclass(frozen=True)
class Appended:
    """Files (paths relative to the table root) added to Bronze in (since, version]."""

    since: int
    version: int
    files: tuple[str, ...]
    rows: int
    bytes: int
    #: ingestion_timestamp range of the new rows, from the files' statistics (None: unknown)
    oldest: datetime | None = None
    newest: datetime | None = None


def _log_entry(lake: Lake, table: str, version: int) -> list[dict[str, Any]] | None:
    fs, base = lake.table_storage(table).filesystem()
    path = f"{base}/_delta_log/{version:020d}.json" if base else f"_delta_log/{version:020d}.json"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None  # cleaned up by a log retention (any other error propagates: not "gone")
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except FileNotFoundError:  # cleaned up between the look and the read
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def appended_since(lake: Lake, since: int | None, version: int | None = None,
                   table: str = schemas.BRONZE) -> Appended | str:
    """The files ``table`` gained in (since, version], or why they cannot be told apart."""
    if since is None or since < 0:
        return f"{table} has no version folded yet"
    latest = lake.version(table) if version is None else version
    if latest is None:
        return f"{table} does not exist"
    if latest < since:
        return f"{table} version {since} is newer than its latest ({latest})"
    added: dict[str, dict[str, Any]] = {}
    for v in range(since + 1, latest + 1):
        actions = _log_entry(lake, table, v)
        if actions is None:
            return f"the Delta log entry of {table} version {v} is gone (cleaned up)"
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        neutral = is_neutral(info)
        for a in actions:
            if "remove" in a:
                path = a["remove"]["path"]
                if not neutral and a["remove"].get("dataChange", True):
                    return (f"{table} version {v} removed rows ({info.get('operation', '?')}): "
                            "it did not only grow")
                if path in added:
                    return (f"{table} version {v} ({info.get('operation', '?')}) compacted files "
                            "appended since, before they were folded")
            elif "add" in a and not neutral and a["add"].get("dataChange", True):
                added[a["add"]["path"]] = a["add"]  # (dataChange false: the same rows, moved)
    rows = 0
    lows, highs = [], []
    for add in added.values():
        stats = json.loads(add.get("stats") or "{}")
        rows += int(stats.get("numRecords") or 0)
        lo = (stats.get("minValues") or {}).get("ingestion_timestamp")
        hi = (stats.get("maxValues") or {}).get("ingestion_timestamp")
        lows += [_ts(lo)] if lo else []
        highs += [_ts(hi)] if hi else []
    return Appended(since, latest, tuple(sorted(added)), rows,
                    sum(int(a.get("size") or 0) for a in added.values()),
                    min(lows) if lows else None, max(highs) if highs else None)


def _ts(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def new_rows(lake: Lake, appended: Appended, columns: list[str],
             table: str = schemas.BRONZE) -> pa.Table:
    """The rows of the appended files (``columns`` only)."""
    ds = lake.dataset(table, appended.version)
    wanted = set(appended.files)
    frags = [f for f in ds.get_fragments() if _rel(f.path, wanted) is not None]
    if not frags:
        return ds.schema.empty_table().select(columns)
    return pa.concat_tables([f.to_table(columns=columns, schema=ds.schema) for f in frags])


def _rel(path: str, wanted: set[str]) -> str | None:
    """The Delta (relative) path among ``wanted`` that the fragment path ``path`` is."""
    if path in wanted:
        return path
    for rel in (unquote(path),):
        for w in wanted:
            if rel == w or rel.endswith("/" + w) or rel.endswith("/" + unquote(w)):
                return w
    return None


def touched_summary(lake: Lake, appended: Appended, sample: int = 10) -> dict[str, Any]:
    """What a plan reports of the new rows: tenants and event-time windows they touch, from
    Bronze's best-effort columns (NULL where the payload was unparseable)."""
    rows = new_rows(lake, appended, ["tenant_id", "event_timestamp"])
    if rows.num_rows and rows.column("tenant_id").null_count == rows.num_rows:
        # a writer that left them NULL: parse the new payloads (best effort, as imports do)
        from engine.ingest.importers import extract_fields

        raw = new_rows(lake, appended, ["raw_payload"]).column("raw_payload").combine_chunks()
        rows = extract_fields(raw).select(["tenant_id", "event_timestamp"])
    tenants = pc.unique(rows.column("tenant_id").drop_null()) if rows.num_rows else pa.array([])
    ts = rows.column("event_timestamp")
    hours = pc.unique(pc.floor_temporal(ts.drop_null(), unit="hour")) if rows.num_rows else []
    lo, hi = (pc.min(ts).as_py(), pc.max(ts).as_py()) if rows.num_rows else (None, None)
    return {"rows": rows.num_rows, "tenants": len(tenants),
            "tenant_sample": sorted(tenants.to_pylist())[:sample], "hours": len(hours),
            "event_time_from": lo.isoformat() if lo else None,
            "event_time_to": hi.isoformat() if hi else None,
            "since_version": appended.since, "to_version": appended.version}
