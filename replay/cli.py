"""The ``replay`` command line: a thin layer over :mod:`replay.api`.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line on stderr;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from engine.contract.errors import ReplayError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage + exit 2; keep it one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common(p: argparse.ArgumentParser, lake: bool = True) -> None:
    """The flags every command takes (the CLI convention, README "Command-line convention")."""
    if lake:
        p.add_argument("--lake", default="./lake", help="lake directory or URI (default ./lake)")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                       help="delta-rs storage option for an object-store lake (repeatable; also "
                            "MEDALLION_STORAGE_OPTIONS as a JSON object)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: one JSON document on stdout (text goes to stderr)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _executor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["auto", "local", "ray"], default="auto",
                   help="auto (default): Ray for work over history (replays, experiments, "
                        "erasures; a cluster with --address), this process for incremental "
                        "steps and follow; local: this process; ray: a local Ray or --address")
    p.add_argument("--address", help="Ray cluster address to join (implies the Ray executor)")


def _reason(p: argparse.ArgumentParser, required: bool, default: str | None = None) -> None:
    """Every command that writes the ledger takes --reason; it is required where the
    operation changes what the tables hold (a replay, rollback, erasure)."""
    what = "required" if required else f"default: {default!r}" if default else "optional"
    p.add_argument("--reason", required=required, default=default,
                   help=f"why (recorded in the audit ledger; {what})")


def _scope(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", help="event-time range start (widened to the hour), e.g. 2026-03-02T13:00Z")
    p.add_argument("--end", help="event-time range end, exclusive (widened to the hour)")
    p.add_argument("--tenant", action="append", default=[], help="restrict to a tenant (repeatable)")


def _dry_run(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dry-run", action="store_true", help=f"{what}; change nothing")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="replay", description="medallion-replay: replay API-usage history through "
                 "versioned rules. Every command takes --lake, --json and --debug; see README "
                 "'Command-line convention'.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("import", help="append a JSONL file or a Bronze Parquet archive to Bronze")
    _common(p)
    p.add_argument("path", help="the file to import")
    p.add_argument("--format", choices=["jsonl", "bronze-parquet"], default="jsonl",
                   help="the input file's format (default jsonl)")
    p.add_argument("--topic", help="logical source name for jsonl (default: the file name)")

    for name, helptext in (("run", "replay Bronze -> Silver -> Gold with a ruleset"),
                           ("plan", "show what a replay with a ruleset would recompute, and why")):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--ruleset", required=True, help="built-in name (2026-01, 2026-02, free-100, dedup-fix; see 'replay rules') or a TOML file")
        p.add_argument("--mode", choices=["auto", "full", "gold", "incremental"], default="auto",
                       help="auto (default): the least that makes every table exact; incremental "
                            "folds only the Bronze rows added since (docs/semantics.md §11)")
        _executor(p)
        p.add_argument("--shards", type=int, help="number of tenant shards (default: from CPUs)")
        p.add_argument("--task-memory", help="memory budget of one shard task, e.g. 512MiB (default 2GiB); "
                                             "a bigger shard is folded in ingestion-time chunks")
        _scope(p)
        if name == "run":
            _dry_run(p, "print the plan")
            p.add_argument("--reason", help="why this replay runs (recorded in the audit ledger; "
                                            "required unless the lake is up to date)")
            p.add_argument("--checks", help="directory of extra *.sql checks (each returns failing rows)")
            p.add_argument("--allow-failed-checks", action="store_true",
                           help="publish even if the validation gate fails (recorded in the ledger)")

    p = sub.add_parser("recover", help="settle a replay a dead driver left half-committed")
    _common(p)
    _reason(p, False, "recover an interrupted replay")
    p = sub.add_parser("rollback", help="restore every table of a replay to its version before")
    _common(p)
    p.add_argument("replay_id", help="the replay to roll back (see 'replay history')")
    _reason(p, True)
    p = sub.add_parser("history", help="the audit ledger: replays, rollbacks, recoveries")
    _common(p)

    p = sub.add_parser("generate", help="write a deterministic synthetic history")
    _common(p, lake=False)
    p.add_argument("--lake", help="write straight into this lake's Bronze")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="delta-rs storage option for an object-store --lake (repeatable)")
    p.add_argument("--out", help="output file (see --format)")
    p.add_argument("--format", choices=["jsonl", "bronze-parquet"], default="jsonl",
                   help="the output file's format (default jsonl)")
    p.add_argument("--events", type=int, default=100_000, help="number of events (default 100000)")
    p.add_argument("--tenants", type=int, default=200, help="number of tenants (default 200)")
    p.add_argument("--days", type=float, default=1.0, help="days of history (default 1)")
    p.add_argument("--seed", type=int, default=42, help="random seed: same seed, same history (default 42)")
    p.add_argument("--dup-rate", type=float, default=0.02,
                   help="share of events delivered more than once (default 0.02)")
    p.add_argument("--invalid-rate", type=float, default=0.01,
                   help="share of malformed or invalid messages (default 0.01)")
    p.add_argument("--late-rate", type=float, default=0.01,
                   help="share of events ingested late (default 0.01)")
    p.add_argument("--start", default="2026-03-01T00:00:00Z", help="first event time (RFC 3339)")
    p.add_argument("--v2-start", help="schema v2 traffic (user_id, data_residency_region) from this "
                                      "time on (default: the second half of the history)")
    p.add_argument("--v2-share", type=float, default=1.0,
                   help="share of the events from --v2-start on that carry the v2 fields")
    p.add_argument("--to-kafka", action="store_true", help="produce the events to Kafka instead")
    p.add_argument("--bootstrap-servers", default="localhost:9092",
                   help="Kafka brokers for --to-kafka (default localhost:9092)")
    p.add_argument("--topic", default="api-usage-events",
                   help="Kafka topic; with --lake/--out the rows' kafka_topic (Bronze keeps one row per "
                        "topic, partition and offset: give another history another topic)")
    p.add_argument("--kafka-config", help="librdkafka settings file (key=value)")

    p = sub.add_parser("ingest", help="consume Kafka into Bronze, exactly once")
    _common(p)
    p.add_argument("--bootstrap-servers", default="localhost:9092",
                   help="Kafka brokers (default localhost:9092)")
    p.add_argument("--topic", default="api-usage-events", help="topic to consume (default api-usage-events)")
    p.add_argument("--group-id", default="medallion-replay-ingest",
                   help="consumer group: ingesters of one group share the partitions")
    p.add_argument("--max-batch-messages", type=int, default=50_000,
                   help="commit a Bronze batch after this many messages (default 50000)")
    p.add_argument("--max-batch-seconds", type=float, default=5.0,
                   help="commit a Bronze batch at least this often, in seconds (default 5)")
    p.add_argument("--until-idle", type=float, metavar="SECONDS", help="stop after this long without messages")
    p.add_argument("--max-messages", type=int, help="stop after this many messages")
    p.add_argument("--kafka-config", help="librdkafka settings file (key=value; SASL/SSL, ...)")

    p = sub.add_parser("status", help="tables, versions, row counts, rulesets and freshness of a lake")
    _common(p)

    p = sub.add_parser("follow", help="keep Silver and Gold current as Bronze grows (incremental steps)")
    _common(p)
    p.add_argument("--ruleset", help="ruleset of a lake that has none yet (default: the lake's "
                                     "active ruleset, followed through rule-change replays)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between looks at Bronze when idle (default 1)")
    _executor(p)
    p.add_argument("--until-idle", type=float, metavar="SECONDS",
                   help="stop after this long without new Bronze rows")
    p.add_argument("--max-steps", type=int, help="stop after this many steps that folded rows")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--compact-every", type=int, default=500, metavar="STEPS",
                   help="compact the small files steps add every this many steps (default 500; 0: never)")
    _reason(p, False, "replay follow")

    p = sub.add_parser("sql", help="run one read-only DuckDB query (SELECT) over the lake's tables")
    _common(p)
    p.add_argument("query", help="one SELECT over the lake's tables by name; $NAME binds --param")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a text table")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="bind $NAME in the query to VALUE (repeatable)")
    p.add_argument("--allow-local-files", action="store_true",
                   help="let the query read local files too (read_csv('/path/x.csv')...); by "
                        "default it reads only the lake's tables. Still one SELECT: never writes")

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
    _scope(p)
    _executor(p)
    p.add_argument("--report", help="also write a self-contained HTML report to this file")
    p.add_argument("--list", action="store_true", help="list scratch areas")
    p.add_argument("--drop", metavar="NAME", help="delete a scratch area")

    p = sub.add_parser("report", help="write an HTML report of a replay's changes (or an experiment's)")
    _common(p)
    p.add_argument("--from", dest="from_ref", required=True, help="replay id, or REPLAY_ID:before")
    p.add_argument("--to", dest="to_ref", help="replay id (default: the current tables)")
    p.add_argument("--out", required=True, help="HTML file to write")

    p = sub.add_parser("erase", help="GDPR erasure of a tenant or one person (docs/semantics.md §9), audited")
    _common(p)
    p.add_argument("--tenant", action="append", required=True,
                   help="the tenant to erase, or the person's tenant (repeatable: one audited "
                        "erasure per tenant, in order)")
    p.add_argument("--user", help="erase only this person (user_id) of the tenant (one --tenant)")
    p.add_argument("--requested-at", help="when the request was received, RFC 3339 (default: now)")
    _reason(p, True)
    _executor(p)
    _dry_run(p, "count the rows")

    p = sub.add_parser("archive", help="move Bronze rows ingested before a date to an archive")
    _common(p)
    p.add_argument("--before", required=True, help="ingestion date (YYYY-MM-DD): older rows move")
    p.add_argument("--to", required=True, help="archive location: a directory or an object-store URI")
    _reason(p, False, "archive")
    _dry_run(p, "show the dates and rows")

    p = sub.add_parser("optimize", help="compact small files and Z-order (rows move, never change)")
    _common(p)
    p.add_argument("--table", action="append", default=[], help="only this table (repeatable)")
    p.add_argument("--zorder", metavar="COL,...",
                   help="Z-order columns (default: tenant_id,event_timestamp for Bronze and Silver)")
    _reason(p, False, "optimize")
    _dry_run(p, "show the files per table")

    p = sub.add_parser("vacuum", help="remove files and log entries older than the retention")
    _common(p)
    p.add_argument("--retain-hours", type=int, default=168,
                   help="keep what versions of the last H hours need (default 168; 0 purges)")
    _reason(p, False, "vacuum")
    _dry_run(p, "count what would be removed")

    p = sub.add_parser("rules", help="list rule versions and built-in rulesets")
    _common(p, lake=False)
    return ap


def dispatch(args: argparse.Namespace) -> int:
    """Open the lake (options: MEDALLION_STORAGE_OPTIONS, then --storage-option) and run the command."""
    from replay import api
    from replay.commands import COMMANDS

    if args.cmd is None:
        raise UsageError("a command is required (see 'replay --help')")
    if getattr(args, "lake", None) is not None:
        where = args.lake
        args.lake = api.open_lake(args.lake, _storage_options(getattr(args, "storage_option", [])))
        if args.cmd in NEEDS_LAKE and not api.lake_exists(args.lake):
            raise UsageError(f"no lake at {where} (neither Bronze nor a ledger there); create one "
                             "with 'replay import' or 'replay ingest', or check --lake")
    return COMMANDS[args.cmd](args)


#: Commands that read or change an existing lake: a missing one is a usage error (exit 2),
#: never an empty answer. ``import``, ``ingest`` and ``generate --lake`` create it; ``follow``
#: may start before the first ingest and waits for Bronze.
NEEDS_LAKE = frozenset({"plan", "run", "recover", "rollback", "history", "status", "sql", "diff",
                        "experiment", "report", "erase", "archive", "optimize", "vacuum"})


def _storage_options(items: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option {item!r}: expected KEY=VALUE")
        opts[key] = value
    return opts


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


def run() -> None:
    """The ``replay`` executable: :func:`main`, then a clean process exit.

    delta-rs's and Arrow's native threads can abort the interpreter's teardown ("terminate
    called without an active exception", a SIGABRT after the work is done and its output
    printed). The exit code must be the command's, so the process leaves without that
    teardown, after flushing its output and shutting down an embedded Ray.
    """
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
