"""The ``replay`` command line: a thin layer over :mod:`replay.api`.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from engine import schemas
from engine.errors import ReplayError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage + exit 2; keep it one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser, lake: bool = True) -> None:
    if lake:
        p.add_argument("--lake", default="./lake", help="lake directory or URI (default ./lake)")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                       help="delta-rs storage option for an object-store lake (repeatable; also "
                            "MEDALLION_STORAGE_OPTIONS as a JSON object)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="replay", description="medallion-replay: replay API-usage history through versioned rules")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser)

    p = sub.add_parser("import", help="append a JSONL file or a Bronze Parquet archive to Bronze")
    _common(p)
    p.add_argument("path")
    p.add_argument("--format", choices=["jsonl", "bronze-parquet"], default="jsonl")
    p.add_argument("--topic", help="logical source name for jsonl (default: the file name)")

    for name, helptext in (("run", "replay Bronze -> Silver -> Gold with a ruleset"),
                           ("plan", "show what a replay with a ruleset would recompute, and why")):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--ruleset", required=True, help="built-in name (2026-01, 2026-02) or a TOML file")
        p.add_argument("--mode", choices=["auto", "full", "gold"], default="auto")
        p.add_argument("--executor", choices=["local", "ray"], default="ray",
                       help="ray (default: a local Ray, or --address) or local (in this process)")
        p.add_argument("--address", help="Ray cluster address to join (default: start a local one)")
        p.add_argument("--shards", type=int, help="number of tenant shards (default: from CPUs)")
        p.add_argument("--task-memory", help="memory budget of one shard task, e.g. 512MiB (default 2GiB); "
                                             "a bigger shard is folded in ingestion-time chunks")
        p.add_argument("--start", help="event-time range start (widened to the hour), e.g. 2026-03-02T13:00Z")
        p.add_argument("--end", help="event-time range end, exclusive (widened to the hour)")
        p.add_argument("--tenant", action="append", default=[], help="restrict to a tenant (repeatable)")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
            p.add_argument("--reason", help="why this replay runs (required; recorded in the ledger)")
            p.add_argument("--checks", help="directory of extra *.sql checks (each returns failing rows)")
            p.add_argument("--allow-failed-checks", action="store_true",
                           help="publish even if the validation gate fails (recorded in the ledger)")

    p = sub.add_parser("recover", help="settle a replay a dead driver left half-committed")
    _common(p)
    p = sub.add_parser("rollback", help="restore every table of a replay to its version before")
    _common(p)
    p.add_argument("replay_id")
    p.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    p = sub.add_parser("history", help="the audit ledger: replays, rollbacks, recoveries")
    _common(p)

    p = sub.add_parser("generate", help="write a deterministic synthetic history")
    _common(p, lake=False)
    p.add_argument("--lake", help="write straight into this lake's Bronze")
    p.add_argument("--out", help="output file (see --format)")
    p.add_argument("--format", choices=["jsonl", "bronze-parquet"], default="jsonl")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dup-rate", type=float, default=0.02)
    p.add_argument("--invalid-rate", type=float, default=0.01)
    p.add_argument("--late-rate", type=float, default=0.01)
    p.add_argument("--start", default="2026-03-01T00:00:00Z", help="first event time (RFC 3339)")
    p.add_argument("--to-kafka", action="store_true", help="produce the events to Kafka instead")
    p.add_argument("--bootstrap-servers", default="localhost:9092")
    p.add_argument("--topic", default="api-usage-events")
    p.add_argument("--kafka-config", help="librdkafka settings file (key=value)")

    p = sub.add_parser("ingest", help="consume Kafka into Bronze, exactly once")
    _common(p)
    p.add_argument("--bootstrap-servers", default="localhost:9092")
    p.add_argument("--topic", default="api-usage-events")
    p.add_argument("--group-id", default="medallion-replay-ingest")
    p.add_argument("--max-batch-messages", type=int, default=50_000)
    p.add_argument("--max-batch-seconds", type=float, default=5.0)
    p.add_argument("--until-idle", type=float, metavar="SECONDS", help="stop after this long without messages")
    p.add_argument("--max-messages", type=int, help="stop after this many messages")
    p.add_argument("--kafka-config", help="librdkafka settings file (key=value; SASL/SSL, ...)")

    p = sub.add_parser("status", help="tables, versions, row counts and rulesets of a lake")
    _common(p)

    p = sub.add_parser("sql", help="run DuckDB SQL over the lake's tables")
    _common(p)
    p.add_argument("query")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="bind $NAME in the query to VALUE (repeatable)")

    p = sub.add_parser("diff", help="compare a table (or Gold's entitlements) between two versions")
    _common(p)
    p.add_argument("--table", help="the table to diff (row diff on its key)")
    p.add_argument("--summary", action="store_true",
                   help="entitlement summary of Gold: per plan, tenant flips, top tenants")
    p.add_argument("--from", dest="from_ref", required=True,
                   help="a Delta version, a replay id, or REPLAY_ID:before")
    p.add_argument("--to", dest="to_ref", help="as --from (default: the current version)")
    p.add_argument("--sample", type=int, default=10, help="rows of each kind to show")

    p = sub.add_parser("experiment", help="replay a candidate ruleset into a scratch area and compare")
    _common(p)
    p.add_argument("--candidate", help="built-in ruleset name or TOML file")
    p.add_argument("--baseline", help="ruleset to compare with (default: the production tables)")
    p.add_argument("--name", help="scratch area name (default: from the candidate)")
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--tenant", action="append", default=[])
    p.add_argument("--executor", choices=["local", "ray"], default="ray")
    p.add_argument("--address")
    p.add_argument("--report", help="also write a self-contained HTML report to this file")
    p.add_argument("--list", action="store_true", help="list scratch areas")
    p.add_argument("--drop", metavar="NAME", help="delete a scratch area")

    p = sub.add_parser("report", help="write an HTML report of a replay's changes (or an experiment's)")
    _common(p)
    p.add_argument("--from", dest="from_ref", required=True, help="replay id, or REPLAY_ID:before")
    p.add_argument("--to", dest="to_ref", help="replay id (default: the current tables)")
    p.add_argument("--out", required=True, help="HTML file to write")

    p = sub.add_parser("rules", help="list rule versions and built-in rulesets")
    _common(p, lake=False)
    return ap


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str, sort_keys=True))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{k}: {v}")
    else:
        print(obj)


def _progress(rows: int = 0, stream=sys.stderr):
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


def _plan_text(p: dict[str, Any]) -> str:
    lines = [f"replay plan {p['replay_id']}  (lake {p['lake']})",
             f"ruleset: {p['ruleset_name']}  fingerprint {p['ruleset_fingerprint']}"]
    if p["up_to_date"]:
        lines.append("up to date: nothing to recompute")
        return "\n".join(lines)
    lines.append(f"mode: {p['mode']}  ({'Bronze -> Silver -> Gold' if p['mode'] == 'full' else 'Silver -> Gold'})")
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


def _rows_out(rows: list[dict[str, Any]], as_json: bool, empty: str,
              columns: list[str] | None = None) -> None:
    """A list of records as JSON, or as a text table (optionally only ``columns``)."""
    if as_json:
        _print(rows, True)
    elif not rows:
        print(empty)
    else:
        shown = [{c: r[c] for c in columns} for r in rows] if columns else rows
        print(_table_out(pa.Table.from_pylist(shown), "table"))


def _parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param {item!r}: expected NAME=VALUE with NAME an identifier")
        out[name] = value
    return out


def _table_out(tbl: pa.Table, fmt: str) -> str:
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


def _storage_options(items: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    env = os.environ.get("MEDALLION_STORAGE_OPTIONS")
    if env:
        try:
            opts.update({str(k): str(v) for k, v in json.loads(env).items()})
        except (ValueError, AttributeError):
            raise UsageError("MEDALLION_STORAGE_OPTIONS must be a JSON object of strings") from None
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option {item!r}: expected KEY=VALUE")
        opts[key] = value
    return opts


def dispatch(args: argparse.Namespace) -> int:
    from replay import api

    if getattr(args, "lake", None) is not None:
        args.lake = api.open_lake(args.lake, _storage_options(getattr(args, "storage_option", [])))

    if args.cmd == "import":
        res = api.import_file(args.lake, args.path, args.format, args.topic)
        _print({"source": res.source, "rows_read": res.rows_read, "rows_added": res.rows_added,
                "rows_skipped": res.rows_skipped, "bronze_version": res.bronze_version}, args.json)
        return 0
    if args.cmd in ("run", "plan"):
        if args.shards is not None and args.shards < 1:
            raise UsageError("--shards must be at least 1")
        ex = api.make_executor(args.executor, args.address)
        if args.cmd == "run" and not args.dry_run:
            for d in api.recover_if_needed(args.lake):
                print(f"recovered interrupted replay {d['replay_id']}: {d['outcome']}", file=sys.stderr)
        plan = api.plan(args.lake, args.ruleset, args.mode, ex, args.shards, args.start, args.end,
                        args.tenant or None, args.task_memory)
        if args.cmd == "plan" or args.dry_run:
            _print(plan.to_dict(), True) if args.json else print(_plan_text(plan.to_dict()))
            return 0
        if not args.reason and not plan.up_to_date:
            raise UsageError("--reason is required for a replay (it is recorded in the audit ledger)")
        if not args.json:
            print(_plan_text(plan.to_dict()))
        from engine.runner import execute
        from rules.rulesets import load_ruleset

        res = execute(api.open_lake(args.lake), plan, load_ruleset(args.ruleset), ex,
                      None if args.json else _progress(plan.rows), args.reason, args.checks,
                      args.allow_failed_checks)
        out = res.to_dict()
        if args.json:
            _print(out, True)
        elif plan.up_to_date:
            pass
        else:
            print(f"replay {res.plan.replay_id} done in {res.seconds:.1f}s "
                  f"({res.chunks} chunk(s) over {plan.buckets} shard(s))")
            for t, v in res.versions.items():
                print(f"  {t}: version {v}, {res.counts[t]:,} rows")
            bad = [c.name for c in res.checks if not c.passed]
            print(f"  validation gate: {len(res.checks) - len(bad)} of {len(res.checks)} checks passed"
                  + (f"; FAILED (published with --allow-failed-checks): {', '.join(bad)}" if bad else ""))
            if res.conservation_ok is not None:
                print(f"  conservation |bronze| = |silver| + |quarantine| + |duplicates|: "
                      f"{'ok' if res.conservation_ok else 'FAILED'}")
        return 0 if res.conservation_ok is not False else 1
    if args.cmd == "recover":
        done = api.recover(args.lake)
        if args.json:
            _print(done, True)
        else:
            print("\n".join(f"{d['replay_id']}: {d['outcome']}" for d in done) or "nothing to recover")
        return 0
    if args.cmd == "rollback":
        _print(api.rollback(args.lake, args.replay_id, args.reason), args.json)
        return 0
    if args.cmd == "history":
        _rows_out(api.history(args.lake), args.json, "the ledger is empty",
                  ["reprocessing_id", "kind", "status", "mode", "start_time", "end_time", "ruleset_name",
                   "record_count", "conservation_ok", "target_id", "reason"])
        return 0
    if args.cmd == "generate":
        from engine.generator import GeneratorConfig

        try:
            start = datetime.fromisoformat(args.start.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise UsageError(f"--start {args.start!r}: expected an RFC 3339 time like 2026-03-01T00:00:00Z") from None
        for name in ("dup_rate", "invalid_rate", "late_rate"):
            if not 0 <= getattr(args, name) <= 1:
                raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if args.events < 0 or args.tenants < 1 or args.days <= 0:
            raise UsageError("--events must be >= 0, --tenants >= 1 and --days > 0")
        cfg = GeneratorConfig(events=args.events, tenants=args.tenants, days=args.days, seed=args.seed,
                              dup_rate=args.dup_rate, invalid_rate=args.invalid_rate,
                              late_rate=args.late_rate, start=start)
        t0 = time.perf_counter()
        if args.to_kafka:
            from engine.generator import generate
            from engine.kafka_ingest import produce, read_kafka_config

            n = produce(generate(cfg), args.bootstrap_servers, args.topic, read_kafka_config(args.kafka_config))
            _print({"produced": n, "topic": args.topic, "seconds": round(time.perf_counter() - t0, 3)},
                   args.json)
            return 0
        info = api.generate_history(cfg, out=args.out, fmt=args.format, lake=args.lake)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        _print(info, args.json)
        return 0
    if args.cmd == "ingest":
        from engine.kafka_ingest import (
            IngestConfig,
            _print_progress,
            ingest,
            read_kafka_config,
            redact,
        )

        for name in ("max_batch_messages", "max_messages"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        cfg = IngestConfig(args.bootstrap_servers, args.topic, args.group_id, args.max_batch_messages,
                           args.max_batch_seconds, args.until_idle, args.max_messages,
                           read_kafka_config(args.kafka_config))
        if not args.json:
            shown = redact({"bootstrap.servers": cfg.bootstrap_servers, "group.id": cfg.group_id,
                            **cfg.kafka_config})
            print(f"ingest {cfg.topic} -> {args.lake.root} with {shown}", file=sys.stderr)
        stats = ingest(args.lake, cfg, None if args.json else _print_progress)
        _print({"messages": stats.messages, "batches": stats.batches,
                "dropped_batches": stats.dropped_batches, "lag": stats.lag}, args.json)
        return 0
    if args.cmd == "status":
        _rows_out(api.status(args.lake), args.json, "no tables")
        return 0
    if args.cmd == "sql":
        tbl = api.sql(args.lake, args.query, _parse_params(args.param))
        print(_table_out(tbl, "json" if args.json else args.format))
        return 0
    if args.cmd == "diff":
        if bool(args.table) == bool(args.summary):
            raise UsageError("give --table T for a row diff or --summary for the entitlement summary")
        if args.summary:
            res = api.summary(args.lake, args.from_ref, args.to_ref, args.sample)
            if args.json:
                _print({k: v.to_pylist() for k, v in res.items() if k != "tenant_changes"}, True)
            else:
                for name in ("plans", "flips", "top_tenants"):
                    print(f"== {name}")
                    print(_table_out(res[name], "table"))
            return 0
        d = api.diff(args.lake, args.table, args.from_ref, args.to_ref, args.sample)
        if args.json:
            _print(d.to_dict(), True)
        else:
            print(f"{d.table}: version {d.from_version} -> {d.to_version}")
            print(f"schema: {d.schema}")
            print("rows: " + ", ".join(f"{k} {v:,}" for k, v in d.counts.items()))
            for col, info in d.columns.items():
                if info["changed_rows"]:
                    print(f"  {col}: {info}")
            for kind, rows in d.samples.items():
                if rows:
                    print(f"== sample {kind}")
                    print(_table_out(pa.Table.from_pylist(rows), "table"))
        return 0
    if args.cmd == "experiment":
        if args.list:
            _rows_out(api.experiments(args.lake), args.json, "no experiments")
            return 0
        if args.drop:
            api.drop(args.lake, args.drop)
            print(f"dropped experiment {args.drop}")
            return 0
        if not args.candidate:
            raise UsageError("--candidate is required (or --list / --drop NAME)")
        exp = api.Experiment(args.lake, args.candidate, args.baseline, args.start, args.end,
                             args.tenant or None, args.name, api.make_executor(args.executor, args.address))
        res = exp.run()
        summ = res.summary()
        diffs = {t: res.diff(t, 3).counts for t in (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)}
        if args.report:
            from replay.report import write_report

            write_report(args.report, f"Experiment {res.name}: {res.candidate.name} vs {res.baseline}",
                         summ, diffs)
        if args.json:
            _print({"name": res.name, "scratch": res.scratch.root, "baseline": res.baseline,
                    "candidate": res.candidate.fingerprint, "row_diffs": diffs,
                    **{k: v.to_pylist() for k, v in summ.items() if k != "tenant_changes"}}, True)
        else:
            print(f"experiment {res.name}: {res.candidate.name} ({res.candidate.fingerprint}) "
                  f"vs {res.baseline}; scratch {res.scratch.root}")
            for t, c in diffs.items():
                print(f"  {t}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
            for name in ("plans", "flips", "top_tenants"):
                print(f"== {name}")
                print(_table_out(summ[name], "table"))
            if args.report:
                print(f"report: {args.report}")
        return 0
    if args.cmd == "report":
        from replay.report import write_report

        summ = api.summary(args.lake, args.from_ref, args.to_ref)
        diffs = {t: api.diff(args.lake, t, args.from_ref, args.to_ref, 3).counts for t in schemas.GOLD_TABLES}
        write_report(args.out, f"Replay report: {args.from_ref} -> {args.to_ref or 'current'}", summ, diffs)
        print(f"report: {args.out}")
        return 0
    if args.cmd == "rules":
        from rules.base import default_registry
        from rules.builtin import RULESETS
        from rules.rulesets import load_ruleset

        reg = default_registry()
        info = {
            "rules": [{"name": n, "version": v, "layer": reg.get(n, v).layer,
                       "description": reg.get(n, v).description} for n, v in reg.versions()],
            "rulesets": {n: {"fingerprint": load_ruleset(n).fingerprint, "rules": spec}
                         for n, spec in RULESETS.items()},
        }
        if args.json:
            _print(info, True)
        else:
            for r in info["rules"]:
                print(f"{r['name']}@{r['version']:<3} {r['layer']:<7} {r['description']}")
            for n, d in info["rulesets"].items():
                print(f"ruleset {n}: {d['rules']}  fingerprint {d['fingerprint']}")
        return 0
    raise UsageError("a command is required (see 'replay --help')")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return dispatch(args)
    except ReplayError as exc:
        if debug:
            traceback.print_exc()
        print(f"replay: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("replay: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if debug:
            traceback.print_exc()
        first = " ".join(str(exc).splitlines()[0].split()) if str(exc) else ""
        print(f"replay: error: {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
