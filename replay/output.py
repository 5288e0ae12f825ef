"""How the CLI (and the demo) show things: records, tables, plans, progress."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pyarrow as pa


def emit(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str, sort_keys=True))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{k}: {v}")
    else:
        print(obj)


def progress_printer(rows: int = 0, stream=sys.stderr):
    """Shards done / total, events/s and ETA: a bar on a terminal, plain lines otherwise."""
    start = time.perf_counter()
    tty = stream.isatty()

    def report(stage: str, done: int, total: int) -> None:
        el = time.perf_counter() - start
        eta = el / done * (total - done) if done else 0.0
        rate = rows * done / total / el if el > 0 and total else 0.0
        msg = (f"{stage}: tasks {done}/{total}  {rate:,.0f} events/s  elapsed {el:5.1f}s  "
               f"eta {eta:5.1f}s")
        if tty:
            bar = "#" * int(30 * done / max(total, 1))
            stream.write(f"\r[{bar:<30}] {msg}")
            if done == total:
                stream.write("\n")
        else:
            stream.write(msg + "\n")
        stream.flush()

    return report


#: What each mode reads and writes, as ``replay plan`` prints it.
FLOWS = {"full": "Bronze -> Silver -> Gold", "gold": "Silver -> Gold",
         "incremental": "new Bronze rows -> Silver -> Gold (only the keys and tenant-hours they touch)"}


def plan_text(p: dict[str, Any]) -> str:
    lines = [f"replay plan {p['replay_id']}  (lake {p['lake']})",
             f"ruleset: {p['ruleset_name']}  fingerprint {p['ruleset_fingerprint']}"]
    if p["up_to_date"]:
        lines.append("up to date: nothing to recompute")
        return "\n".join(lines)
    lines.append(f"mode: {p['mode']}  ({FLOWS.get(p['mode'], p['mode'])})")
    lines.append("why:")
    lines += [f"  - {r}" for r in p["reasons"]]
    if p.get("scope"):
        lines.append(f"scope: {p['scope']} (rows outside it stay as they are)")
    lines.append(f"tables to replace: {', '.join(p['tables'])}")
    lines.append(f"reads: {p['source_table']} version {p['source_version']}: {p['rows']:,} rows, "
                 f"{p['bytes'] / 1e6:,.1f} MB in {p['files']} files (Bronze version {p['bronze_version']})")
    lines.append(f"tasks: {p['map_tasks']} map + {p['buckets']} tenant shards on the {p['executor']} executor")
    lines.append(f"memory budget per shard task: {p['task_memory'] / 2**20:,.0f} MiB; "
                 f"about {p['chunks_per_shard']} ingestion-time chunk(s) per shard")
    return "\n".join(lines)


def emit_rows(rows: list[dict[str, Any]], as_json: bool, empty: str,
              columns: list[str] | None = None) -> None:
    """A list of records as JSON, or as a text table (optionally only ``columns``)."""
    if as_json:
        emit(rows, True)
    elif not rows:
        print(empty)
    else:
        shown = [{c: r[c] for c in columns} for r in rows] if columns else rows
        print(format_table(pa.Table.from_pylist(shown), "table"))


def format_table(tbl: pa.Table, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(tbl.to_pylist(), default=str, indent=2)
    if fmt == "csv":
        import io

        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(tbl, buf)
        return buf.getvalue().decode().rstrip("\n")
    rows = [[("" if v is None else str(v)) for v in r.values()] for r in tbl.to_pylist()]
    head = tbl.column_names
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines)
