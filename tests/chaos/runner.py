"""Seeded schedules of real `replay` processes against one lake, SIGKILLed at random points.

A schedule (:func:`make_schedule`) is a list of operations a seed fixes: two `replay ingest`
of one consumer group on a real broker, `replay import` of files, `replay follow`, replays
that change the rules, rollbacks, erasures, `vacuum`, `optimize` and `archive`. Each starts
at its time; some are SIGKILLed after a delay (then `replay recover` runs, and a killed
ingester or follower is started again, as an operator would). A producer sends messages to
the topic the whole time. After the schedule the lake is drained (ingesters until idle),
recovered, erasures that did not complete are run again, Silver and Gold are brought up to
date, and :func:`check` asserts the invariants of issue 22:

- Bronze holds every produced message exactly once, minus the erased subjects' rows;
- every imported row exactly once, minus the erased ones;
- no erased row in Bronze, its archive or any Silver table, and no readable version before
  an erasure's floor;
- no ledger row ``running``;
- Silver and Gold equal a full replay of the final Bronze (the tests' reference);
- no process died of an unexpected error (a Python traceback or an unexpected exception
  class): refusals (exit 2) and clean failures (exit 1, one line) are allowed.

Everything is reproducible from the seed, printed on failure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate, to_jsonl
from engine.lake.bronze import archive_of
from engine.lifecycle import tombstones
from replay import api
from tests.lakes import ROOT, assert_same_tables

TENANTS = 6
ERASABLE = ("tenant-00001", "tenant-00002")
#: What a process may answer under concurrency besides success: a refusal (exit 2: a
#: rollback of tables changed since, a version a vacuum or erasure made unreadable, a stale
#: plan) or one of these clean failures (exit 1: it waited for the lease in vain). Anything
#: else (exit 1 for another reason, a traceback, an unexpected exception class) is a bug.
WAITED = ("is running on this lake", "another follower is running", "waited")


@dataclass(frozen=True)
class Op:
    at: float  # seconds after the schedule's start
    kind: str
    arg: str = ""
    kill_after: float | None = None  # SIGKILL this long after it started


def make_schedule(seed: int, ops: int = 10) -> list[Op]:
    """The operations of one schedule: what, when, and which are killed (all from ``seed``)."""
    rnd = random.Random(seed)
    out = [Op(0.0, "ingest", "a", rnd.choice([None, None, rnd.uniform(2, 8)])),
           Op(0.2, "ingest", "b", rnd.choice([None, None, rnd.uniform(2, 8)])),
           Op(rnd.uniform(1.0, 3.0), "run", "2026-01", None)]
    kinds = ["import", "follow", "run", "rollback", "erase", "vacuum", "optimize", "archive",
             "import", "run"]
    for _ in range(ops):
        kind = rnd.choice(kinds)
        arg = {"run": rnd.choice(["2026-01", "2026-02"]), "erase": rnd.choice(ERASABLE),
               "vacuum": rnd.choice(["168", "168", "0"]), "import": str(rnd.randrange(10**6))
               }.get(kind, "")
        kill = rnd.uniform(0.3, 6.0) if rnd.random() < 0.35 else None
        out.append(Op(rnd.uniform(1.0, 16.0), kind, arg, kill))
    return sorted(out, key=lambda o: o.at)


@dataclass
class Ran:
    op: Op
    argv: list[str]
    returncode: int | None = None
    stderr: str = ""
    killed: bool = False


@dataclass
class Chaos:
    """One schedule against one lake (a directory, or an s3:// URI with ``storage``)."""

    seed: int
    workdir: Path
    bootstrap: str
    topic: str
    lake_uri: str
    storage: dict[str, str] | None = None
    ran: list[Ran] = field(default_factory=list)
    produced: list[bytes] = field(default_factory=list)
    imported: dict[str, pa.Table] = field(default_factory=dict)

    # --- processes -------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {**os.environ, "MEDALLION_LEASE_WAIT": "30", "PYTHONUNBUFFERED": "1"}
        env.pop("MEDALLION_FAULT_AFTER_COMMITS", None)
        if self.storage:
            env["MEDALLION_STORAGE_OPTIONS"] = json.dumps(self.storage)
        return env

    def _argv(self, op: Op) -> list[str] | None:
        L = ["--lake", self.lake_uri]
        if op.kind == "ingest":
            return ["ingest", *L, "--topic", self.topic, "--group-id", "chaos",
                    "--bootstrap-servers", self.bootstrap, "--until-idle", "4",
                    "--max-batch-seconds", "0.5"]
        if op.kind == "import":  # odd: a Bronze Parquet archive with old ingestion dates
            fmt = "bronze-parquet" if int(op.arg) % 2 else "jsonl"
            path = self.workdir / f"import-{op.arg}.{'parquet' if int(op.arg) % 2 else 'jsonl'}"
            if op.arg not in self.imported:
                t = generate(GeneratorConfig(events=300, tenants=TENANTS, days=1.0, seed=int(op.arg),
                                             start=datetime(2026, 2, 28, 12, tzinfo=UTC),
                                             dup_rate=0.05, invalid_rate=0.02))
                t = t.set_column(t.schema.get_field_index("kafka_topic"), "kafka_topic",
                                 pa.array([path.name] * t.num_rows, pa.string()))
                if fmt == "jsonl":
                    path.write_bytes(to_jsonl(t))
                else:
                    pq.write_table(t, path)
                self.imported[op.arg] = t
            return ["import", *L, "--format", fmt, str(path)]
        if op.kind == "follow":
            return ["follow", *L, "--until-idle", "3", "--interval", "0.3", "--executor", "local"]
        if op.kind == "run":
            return ["run", *L, "--ruleset", op.arg, "--reason", "chaos", "--executor", "local"]
        if op.kind == "rollback":
            done = [r for r in self._history() if r["kind"] == "replay" and r["status"] == "success"]
            if not done:
                return None
            return ["rollback", *L, done[-1]["reprocessing_id"], "--reason", "chaos"]
        if op.kind == "erase":
            return ["erase", *L, "--tenant", op.arg, "--reason", "chaos", "--executor", "local"]
        if op.kind == "vacuum":
            return ["vacuum", *L, "--retain-hours", op.arg]
        if op.kind == "optimize":
            return ["optimize", *L]
        if op.kind == "archive":
            return ["archive", *L, "--before", "2026-03-01", "--to", self._archive_uri()]
        if op.kind == "recover":
            return ["recover", *L]
        raise ValueError(op.kind)

    def _archive_uri(self) -> str:
        return (self.lake_uri.rstrip("/") + "-archive") if self.storage else str(
            Path(self.lake_uri).parent / "archive")

    def _start(self, op: Op) -> tuple[Ran, subprocess.Popen] | None:
        argv = self._argv(op)
        if argv is None:
            return None
        # --debug: a failure's traceback lands in the report (an unexpected exception still
        # says "rerun with --debug", which the check looks for)
        p = subprocess.Popen([sys.executable, "-m", "replay", *argv, "--debug"], cwd=ROOT, env=self._env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        r = Ran(op, argv)
        self.ran.append(r)
        return r, p

    def _history(self) -> list[dict[str, Any]]:
        try:
            return api.history(self.lake())
        except Exception:
            return []

    def lake(self) -> Any:
        return api.open_lake(self.lake_uri, self.storage)

    def _produce(self, stop: threading.Event) -> None:
        """Send generated messages to the topic in small batches until ``stop``."""
        from engine.ingest.kafka import produce

        batch = 0
        while not stop.is_set():
            t = generate(GeneratorConfig(events=200, tenants=TENANTS, days=0.02,
                                         seed=self.seed * 1000 + batch, invalid_rate=0.02))
            produce(t, self.bootstrap, self.topic)
            self.produced += t.column("raw_payload").to_pylist()
            batch += 1
            stop.wait(0.7)

    def run(self) -> None:
        schedule = make_schedule(self.seed)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(stop,), daemon=True)
        producer.start()
        t0 = time.monotonic()
        live: list[tuple[Ran, subprocess.Popen, float | None]] = []
        pending = list(schedule)
        try:
            while pending or live:
                now = time.monotonic() - t0
                while pending and pending[0].at <= now:
                    started = self._start(pending.pop(0))
                    if started is not None:
                        r, p = started
                        live.append((r, p, None if r.op.kill_after is None else now + r.op.kill_after))
                for item in list(live):
                    r, p, kill_at = item
                    if p.poll() is not None:
                        r.returncode, r.stderr = p.returncode, p.stderr.read()
                        live.remove(item)
                        if r.killed:
                            self._after_kill(r.op, pending, now)
                    elif kill_at is not None and now >= kill_at:
                        p.send_signal(signal.SIGKILL)
                        r.killed = True
                if now > 18.0:
                    stop.set()
                time.sleep(0.05)
        finally:
            stop.set()
            producer.join(120)
            for _r, p, _ in live:
                p.kill()
        self._settle()

    def _after_kill(self, op: Op, pending: list[Op], now: float) -> None:
        """An operator's answer to a killed process: recover; start ingest and follow again."""
        pending.insert(0, Op(now, "recover"))
        if op.kind in ("ingest", "follow"):
            pending.append(Op(now + 0.5, op.kind, op.arg))
        pending.sort(key=lambda o: o.at)

    def _run_now(self, op: Op) -> Ran:
        started = self._start(op)
        assert started is not None
        r, p = started
        _, r.stderr = p.communicate(timeout=600)
        r.returncode = p.returncode
        return r

    def _settle(self) -> None:
        """Drain, recover, finish erasures, bring Silver and Gold up to date."""
        ingest = [self._start(Op(0, "ingest", x)) for x in ("a", "b")]
        for started in ingest:
            assert started is not None
            r, p = started
            _, r.stderr = p.communicate(timeout=600)
            r.returncode = p.returncode
        self._run_now(Op(0, "recover"))
        for r in self._history():
            if r["kind"] == "erasure" and r["status"] == "failed":
                for tenant in ERASABLE:  # the ledger names only the subject's hash
                    if tombstones.subject_hash(tenant) == r["tenants"]:
                        self._run_now(Op(0, "erase", tenant))
        active = "2026-01"
        lk = self.lake()
        if lk.exists(schemas.MINUTE):
            active = lk.commit_metadata(schemas.MINUTE).get("ruleset_name") or active
        final = self._run_now(Op(0, "run", active))
        assert final.returncode == 0, self.describe(f"the final replay failed: {final.stderr}")

    # --- the invariants ---------------------------------------------------------------
    def describe(self, what: str) -> str:
        lines = [f"chaos seed {self.seed} ({self.lake_uri}): {what}", "schedule:"]
        lines += [f"  {o}" for o in make_schedule(self.seed)]
        lines.append("ledger:")
        for r in self._history():
            fails = [c for c in json.loads(r.get("checks") or "[]") if not c.get("passed")]
            lines.append(f"  {r['reprocessing_id']} {r['kind']} {r['status']} {r['mode']} "
                         f"before={r['versions_before']} after={r['versions_after']} "
                         f"{(r['details'] or '')[:160]} {fails or ''}")
        lines.append("processes:")
        lines += [f"  {' '.join(r.argv[:1] + r.argv[3:])} -> {r.returncode}"
                  f"{' (killed)' if r.killed else ''} {r.stderr.strip()[-300 if r.returncode == 0 else -3000:]}"
                  for r in self.ran]
        return "\n".join(lines)

    def check(self, tmp: Path) -> None:
        lk = self.lake()
        for r in self.ran:  # no process died of an unexpected error
            if r.killed:
                continue
            bad = r.returncode not in (0, 1, 2) or "rerun with --debug" in r.stderr \
                or (r.returncode == 1 and not any(w in r.stderr for w in WAITED))
            assert not bad, self.describe(f"{r.argv[0]} ended {r.returncode}: {r.stderr[-800:]}")
        rows = [r for r in api.history(lk) if r["status"] == "running"]
        assert not rows, self.describe(f"ledger rows left running: {rows}")
        stones = tombstones.load(lk)
        arch = archive_of(lk)
        parts = [lk.read(schemas.BRONZE)]
        if arch is not None and arch.lake.exists(schemas.BRONZE):
            parts.append(arch.lake.read(schemas.BRONZE))
        bronze = pa.concat_tables(parts)

        def kept(values: list[bytes]) -> list[bytes]:
            if not stones or not values:
                return values
            mask = tombstones.belonging_mask(pa.array(values, pa.binary()), stones)
            return [v for v, gone in zip(values, mask.to_pylist(), strict=True) if not gone]

        # Kafka: every produced message exactly once, minus the erased
        ours = bronze.filter(pc.equal(bronze.column("kafka_topic"), self.topic))
        keys = ours.select(["kafka_partition", "kafka_offset"]).group_by(
            ["kafka_partition", "kafka_offset"]).aggregate([([], "count_all")])
        assert keys.num_rows == ours.num_rows, self.describe("a Kafka message is in Bronze twice")
        want = sorted(kept(self.produced))
        got = sorted(ours.column("raw_payload").to_pylist())
        assert got == want, self.describe(f"Kafka messages: {len(got)} in Bronze, {len(want)} expected")
        # imports: every row exactly once, minus the erased
        for arg, table in self.imported.items():
            if not any(r.op.kind == "import" and r.op.arg == arg and r.returncode == 0 for r in self.ran):
                continue  # never completed (killed): a partial import is not promised
            src = f"import-{arg}.{'parquet' if int(arg) % 2 else 'jsonl'}"
            mine = bronze.filter(pc.equal(bronze.column("kafka_topic"), src))
            want_i = sorted(kept(table.column("raw_payload").to_pylist()))
            assert sorted(mine.column("raw_payload").to_pylist()) == want_i, self.describe(
                f"import {src}: {mine.num_rows} rows in Bronze, {len(want_i)} expected")
        # no erased row anywhere readable
        if stones:
            assert not pc.any(tombstones.belonging_mask(bronze.column("raw_payload"), stones)).as_py(), \
                self.describe("an erased row is in Bronze")
        # Silver and Gold equal a full replay of the final Bronze
        ref = api.open_lake(tmp / f"ref-{self.seed}")
        from engine.ingest.importers import append_new

        append_new(ref, bronze, "ref", {"source": "chaos reference"})
        ruleset = lk.commit_metadata(schemas.MINUTE).get("ruleset_name")
        api.run(ref, ruleset, reason="reference")
        assert_same_tables(lk, ref)
