"""Throughput benchmark: ``make bench``.

For one generated history (default 5M events), in one run on this machine:
- generator events/s;
- a single DuckDB SQL script computing the same 2026-02 Gold from the same Bronze
  (``bench/duckdb_gold.sql``): the baseline; its Gold is checked against the engine's;
- full replay (Bronze -> Gold) and Gold-only replay events/s for the local executor and
  the Ray executor with 1 and 2 worker CPUs, each with its ratio to the baseline's time.
Ratios measured in the same run are what compare across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import duckdb
from live import follow_bench, incremental_bench  # bench/ is the script's directory

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api

HERE = Path(__file__).resolve().parent


def baseline(lake: api.Lake) -> tuple[float, duckdb.DuckDBPyConnection, str]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("bronze", lake.dataset(schemas.BRONZE))
    t0 = time.perf_counter()
    with RssSampler() as rss:
        con.execute((HERE / "duckdb_gold.sql").read_text())
    return time.perf_counter() - t0, con, rss.report().replace("driver", "script")


def gold_matches(lake: api.Lake, con: duckdb.DuckDBPyConnection) -> bool:
    con.register("ours_minute", lake.dataset(schemas.MINUTE))
    con.register("ours_hourly", lake.dataset(schemas.HOURLY))
    q = """SELECT count(*) FROM (
      (SELECT tenant_id, window_start, subscription_plan, total_requests, error_requests, plan_limit,
              over_limit_count, burst_allowance_used FROM minute
       EXCEPT ALL SELECT tenant_id, window_start, subscription_plan, total_requests, error_requests,
              plan_limit, over_limit_count, burst_allowance_used FROM ours_minute)
      UNION ALL
      (SELECT tenant_id, window_start, subscription_plan, total_requests, error_requests, plan_limit,
              over_limit_count, burst_allowance_used FROM ours_minute
       EXCEPT ALL SELECT tenant_id, window_start, subscription_plan, total_requests, error_requests,
              plan_limit, over_limit_count, burst_allowance_used FROM minute)
      UNION ALL
      (SELECT * FROM hourly EXCEPT ALL SELECT * FROM ours_hourly))"""
    return con.sql(q).fetchall()[0][0] == 0


def validate_bench(bronze, rows: int) -> None:
    """validate@1 alone, one thread, on the history's first ``rows`` messages: the fast path
    (rules._fastpath) against every row through the DuckDB query. Printed, not asserted."""
    from engine.contract.sql import set_threads
    from engine.fold.pipeline import Compiled
    from rules import _fastpath
    from rules.ruleset import load_ruleset

    part = bronze.slice(0, rows)
    n = part.num_rows
    compiled = Compiled.of(load_ruleset("2026-02"))
    set_threads(1)
    try:
        compiled.validate(part.slice(0, 10_000))  # warm-up
        t0 = time.perf_counter()
        compiled.validate(part)
        fast_s = time.perf_counter() - t0
        with _fastpath.disabled():
            t0 = time.perf_counter()
            compiled.validate(part)
            duck_s = time.perf_counter() - t0
    finally:
        set_threads(0)
    _, taken = _fastpath.accept(part, compiled.known_plans, 3600 * 1_000_000)  # default tolerance
    print(f"validate@1, 1 thread, fast path: {n / fast_s:12,.0f} events/s  ({fast_s / n * 1e6:.2f} us/event, "
          f"{taken.mean():.1%} of {n:,} rows on the fast path)")
    print(f"validate@1, 1 thread, DuckDB:    {n / duck_s:12,.0f} events/s  ({duck_s / n * 1e6:.2f} us/event, "
          f"{duck_s / fast_s:.1f}x the fast path's time)")


class RssSampler:
    """Peak resident memory of this process and of every process below it, sampled from /proc
    (Linux) every 0.2 s while a ``with`` block runs: the driver and each Ray worker apart."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()

    @staticmethod
    def _family() -> list[int]:
        parent: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += [c for c, p in parent.items() if p == pid]
        return out

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for pid in self._family():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        name = f.read().split(b"\0")[0].decode(errors="replace")
                except (OSError, StopIteration):
                    continue
                if rss > self.peaks.get(pid, (0, ""))[0]:
                    self.peaks[pid] = (rss, name)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        me = self.peaks.get(os.getpid(), (0, ""))[0]
        workers = sorted((rss for pid, (rss, name) in self.peaks.items() if name.startswith("ray::")),
                         reverse=True)
        text = f"driver peak RSS {me / 1024:,.0f} MiB"
        if workers:
            text += (f", Ray workers {len(workers)}: largest {workers[0] / 1024:,.0f} MiB, "
                     f"above 2 GiB: {sum(w > 2 << 20 for w in workers)}")
        return text


