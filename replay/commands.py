"""One function per ``replay`` command: parsed arguments in, exit code out, the API only."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from engine.contract import schemas
from engine.contract.errors import UsageError
from replay import api
from replay.output import emit, emit_rows, format_table, plan_text, progress_printer


def cmd_import(args: argparse.Namespace) -> int:
    res = api.import_file(args.lake, args.path, args.format, args.topic)
    emit({"source": res.source, "rows_read": res.rows_read, "rows_added": res.rows_added,
          "rows_skipped": res.rows_skipped, "rows_erased": res.rows_erased,
          "bronze_version": res.bronze_version}, args.json)
    if res.rows_erased and not args.json:  # never silent: these rows will not come back
        print(f"note: {res.rows_erased:,} rows belong to erased subjects (docs/semantics.md §9) "
              "and were not imported", file=sys.stderr)
    return 0


def _kind(args: argparse.Namespace, work: str | None = None) -> str:
    """``--executor`` resolved for ``work`` (a plan's mode, or ``follow``): ``auto`` runs
    incremental steps and followers in this process and everything over history on Ray;
    ``--address`` always means Ray."""
    if args.address and args.executor == "local":
        raise UsageError("--address joins a Ray cluster: use --executor ray (or auto)")
    if args.executor != "auto":
        return args.executor
    return "ray" if args.address or work not in ("incremental", "follow") else "local"


def _plan(args: argparse.Namespace, ex: Any = None) -> tuple[Any, api.Plan]:
    """The plan of ``run``/``plan``, on ``ex`` or on the executor's shape (nothing started)."""
    if args.shards is not None and args.shards < 1:
        raise UsageError("--shards must be at least 1")
    shape = ex is None
    ex = api.executor_shape(_kind(args), args.address) if shape else ex
    p = api.plan(args.lake, args.ruleset, args.mode, ex, args.shards, args.start, args.end,
                 args.tenant or None, args.task_memory)
    if shape and p.mode is not None and p.executor != _kind(args, p.mode):  # auto: steps run here
        p = replace(p, executor=_kind(args, p.mode))
    return ex, p


def cmd_plan(args: argparse.Namespace) -> int:
    _, p = _plan(args)
    emit(p.to_dict(), True) if args.json else print(plan_text(p.to_dict()))
    return 0


#: Plans made afresh when the lake changed while a replay waited for its lease.
STALE_ATTEMPTS = 5


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_plan(args)
    _, p = _plan(args)  # refuse a replay without a reason before anything starts
    if not args.reason and not p.up_to_date:
        raise UsageError("--reason is required for a replay (it is recorded in the audit ledger)")
    for d in api.recover_if_needed(args.lake):  # plan on a consistent lake
        print(f"recovered interrupted replay {d['replay_id']}: {d['outcome']}", file=sys.stderr)
    ex, p = _plan(args, api.make_executor(_kind(args, p.mode), args.address) if not p.up_to_date
                  else None)
    if not args.json:
        print(plan_text(p.to_dict()))
    res = None
    for attempt in range(STALE_ATTEMPTS):
        try:
            res = api.apply(args.lake, p, args.ruleset, ex, None if args.json else progress_printer(p.rows),
                            args.reason, args.checks, args.allow_failed_checks)
            break
        except api.StalePlanError:  # a follower's step or another replay landed while this one waited
            if attempt == STALE_ATTEMPTS - 1:
                raise
            print("the lake changed while waiting for its lease; planning again", file=sys.stderr)
            ex, p = _plan(args, ex)
            if not args.json:
                print(plan_text(p.to_dict()))
    assert res is not None
    if args.json:
        emit(res.to_dict(), True)
    elif not p.up_to_date:
        print(f"replay {p.replay_id} done in {res.seconds:.1f}s "
              f"({res.chunks} chunk(s) over {p.buckets} shard(s))")
        for t, v in res.versions.items():
            print(f"  {t}: version {v}, {res.counts[t]:,} rows")
        bad = [c.name for c in res.checks if not c.passed]
        print(f"  validation gate: {len(res.checks) - len(bad)} of {len(res.checks)} checks passed"
              + (f"; FAILED (published with --allow-failed-checks): {', '.join(bad)}" if bad else ""))
        if res.conservation_ok is not None:
            print(f"  conservation |bronze| = |silver| + |quarantine| + |duplicates|: "
                  f"{'ok' if res.conservation_ok else 'FAILED'}")
    return 0 if res.conservation_ok is not False else 1


def cmd_recover(args: argparse.Namespace) -> int:
    done = api.recover(args.lake, args.reason)
    if args.json:
        emit(done, True)
    else:
        print("\n".join(f"{d['replay_id']}: {d['outcome']}" for d in done) or "nothing to recover")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    emit(api.rollback(args.lake, args.replay_id, args.reason), args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    emit_rows(api.history(args.lake), args.json, "the ledger is empty",
              ["reprocessing_id", "kind", "status", "mode", "start_time", "end_time", "ruleset_name",
               "record_count", "conservation_ok", "target_id", "reason"])
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise UsageError(f"--start {args.start!r}: expected an RFC 3339 time like 2026-03-01T00:00:00Z") from None
    v2_start = None
    if args.v2_start:
        try:
            v2_start = datetime.fromisoformat(args.v2_start.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise UsageError(f"--v2-start {args.v2_start!r}: expected an RFC 3339 time") from None
    cfg = api.generator_config(events=args.events, tenants=args.tenants, days=args.days, seed=args.seed,
                               dup_rate=args.dup_rate, invalid_rate=args.invalid_rate,
                               late_rate=args.late_rate, start=start, v2_start=v2_start,
                               v2_share=args.v2_share)
    if args.to_kafka:
        emit(api.produce_history(cfg, args.bootstrap_servers, args.topic, args.kafka_config), args.json)
        return 0
    lake = api.open_lake(args.lake) if args.lake else None
    emit(api.generate_history(cfg, out=args.out, fmt=args.format, lake=lake, topic=args.topic),
         args.json)
    return 0


def _ingest_progress(stats: Any) -> None:
    lag = ", ".join(f"p{p}={n}" for p, n in sorted(stats.lag.items())) or "-"
    sys.stderr.write(f"ingest: {stats.messages:,} messages, {stats.rate():,.0f}/s, {stats.batches} "
                     f"batches committed, lag {lag}\n")
    sys.stderr.flush()


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = api.ingest_config(args.kafka_config, bootstrap_servers=args.bootstrap_servers,
                            topic=args.topic, group_id=args.group_id,
                            max_batch_messages=args.max_batch_messages,
                            max_batch_seconds=args.max_batch_seconds, until_idle=args.until_idle,
                            max_messages=args.max_messages)
    if not args.json:
        print(f"ingest {cfg.topic} -> {args.lake.root} with {api.redacted(cfg)}", file=sys.stderr)
    stats = api.ingest(args.lake, cfg, None if args.json else _ingest_progress)
    emit({"messages": stats.messages, "batches": stats.batches, "rows_erased": stats.erased,
          "dropped_batches": stats.dropped_batches, "retried_commits": stats.retried_commits,
          "lag": stats.lag}, args.json)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    tables = api.status(args.lake)
    fresh = api.freshness(args.lake)
    if args.json:
        emit({"tables": tables, "freshness": fresh}, True)
        return 0
    emit_rows(tables, False, "no tables")
    f = fresh
    lag = ("unknown: " + str(f.get("lag_reason"))) if f.get("lag_rows") is None else \
        f"{f['lag_rows']:,} rows, {f['lag_seconds']:.1f} s"
    print(f"freshness: Bronze version {f.get('bronze_version')} (latest ingestion "
          f"{f.get('bronze_latest_ingestion')}); Silver and Gold reflect Bronze version "
          f"{f.get('silver_bronze_version')}; lag {lag}")
    fol = f.get("follower")
    print(f"follower: {'running (session ' + str(fol['session']) + ', pid ' + str(fol['pid']) + ' on ' + str(fol['host']) + ')' if fol else 'not running'}")
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    ex = api.make_executor(_kind(args, "follow"), args.address)
    if args.json:  # one JSON object per line: each step, then the summary; text on stderr
        def line(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

        def step(rec: dict[str, Any]) -> None:
            print(json.dumps(rec, default=str, sort_keys=True), flush=True)
    else:
        def line(text: str) -> None:
            print(text, flush=True)

        step = None  # type: ignore[assignment]
    out = api.follow(args.lake, ex, args.ruleset, args.interval, args.until_idle, args.metrics_port,
                     args.max_steps, out=line, compact_every=args.compact_every, on_step=step,
                     reason=args.reason)
    if args.json:
        print(json.dumps({"event": "summary", **out}, default=str, sort_keys=True), flush=True)
    else:
        print(f"follower {out['session']} stopped: {out['steps']} steps, {out['rows_folded']:,} rows "
              f"folded, Bronze version {out['bronze_version']}", flush=True)
    return 0


def _parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param {item!r}: expected NAME=VALUE with NAME an identifier")
        out[name] = value
    return out


def cmd_sql(args: argparse.Namespace) -> int:
    tbl = api.sql(args.lake, args.query, _parse_params(args.param),
                  allow_local_files=args.allow_local_files)
    print(format_table(tbl, "json" if args.json else "csv" if args.csv else "table"))
    return 0


def _print_summary(summ: dict[str, pa.Table]) -> None:
    for name in ("plans", "flips", "top_tenants", "regions"):
        if name not in summ:
            continue
        print(f"== {name}")
        print(format_table(summ[name], "table"))


def cmd_diff(args: argparse.Namespace) -> int:
    if bool(args.table) == bool(args.summary):
        raise UsageError("give --table T for a row diff or --summary for the entitlement summary")
    if args.summary:
        res = api.summary(args.lake, args.from_ref, args.to_ref, args.sample)
        if args.json:
            emit({k: v.to_pylist() for k, v in res.items() if k != "tenant_changes"}, True)
        else:
            _print_summary(res)
        return 0
    d = api.diff(args.lake, args.table, args.from_ref, args.to_ref, args.sample)
    if args.json:
        emit(d.to_dict(), True)
        return 0
    print(f"{d.table}: version {d.from_version} -> {d.to_version}")
    print(f"schema: {d.schema}")
    print("rows: " + ", ".join(f"{k} {v:,}" for k, v in d.counts.items()))
    for col, info in d.columns.items():
        if info["changed_rows"]:
            print(f"  {col}: {info}")
    for kind, rows in d.samples.items():
        if rows:
            print(f"== sample {kind}")
            print(format_table(pa.Table.from_pylist(rows), "table"))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.list:
        emit_rows(api.experiments(args.lake), args.json, "no experiments")
        return 0
    if args.drop:
        api.drop(args.lake, args.drop)
        emit({"dropped": args.drop}, True) if args.json else print(f"dropped experiment {args.drop}")
        return 0
    if not args.candidate:
        raise UsageError("--candidate is required (or --list / --drop NAME)")
    exp = api.Experiment(args.lake, args.candidate, args.baseline, args.start, args.end,
                         args.tenant or None, args.name,
                         api.make_executor(_kind(args), args.address))
    res = exp.run()
    summ = res.summary()
    diffs = {t: res.diff(t, 3).counts for t in (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)}
    if args.report:
        from replay.report import write_report

        write_report(args.report, f"Experiment {res.name}: {res.candidate.name} vs {res.baseline}",
                     summ, diffs)
    if args.json:
        emit({"name": res.name, "scratch": res.scratch.root, "baseline": res.baseline,
              "candidate": res.candidate.fingerprint, "row_diffs": diffs,
              **{k: v.to_pylist() for k, v in summ.items() if k != "tenant_changes"}}, True)
        return 0
    print(f"experiment {res.name}: {res.candidate.name} ({res.candidate.fingerprint}) "
          f"vs {res.baseline}; scratch {res.scratch.root}")
    for t, c in diffs.items():
        print(f"  {t}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    _print_summary(summ)
    if args.report:
        print(f"report: {args.report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from replay.report import write_report

    summ = api.summary(args.lake, args.from_ref, args.to_ref)
    diffs = {t: api.diff(args.lake, t, args.from_ref, args.to_ref, 3).counts for t in schemas.GOLD_TABLES}
    write_report(args.out, f"Replay report: {args.from_ref} -> {args.to_ref or 'current'}", summ, diffs)
    emit({"report": str(args.out), "from": args.from_ref, "to": args.to_ref, "row_diffs": diffs},
         True) if args.json else print(f"report: {args.out}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    info = api.rules_catalog()
    if args.json:
        emit(info, True)
        return 0
    for r in info["rules"]:
        print(f"{r['name']}@{r['version']:<3} {r['layer']:<7} {r['description']}")
    for n, d in info["rulesets"].items():
        print(f"ruleset {n}: {d['rules']}  fingerprint {d['fingerprint']}")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    if args.user is not None and len(args.tenant) > 1:
        raise UsageError("--user names one person of one tenant: give a single --tenant")
    ex = None if args.dry_run else api.make_executor(_kind(args), args.address)
    done = [api.erase(args.lake, t, args.user, args.requested_at, args.reason, ex, args.dry_run)
            for t in args.tenant]  # one audited erasure each, in order
    if len(done) == 1:
        emit(done[0], args.json)
    elif args.json:
        emit(done, True)
    else:
        for d in done:
            emit(d, False)
            print()
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    emit(api.archive(args.lake, args.before, args.to, args.dry_run, args.reason), args.json)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    zorder = [c.strip() for c in args.zorder.split(",") if c.strip()] if args.zorder else None
    emit(api.optimize(args.lake, args.table or None, zorder, args.dry_run, args.reason), args.json)
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    emit(api.vacuum(args.lake, args.retain_hours, args.dry_run, args.reason), args.json)
    return 0


COMMANDS = {
    "import": cmd_import, "plan": cmd_plan, "run": cmd_run, "recover": cmd_recover,
    "rollback": cmd_rollback, "history": cmd_history, "generate": cmd_generate,
    "ingest": cmd_ingest, "status": cmd_status, "follow": cmd_follow, "sql": cmd_sql, "diff": cmd_diff,
    "experiment": cmd_experiment, "report": cmd_report, "rules": cmd_rules,
    "optimize": cmd_optimize, "vacuum": cmd_vacuum, "erase": cmd_erase, "archive": cmd_archive,
}
