"""Live folding figures for ``make bench`` (docs/semantics.md §11): an incremental step for a 1% append as a
ratio to the full replay of the same run, and ``follow``'s append -> up-to-date latency."""

from __future__ import annotations

import random
import statistics
import threading
import time
from datetime import timedelta

import pyarrow as pa

from engine.execution.local import LocalExecutor
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from engine.live.follow import FollowConfig, Follower
from replay import api


def _append(lake: api.Lake, events: int, tenants: int, start, seed: int, topic: str) -> int:
    rows = generate(GeneratorConfig(events=events, tenants=tenants, days=max(events / 5e6, 0.001),
                                    start=start, seed=seed))
    rows = rows.set_column(rows.schema.get_field_index("kafka_topic"), "kafka_topic",
                           pa.array([topic] * rows.num_rows))  # distinct Bronze keys
    append_new(lake, rows, topic, {"source": "bench"})
    return rows.num_rows


def incremental_bench(lake: api.Lake, cfg: GeneratorConfig, full_s: float) -> None:
    """Two 1% appends later in time, each folded by one incremental step (local executor). The
    first step also builds the key index from Silver (once per full replay); the second is the
    steady state of a follower."""
    share = max(1, cfg.events // 100)
    start = cfg.start + timedelta(days=cfg.days)
    ex = LocalExecutor()
    for label, seed in (("first step, builds the key index", 101), ("steady state", 102)):
        n = _append(lake, share, cfg.tenants, start, seed, f"bench-live-{seed}")
        start += timedelta(days=max(share / 5e6, 0.001))
        t0 = time.perf_counter()
        res = api.run(lake, "2026-02", executor=ex, reason="bench incremental")
        s = time.perf_counter() - t0
        assert res.plan.mode == "incremental", res.plan.reasons
        print(f"incremental step, 1% append ({n:,} events, {label}): {s:.2f}s, "
              f"{s / full_s:.3f}x the full replay (local)")


def follow_bench(lake: api.Lake, cfg: GeneratorConfig, appends: int = 20) -> None:
    """``follow`` at the default interval in this process; appends of 2,000 events at random
    gaps; latency = append committed -> Gold reflects that Bronze version."""
    follower = Follower(lake, LocalExecutor(), FollowConfig(), out=lambda _line: None)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    rnd = random.Random(3)
    start = cfg.start + timedelta(days=cfg.days + 1)
    lat = []
    try:
        time.sleep(2.0)
        for i in range(appends):
            _append(lake, 2000, cfg.tenants, start + timedelta(minutes=i), 200 + i, f"bench-follow-{i}")
            t0 = time.perf_counter()
            v = lake.version("bronze_api_usage")
            while (lake.commit_metadata("tenant_usage_1min").get("bronze_version") or -1) < v:
                time.sleep(0.05)  # a light probe: the follower shares this process's 2 cores
            lat.append(time.perf_counter() - t0)
            time.sleep(rnd.uniform(0.2, 1.5))
    finally:
        follower.stop.set()
        thread.join(60)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"follow (interval {FollowConfig().interval:g}s, {appends} appends of 2,000 events): "
          f"append -> up to date p50 {statistics.median(lat):.2f}s, p99 {p99:.2f}s, "
          f"max {lat[-1]:.2f}s")