def timed_run(lake: api.Lake, mode: str, executor) -> tuple[float, str]:
    t0 = time.perf_counter()
    with RssSampler() as rss:
        api.run(lake, "2026-02", mode=mode, executor=executor, reason=f"bench {mode}")
    return time.perf_counter() - t0, rss.report()


def kafka_bench(messages: int) -> None:
    """Ingest into Bronze vs the raw consume rate of the same client (the ceiling)."""
    import pyarrow as pa
    from confluent_kafka import Consumer

    from engine.ingest.broker import Broker
    from engine.ingest.kafka import IngestConfig, Ingester, produce

    tmp = Path(tempfile.mkdtemp(prefix="mr-kbench-"))
    b = Broker(port=19592, controller_port=19593, data=tmp / "kafka")
    try:
        b.start()
        payload = b'{"event_id": "e", "event_timestamp": "2026-03-01T00:00:00Z", "tenant_id": "t1", ' \
                  b'"subscription_plan": "free", "endpoint": "/v1/items/1234567890", "method": "GET", ' \
                  b'"status_code": 200, "latency_ms": 12, "request_bytes": 512, "response_bytes": 2048, ' \
                  b'"user_id": "user-0000001", "data_residency_region": "eu-west-1", "pad": "xxxxxxxxxx"}'
        rows = pa.table({"raw_payload": pa.array([payload] * messages, pa.binary()),
                         "tenant_id": pa.array([f"t{i % 50}" for i in range(messages)])})
        produce(rows, b.bootstrap, "bench")
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "raw", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "log_level": 0})
        c.subscribe(["bench"])
        n, t0 = 0, None
        while n < messages:
            got = c.consume(50_000, 1.0)
            if got and t0 is None:
                t0 = time.perf_counter()
            n += sum(1 for m in got if m.error() is None)
        raw_s = time.perf_counter() - t0
        c.close()
        lake = api.open_lake(tmp / "lake")
        ing = Ingester(lake, IngestConfig(bootstrap_servers=b.bootstrap, topic="bench", group_id="ingest", max_batch_messages=100_000,
                                          max_batch_seconds=10, max_messages=messages))
        stats = ing.run()
        assert stats.first_message_at is not None
        ing_s = time.monotonic() - stats.first_message_at  # like the raw rate: from the first message
        assert stats.messages == messages and lake.read(schemas.BRONZE).num_rows == messages
        print(f"kafka raw consume (ceiling):  {messages / raw_s:12,.0f} messages/s  ({len(payload)} B each)")
        print(f"kafka ingest into Bronze:     {messages / ing_s:12,.0f} messages/s  "
              f"({ing_s / raw_s:.2f}x the raw consume time)")
    finally:
        b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def lifecycle_bench(lake: api.Lake) -> None:
    """Bytes a one-tenant replay reads before and after ``replay optimize`` (plans, printed)."""
    tenant = lake.read(schemas.SILVER, columns=["tenant_id"]).column("tenant_id")[0].as_py()

    def scoped() -> list[tuple[str, api.Plan]]:
        return [(rs, api.plan(lake, rs, tenants=[tenant])) for rs in ("2026-03", "2026-01")]

    before = scoped()
    t0 = time.perf_counter()
    api.optimize(lake)
    opt_s = time.perf_counter() - t0
    after = scoped()
    print(f"optimize (compaction, Z-order): {opt_s:.2f}s")
    for (rs, b), (_, a) in zip(before, after, strict=True):
        print(f"one-tenant {b.mode} replay ({rs}): reads {b.rows:,} rows / {b.bytes / 1e6:,.1f} MB "
              f"before optimize, {a.rows:,} rows / {a.bytes / 1e6:,.1f} MB after")


