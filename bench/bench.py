"""Throughput benchmark: ``make bench``.

For one generated history (default 5M events), in one run on this machine:
- generator events/s;
- validate@1 alone on one thread: the fast path (native decoder, then msgspec's) against
  the DuckDB query;
- a single DuckDB SQL script computing the same 2026-02 Gold from the same Bronze
  (``bench/duckdb_gold.sql``), in a process of its own: the baseline (time and peak RSS);
  its Gold is checked against the engine's;
- full and Gold-only replays, each as a ratio to the baseline's time: through the Python
  API on the local executor, and through the default CLI (``replay run``, Ray executor)
  against a 2-CPU Ray cluster from ``ray start``, with the peak RSS of the driver and of
  every Ray worker process;
- live folding (``bench/live.py``), lifecycle, a 20M-event memory measure, Kafka ingest.
Ratios measured in the same run are what compare across machines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from live import follow_bench, incremental_bench  # bench/ is the script's directory
from processes import GIB, RssSampler, cli_replay, ray_cluster, script_process

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository


def baseline(lake: api.Lake, out: Path) -> tuple[float, int, duckdb.DuckDBPyConnection]:
    """The DuckDB script in a process of its own: (seconds, peak RSS, a connection holding
    its Gold as ``minute`` and ``hourly``)."""
    seconds, rss = script_process(Path(lake.root), out)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for t in ("minute", "hourly"):
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet(?)", [str(out / f"{t}.parquet")])
    return seconds, rss, con


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

    def timed() -> float:
        compiled.validate(part.slice(0, 10_000))  # warm-up
        t0 = time.perf_counter()
        compiled.validate(part)
        return time.perf_counter() - t0

    try:
        native_s = timed() if _fastpath.native_enabled() else float("nan")
        with _fastpath.msgspec_decoder():
            msgspec_s = timed()
        with _fastpath.disabled():
            duck_s = timed()
    finally:
        set_threads(0)
    _, taken = _fastpath.accept(part, compiled.known_plans, 3600 * 1_000_000)  # default tolerance
    print(f"validate@1, 1 thread, {taken.mean():.1%} of {n:,} rows on the fast path:")
    for name, sec in (("fast path, native decoder", native_s), ("fast path, msgspec decoder", msgspec_s),
                      ("DuckDB query, every row", duck_s)):
        print(f"  {name + ':':28}{n / sec:12,.0f} events/s  ({sec / n * 1e6:.2f} us/event, "
              f"{sec / native_s:.1f}x the native path's time)")


def timed_run(lake: api.Lake, mode: str, executor) -> tuple[float, str]:
    t0 = time.perf_counter()
    with RssSampler() as rss:
        api.run(lake, "2026-02", mode=mode, executor=executor, reason=f"bench {mode}")
    return time.perf_counter() - t0, rss.report()


def kafka_bench(messages: int) -> None:
    """Ingest into Bronze vs the raw consume rate of the same client (the ceiling)."""
    import pyarrow as pa
    from confluent_kafka import Consumer

    from engine.ingest.kafka import IngestConfig, Ingester, produce

    if str(ROOT) not in sys.path:  # `python bench/bench.py` puts bench/ on sys.path, not the repo
        sys.path.insert(0, str(ROOT))
    from tests.servers.kafka import Broker  # development tooling, not in the installed package

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
    """Peak RSS on a bigger history: ``replay import`` of each 2M-event file and a one-tenant
    replay on the local executor, each in a process of its own (ru_maxrss of the child); the
    full replay through the default CLI (Ray, a 2-CPU cluster from ``ray start``) with the
    peak of its driver and of every Ray worker."""
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
    files = sorted(src.glob("*.parquet"))

    def child_peak(args: list[str]) -> int:  # a fresh parent per command: its children's peak
        probe = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', 'replay', "
                 f"*{args!r}], check=True, capture_output=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
        return int(out.stdout.split()[-1]) * 1024

    t0 = time.perf_counter()
    peak = max(child_peak(["import", "--lake", str(lake), "--format", "bronze-parquet", str(f)])
               for f in files)
    print(f"{events:,} events: import of each 2M-event file: peak RSS {peak / 2**20:,.0f} MiB "
          f"({time.perf_counter() - t0:.1f}s)")
    with ray_cluster(2) as env:
        seconds, wall, rss, pid = cli_replay(lake, "full", env)
    workers = rss.workers()
    driver = rss.peaks.get(pid, (0, ""))[0]
    print(f"{events:,} events: full replay (CLI, Ray 2 CPUs): {seconds:.1f}s; peak RSS: driver "
          f"{driver / 2**20:,.0f} MiB; Ray workers (MiB): {rss.worker_text()}; processes above "
          f"2 GiB: {sum(x > 2 * GIB for x in [driver, *workers])}")
    t0 = time.perf_counter()
    peak = child_peak(["run", "--lake", str(lake), "--ruleset", "2026-01", "--executor", "local",
                       "--tenant", "tenant-00001", "--reason", "bench", "--json"])
    print(f"{events:,} events: one-tenant replay (local executor): peak RSS {peak / 2**20:,.0f} MiB "
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
        del bronze
        t0 = time.perf_counter()
        bronze = generate(cfg)  # the steady rate (the first run also faults in fresh memory)
        gen2_s = time.perf_counter() - t0
        n = bronze.num_rows
        lake = api.open_lake(tmp / "lake")
        append_new(lake, bronze, "bench", {"source": "bench"})
        print(f"history: {n:,} Bronze messages, {args.tenants} tenants, {args.days} days")
        print(f"generator:                    {n / gen_s:12,.0f} events/s (the first history in this "
              f"process), {n / gen2_s:,.0f} events/s (the same again)")
        if args.validate_events:
            validate_bench(bronze, args.validate_events)
        del bronze
        base_s, base_rss, con = baseline(lake, tmp)
        print(f"duckdb script (baseline):     {n / base_s:12,.0f} events/s  ({base_s:.2f}s, a process "
              f"of its own; peak RSS {base_rss / 2**20:,.0f} MiB)")
        from engine.execution.local import LocalExecutor

        full_local, full_rss = timed_run(lake, "full", LocalExecutor())
        print(f"engine Gold equals the baseline's: {gold_matches(lake, con)}")
        gold_local, _ = timed_run(lake, "gold", LocalExecutor())
        print(f"full replay (local, API):     {n / full_local:12,.0f} events/s  ({full_local:.2f}s, "
              f"{full_local / base_s:.2f}x the baseline; in this process: {full_rss})")
        print(f"gold-only (local, API):       {n / gold_local:12,.0f} events/s  ({gold_local:.2f}s, "
              f"{gold_local / base_s:.2f}x the baseline)")
        with ray_cluster(2) as env:  # the default CLI: replay run, Ray executor, a started cluster
            for mode in ("full", "gold"):
                seconds, wall, rss, pid = cli_replay(Path(lake.root), mode, env)
                workers = rss.workers()
                driver = rss.peaks.get(pid, (0, ""))[0]
                print(f"{mode} replay (CLI, Ray 2 CPUs): {n / seconds:10,.0f} events/s  ({seconds:.2f}s, "
                      f"{seconds / base_s:.2f}x the baseline; the whole command {wall:.2f}s, "
                      f"{wall / base_s:.2f}x)")
                print(f"  peak RSS: driver {driver / 2**20:,.0f} MiB; Ray workers (MiB): {rss.worker_text()}; "
                      f"processes above 2 GiB: {sum(x > 2 * GIB for x in [driver, *workers])}; "
                      f"the script: {base_rss / 2**20:,.0f} MiB")
        incremental_bench(lake, cfg, full_local)
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
