"""``replay follow``: keep Silver and Gold current as Bronze grows, one incremental step at a time.

A follower is a long-running loop over :func:`engine.batch.apply.run` in mode ``auto``,
which is an incremental step whenever Bronze only grew (docs/semantics.md §11) and a full or Gold
replay when it must be (first build, Bronze compacted before being folded):

- **One follower per lake**: it holds the ``follower`` lease for its whole life (its
  heartbeat tells ``replay status`` that a follower runs). It takes the lake's write
  lease for one step at a time, so ``replay run --ruleset NEW``, ``replay rollback`` and
  lifecycle operations wait at most one step (``MEDALLION_LEASE_WAIT``), never get refused.
- **Rule changes**: each step folds with the lake's *active* ruleset (the one its Gold was
  built with). After someone's rule-change replay, the next step continues with the new
  ruleset from that replay's Bronze version; after a rollback, with the old one.
  ``--ruleset`` only chooses the ruleset of a lake that has none yet.
- **Crash safety**: a step is an ordinary audited replay (ledger row ``running`` with every
  table's version before). SIGKILL at any point leaves at most one such row, which the
  next start (or any command) settles: every table before or after, never a mix. The
  key index is checked against Silver before each step and rebuilt when it lags.
- **Ledger**: one ``follow`` row per session (steps, rows folded, Bronze versions). A
  successful incremental step's own row is folded into it; full or Gold replays the
  follower had to run keep their rows.
- **Signals**: SIGTERM or SIGINT finish the current step, close the session row, exit 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.batch import audit
from engine.batch.apply import execute, operator_name, recover_if_needed
from engine.batch.plan import active_ruleset, build_plan, new_replay_id
from engine.config import environment
from engine.contract import schemas
from engine.contract.errors import (
    LakeError,
    LeaseHeldError,
    ReplayError,
    StalePlanError,
    UsageError,
)
from engine.execution.specs import Executor
from engine.lake.lease import lease_for
from engine.lake.tables import Lake, table_cache
from engine.live.freshness import freshness
from rules.ruleset import Ruleset


class FollowConfig(BaseModel):
    """How a follower runs (``replay follow`` flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval: float = Field(default=1.0, gt=0)
    #: stop once no row was folded for this many seconds (None: run until signalled)
    until_idle: float | None = Field(default=None, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: stop after this many steps that folded rows (tests, benches; None: no limit)
    max_steps: int | None = Field(default=None, ge=1)
    #: compact the files steps add (Silver, the key index, Gold) every this many steps (0: never)
    compact_every: int = Field(default=500, ge=0)
    #: why the follower runs: its session's ledger row records it
    reason: str = "replay follow"


@dataclass
class FollowStats:
    session_id: str
    steps: int = 0
    rows: int = 0
    replays: list[str] = field(default_factory=list)
    first_version: int | None = None
    last_version: int | None = None
    last_success: float | None = None

    def details(self, rows: int = 0, version: int | None = None, since: int | None = None) -> str:
        """The session row's summary (with one more step of ``rows`` up to ``version``)."""
        steps, total = self.steps + (1 if version is not None else 0), self.rows + rows
        first = self.first_version if self.first_version is not None else since
        last = version if version is not None else self.last_version
        return (f"{steps} steps folded {total} Bronze rows (Bronze versions {first} -> {last})"
                + (f"; replays run: {', '.join(self.replays)}" if self.replays else ""))


class _Metrics:
    """Prometheus metrics of a follower (``--metrics-port``), from prometheus-client."""

    def __init__(self, port: int) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            start_http_server,
        )

        reg = CollectorRegistry()
        self.rows = Counter("medallion_follow_rows_folded", "Bronze rows folded by steps", registry=reg)
        self.steps = Counter("medallion_follow_steps", "Steps that folded rows", registry=reg)
        self.duration = Histogram("medallion_follow_step_seconds", "Duration of a step", registry=reg,
                                  buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.lag_seconds = Gauge("medallion_follow_lag_seconds",
                                 "Age of the oldest Bronze row Gold does not reflect yet", registry=reg)
        self.lag_rows = Gauge("medallion_follow_lag_rows", "Bronze rows Gold does not reflect yet",
                              registry=reg)
        self.last_success = Gauge("medallion_follow_last_success_timestamp_seconds",
                                  "Unix time of the last successful step", registry=reg)
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=reg)

    def close(self) -> None:
        self.server.shutdown()


#: Steps in a row that may fail with a lake error before the follower gives up.
MAX_FAILED_STEPS = 5


class Follower:
    """The follow loop; :meth:`run` returns when stopped (signal, ``until_idle``, ``max_steps``)."""

    def __init__(self, lake: Lake, executor: Executor, cfg: FollowConfig,
                 ruleset: Ruleset | None = None, out: Callable[[str], None] = print,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``out`` gets one line of text per event (steps, waits, compactions); ``on_step``
        gets each step that folded rows as a record (``replay follow --json``'s lines)."""
        self.lake, self.executor, self.cfg, self.ruleset, self.out = lake, executor, cfg, ruleset, out
        self.on_step = on_step
        self.stop = threading.Event()
        self.stats = FollowStats("f" + new_replay_id()[1:])

    def _ruleset(self) -> Ruleset:
        try:
            return active_ruleset(self.lake)
        except UsageError:
            if self.ruleset is None:
                raise UsageError(f"lake {self.lake.root} has no active ruleset yet; give --ruleset "
                                 "for the first build") from None
            return self.ruleset

    def _signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, lambda *_: self.stop.set())

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
        return restore

    def run(self) -> FollowStats:
        holder = lease_for(self.lake, self.stats.session_id, name="follower")
        try:
            holder.acquire()
        except LeaseHeldError as exc:
            raise LeaseHeldError(f"another follower is running on this lake ({exc})") from None
        restore = self._signals()
        metrics = None
        opened = False
        try:
            metrics = _Metrics(self.cfg.metrics_port) if self.cfg.metrics_port is not None else None
            self._open_session()
            opened = True
            self._loop(metrics, holder)
        finally:
            restore()
            if metrics is not None:
                metrics.close()
            try:
                if opened:
                    self._close_session()
            finally:
                holder.release()
        return self.stats

    def _ledger(self) -> Any:
        """The lake's write lease, for the follower's own ledger rows: every ledger change is a
        read-modify-write of the whole table, made by the lease holder only."""
        return lease_for(self.lake, self.stats.session_id, wait=environment().lease_wait)

    def _open_session(self) -> None:
        recover_if_needed(self.lake)
        with self._ledger():
            for r in audit.rows(self.lake):  # we hold the follower lease: other sessions are dead
                if r["kind"] == "follow" and r["status"] == "running":
                    audit.update(self.lake, r["reprocessing_id"], status="failed",
                                 end_time=audit.now(),
                                 details=f"{r['details'] or ''}; the follower died (no clean stop)"[:500])
            audit.append(self.lake, {
                "reprocessing_id": self.stats.session_id, "kind": "follow",
                "start_time": audit.now(), "status": "running", "operator": operator_name(),
                "mode": "follow", "reason": f"{self.cfg.reason} (interval {self.cfg.interval:g} s)",
                "details": "started"})

    def _close_session(self) -> None:
        with self._ledger():
            audit.update(self.lake, self.stats.session_id, status="success", end_time=audit.now(),
                         bronze_version=self.stats.last_version, record_count=self.stats.rows,
                         details=self.stats.details())

    def _loop(self, metrics: _Metrics | None, holder: Any) -> None:
        idle_since = time.monotonic()
        failures = 0
        while not self.stop.is_set():
            if holder.lost:  # another follower took over (this one stalled past its lease)
                raise LeaseHeldError("this follower lost the follower lease to another one")
            try:
                folded = self.step(metrics)
                failures = 0
            except ReplayError as exc:
                # a lake error can be a reader racing a vacuum's log cleanup: the next look
                # opens the table afresh; a lasting one stops the follower
                failures += 1
                if not (exc.retryable or isinstance(exc, LakeError)) or failures > MAX_FAILED_STEPS:
                    raise
                self.out(f"step failed, retrying in {self.cfg.interval:g} s: {exc}")
                folded = 0
            now = time.monotonic()
            if folded:
                idle_since = now
                every = self.cfg.compact_every
                if every and self.stats.steps and self.stats.steps % every == 0:
                    self.compact()
            if self.cfg.max_steps is not None and self.stats.steps >= self.cfg.max_steps:
                return
            if self.cfg.until_idle is not None and now - idle_since >= self.cfg.until_idle:
                self.out(f"idle for {self.cfg.until_idle:g} s: stopping")
                return
            if not folded:
                self.stop.wait(self.cfg.interval)

    def step(self, metrics: _Metrics | None = None) -> int:
        """One step: fold what Bronze gained (or replay what must be). Returns rows folded."""
        with table_cache():
            return self._step(metrics)

    def _step(self, metrics: _Metrics | None) -> int:
        t0 = time.perf_counter()
        try:
            recover_if_needed(self.lake)
            gold = self.lake.commit_metadata(schemas.MINUTE) if self.lake.exists(schemas.MINUTE) else {}
            ruleset = self._ruleset()
            plan = build_plan(self.lake, ruleset, executor=self.executor.name,
                              cpus=self.executor.cpus(), follow=True)
            if plan.gold_replay_id != gold.get("replay_id"):  # a replay landed in between
                return 0
            st = self.stats

            def fold() -> None:  # under the step's lease: its row goes into the session's
                if plan.mode == "incremental":
                    audit.fold_step(self.lake, plan.replay_id, st.session_id,
                                    details=st.details(plan.rows, plan.bronze_version, plan.since_version),
                                    bronze_version=plan.bronze_version, record_count=st.rows + plan.rows,
                                    ruleset_name=ruleset.name, ruleset_after=ruleset.fingerprint)

            res = execute(self.lake, plan, ruleset, self.executor,
                          reason=f"follower {self.stats.session_id}", on_success=fold)
        except (LeaseHeldError, StalePlanError) as exc:  # a replay or rollback runs: next tick
            self.out(f"waiting: {exc}")
            return 0
        seconds = time.perf_counter() - t0
        plan = res.plan
        if plan.mode is None:
            self._lag(metrics)
            return 0
        st = self.stats
        st.steps += 1
        st.first_version = plan.since_version if st.first_version is None else st.first_version
        st.last_version = plan.bronze_version
        st.last_success = time.time()
        if plan.mode == "incremental":
            st.rows += plan.rows
        else:
            st.replays.append(plan.replay_id)
        fresh = self._lag(metrics)
        if metrics is not None:
            metrics.rows.inc(plan.rows)
            metrics.steps.inc()
            metrics.duration.observe(seconds)
            metrics.last_success.set(st.last_success)
        if self.on_step is not None:
            self.on_step({"event": "step", "replay_id": plan.replay_id, "mode": plan.mode,
                          "ruleset": ruleset.name, "rows_folded": plan.rows,
                          "bronze_version": plan.bronze_version, "seconds": round(seconds, 3),
                          "lag_rows": fresh["lag_rows"], "lag_seconds": fresh["lag_seconds"]})
        self.out(f"step {plan.replay_id} ({plan.mode}, {ruleset.name}): folded {plan.rows} rows up "
                 f"to Bronze v{plan.bronze_version} in {seconds:.2f} s; lag {fresh['lag_rows']} rows, "
                 f"{fresh['lag_seconds']:.1f} s")
        return max(plan.rows, 1)

    def compact(self) -> None:
        """Merge the small files steps added (a neutral optimize, audited like any other)."""
        from engine.lifecycle.optimize import compact_live

        t0 = time.perf_counter()
        try:
            out = compact_live(self.lake, f"follower {self.stats.session_id}: compaction")
        except LeaseHeldError as exc:
            self.out(f"compaction skipped: {exc}")
            return
        removed = sum(v.get("files_merged", 0) for v in out.values() if isinstance(v, dict))
        self.out(f"compacted {removed} small files in {time.perf_counter() - t0:.2f} s")

    def _lag(self, metrics: _Metrics | None) -> dict[str, Any]:
        fresh = freshness(self.lake)
        if metrics is not None:
            metrics.lag_rows.set(fresh["lag_rows"])
            metrics.lag_seconds.set(fresh["lag_seconds"])
        return fresh


def follower_running(lake: Lake) -> dict[str, Any] | None:
    """The live follower's lease body (owner, pid, host, heartbeat), or None."""
    lease = lease_for(lake, "status", name="follower")
    info = lease.read()
    if info is None or lease.expired(info):
        return None
    return info