def memory_bench(events: int, tenants: int, days: float, tmp: Path) -> None:
    """Peak RSS of a driver importing ``events`` events and running a one-tenant replay, each in a
    process of its own (ru_maxrss of the child), next to the history's size on disk."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp / "memory-history"
    src.mkdir()
    step = 2_000_000
    for i in range(0, events, step):  # chunks on their own topics: distinct Bronze keys
        t = generate(GeneratorConfig(events=min(step, events - i), tenants=tenants, days=days, seed=i + 1))
        t = t.set_column(t.schema.get_field_index("kafka_topic"), "kafka_topic",
                         pa.array([f"bench-{i}"] * t.num_rows))
        pq.write_table(t, src / f"part-{i:012d}.parquet")
        del t
    lake = tmp / "memory-lake"
    cmds = [("import", ["import", "--lake", str(lake), "--format", "bronze-parquet"]),
            ("run 2026-01", ["run", "--lake", str(lake), "--ruleset", "2026-01", "--executor", "local",
                             "--reason", "bench", "--json"]),
            ("one-tenant run", ["run", "--lake", str(lake), "--ruleset", "2026-02", "--executor",
                                "local", "--tenant", "tenant-00001", "--reason", "bench", "--json"])]
    files = sorted(src.glob("*.parquet"))
    for name, args in cmds:
        steps = [[*args, str(f)] for f in files] if name == "import" else [args]
        peak = 0
        t0 = time.perf_counter()
        for step in steps:  # a fresh parent per command: its children's peak is that command's
            probe = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'replay', "
                     f"*{step!r}], check=True, capture_output=True); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
            peak = max(peak, int(out.stdout.split()[-1]))
        print(f"{events:,} events: {name}: peak driver RSS {peak / 1024:,.0f} MiB "
              f"({time.perf_counter() - t0:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kafka-messages", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--tenants", type=int, default=2000)
    ap.add_argument("--days", type=float, default=3)
    ap.add_argument("--memory-events", type=int, default=20_000_000,
                    help="events of the import + one-tenant replay peak-RSS measure (0: skip)")
    ap.add_argument("--validate-events", type=int, default=1_000_000,
                    help="validate@1 micro-measure on this many of the history's events (0: skip)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    try:
        cfg = GeneratorConfig(events=args.events, tenants=args.tenants, days=args.days)
        generate(GeneratorConfig(events=max(1, args.events // 10), tenants=args.tenants))  # warm-up
        t0 = time.perf_counter()
        bronze = generate(cfg)
        gen_s = time.perf_counter() - t0
        n = bronze.num_rows
        lake = api.open_lake(tmp / "lake")
        append_new(lake, bronze, "bench", {"source": "bench"})
        print(f"history: {n:,} Bronze messages, {args.tenants} tenants, {args.days} days")
        print(f"generator:                    {n / gen_s:12,.0f} events/s")
        if args.validate_events:
            validate_bench(bronze, args.validate_events)
        del bronze
        base_s, con, base_rss = baseline(lake)
        print(f"duckdb script (baseline):     {n / base_s:12,.0f} events/s  ({base_s:.2f}s; {base_rss})")
        import ray

        from engine.execution.local import LocalExecutor
        from engine.execution.ray_executor import RayExecutor

        configs = [("local", lambda: LocalExecutor())]
        configs += [(f"ray, {c} cpu", (lambda c=c: RayExecutor(num_cpus=c))) for c in (1, 2)]
        checked = False
        full_times: dict[str, float] = {}
        for name, make in configs:
            if ray.is_initialized():
                ray.shutdown()
            ex = make()
            full_s, full_rss = timed_run(lake, "full", ex)
            full_times[name] = full_s
            if not checked:
                print(f"engine Gold equals the baseline's: {gold_matches(lake, con)}")
                checked = True
            gold_s, _ = timed_run(lake, "gold", ex)
            print(f"full replay ({name}):{' ' * (16 - len(name))}{n / full_s:12,.0f} events/s  "
                  f"({full_s:.2f}s, {full_s / base_s:.2f}x the baseline; {full_rss})")
            print(f"gold-only ({name}):{' ' * (18 - len(name))}{n / gold_s:12,.0f} events/s  "
                  f"({gold_s:.2f}s, {gold_s / base_s:.2f}x the baseline)")
        if ray.is_initialized():
            ray.shutdown()
        incremental_bench(lake, cfg, full_times["local"])
        follow_bench(lake, cfg)
        lifecycle_bench(lake)
        if args.memory_events:
            memory_bench(args.memory_events, args.tenants, args.days, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.kafka_messages:
        kafka_bench(args.kafka_messages)


if __name__ == "__main__":
    main()
