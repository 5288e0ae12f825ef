"""Kafka -> Bronze, exactly once.

Every batch is one Delta commit that carries its rows *and* the next offset of each
topic-partition as a Delta application transaction (``medallion-ingest/<topic>/<p>``),
as kafka-delta-ingest does. On start and after every rebalance the consumer seeks to
the offsets recorded in Delta, not only the group's. Before a commit the ingester
checks that Delta still expects exactly the offsets its batch starts at: an ingester
that lost its partitions (a zombie) finds them moved on and drops its batch. The commit
is fenced on the snapshot it checked; when another writer commits first (an ingester of
the same group on other partitions, an import, maintenance), the ingester checks the new
version: if its partitions' offsets did not move there, it commits the same batch on top
of it (a few attempts, jittered backoff); otherwise, or after the last attempt, it drops
the batch and reads each of its partitions again from the offset Delta records, or from
the batch's first offset where Delta records none yet. Group offsets are committed after
each Delta commit, so lag shows in standard Kafka tools.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from deltalake import DeltaTable, Transaction
from pydantic import BaseModel, ConfigDict, Field

from engine.contract import schemas
from engine.contract.errors import CommitConflictError, UsageError
from engine.ingest.importers import backoff, bronze_rows, commit_fenced, discard, stage_rows
from engine.lake.staging import Staged
from engine.lake.tables import Lake
from engine.lifecycle.tombstones import drop_erased

#: attempts of one batch's commit whose race another writer won while none of its partitions moved
COMMIT_ATTEMPTS = 5
SECRET_WORDS = ("password", "secret", "key", "token", "credential")


def app_id(topic: str, partition: int) -> str:
    return f"medallion-ingest/{topic}/{partition}"


def read_kafka_config(path: str | Path | None) -> dict[str, str]:
    """librdkafka settings from a ``key=value`` file (SASL/SSL, ...); ``#`` starts a comment."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--kafka-config {p}: no such file")
    out = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UsageError(f"--kafka-config {p}:{n}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def redact(config: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in config.items()}


@dataclass
class IngestStats:
    messages: int = 0
    batches: int = 0
    #: batches not committed (their messages are read again): a partition of theirs moved on
    #: in Delta, or their commit lost its race every attempt
    dropped_batches: int = 0
    #: commits tried again after losing a race to a writer that left the batch's partitions alone
    retried_commits: int = 0
    #: messages dropped because they belong to an erased subject (docs/semantics.md §9)
    erased: int = 0
    started: float = field(default_factory=time.monotonic)
    first_message_at: float | None = None  # after the group join: when data started flowing
    lag: dict[str, int] = field(default_factory=dict)

    def rate(self) -> float:
        el = time.monotonic() - self.started
        return self.messages / el if el > 0 else 0.0


class IngestConfig(BaseModel):
    """One ingester's settings (frozen; unknown keys and out-of-range values refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "localhost:9092"
    topic: str = Field(default="api-usage-events", min_length=1)
    group_id: str = Field(default="medallion-replay-ingest", min_length=1)
    max_batch_messages: int = Field(default=50_000, ge=1)
    max_batch_seconds: float = Field(default=5.0, gt=0)
    until_idle: float | None = Field(default=None, ge=0)
    max_messages: int | None = Field(default=None, ge=1)
    kafka_config: dict[str, str] = Field(default_factory=dict)


class Ingester:
    """One consumer in a group; appends batches to Bronze with their offsets, exactly once."""

    def __init__(self, lake: Lake, cfg: IngestConfig,
                 report: Callable[[IngestStats], None] | None = None) -> None:
        if lake.bronze_root:
            raise UsageError("ingest into a production lake, not an experiment")
        self.lake, self.cfg, self.report = lake, cfg, report
        self.stats = IngestStats()
        self._stop = False
        self._owned: set[int] = set()
        self._assigned_at: float | None = None
        conf = {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.message.max.bytes": 8 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            # librdkafka logs every failed reconnect while a broker is down; the loop reports
            # progress itself, so only critical client logs reach stderr (override: --kafka-config)
            "log_level": 2,
            # a crashed ingester's partitions move to the others after 10 s, not 45 s
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 2000,
            **cfg.kafka_config,
        }
        self.consumer = Consumer(conf)
        self.lake.ensure(schemas.BRONZE)

    # --- offsets recorded in Delta -------------------------------------------------------
    def delta_offset(self, partition: int, dt: Any = None) -> int | None:
        dt = dt or self.lake.table(schemas.BRONZE)
        return dt.transaction_version(app_id(self.cfg.topic, partition))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            recorded = self.delta_offset(tp.partition)
            # Delta is the only record of what this lake consumed: a partition it has no
            # offset for is read from its beginning, whatever the group's committed offsets
            # say (they may come from another lake, e.g. one rebuilt from scratch)
            tp.offset = recorded if recorded is not None else OFFSET_BEGINNING
            self._owned.add(tp.partition)
        consumer.assign(partitions)
        if self._assigned_at is None:
            self._assigned_at = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._owned.discard(tp.partition)
        self._pending = [m for m in self._pending if m.partition() in self._owned]

    # --- the loop --------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> IngestStats:
        self._pending: list[Any] = []
        self.consumer.subscribe([self.cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        batch_started = time.monotonic()
        last_message = time.monotonic()
        try:
            while not self._stop:
                want = self.cfg.max_batch_messages - len(self._pending)
                if self.cfg.max_messages is not None:
                    want = min(want, self.cfg.max_messages - self.stats.messages - len(self._pending))
                msgs = self.consumer.consume(num_messages=max(1, want), timeout=0.5) if want > 0 else []
                errors = list(filter(None, map(Message.error, msgs)))  # C-level: no bytecode per message
                if errors:
                    for err in errors:
                        if err.code() != KafkaError._PARTITION_EOF and not err.retriable() and err.fatal():
                            raise KafkaException(err)
                    msgs = [m for m in msgs if m.error() is None]
                self._pending.extend(msgs)
                if msgs and self.stats.first_message_at is None:
                    self.stats.first_message_at = time.monotonic()
                if msgs or (self._assigned_at is not None and last_message < self._assigned_at):
                    last_message = time.monotonic()  # idle time counts from the first assignment
                full = len(self._pending) >= self.cfg.max_batch_messages
                due = time.monotonic() - batch_started >= self.cfg.max_batch_seconds
                capped = self.cfg.max_messages is not None and \
                    self.stats.messages + len(self._pending) >= self.cfg.max_messages
                if self._pending and (full or due or capped):
                    self.flush()
                    batch_started = time.monotonic()
                if capped:
                    break
                if self.cfg.until_idle is not None:
                    # before any assignment, allow the group join a grace period on top
                    grace = 0.0 if self._assigned_at is not None else 60.0
                    if time.monotonic() - last_message >= self.cfg.until_idle + grace:
                        break
            self.flush()
        finally:
            self.consumer.close()
        return self.stats

    def flush(self) -> None:
        """Commit the pending batch to Bronze (rows + offsets in one Delta commit).

        No Python runs per message: partitions and offsets are gathered with C-level ``map``
        over the client's method descriptors, ordered by (partition, offset) with NumPy, and
        the messages reordered by one ``itemgetter`` call."""
        if not self._pending:
            return
        msgs, self._pending = self._pending, []
        n = len(msgs)
        part = np.fromiter(map(Message.partition, msgs), np.int64, n)
        off = np.fromiter(map(Message.offset, msgs), np.int64, n)
        order = np.lexsort((off, part))
        part, off = part[order], off[order]
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        ends = np.r_[starts[1:], n]
        keep = np.zeros(n, dtype=bool)
        txns = []
        #: partition -> (the batch's first offset of it, the offset Delta records for it or None)
        firsts: dict[int, tuple[int, int | None]] = {}
        skipped = False
        snapshot = self.lake.table(schemas.BRONZE)  # the offsets are checked against this version
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):  # one pass per partition
            p = int(part[lo])
            expected = self.delta_offset(p, snapshot)
            if expected is not None and int(off[lo]) != expected:
                # Delta moved on (another ingester) or lags (we read ahead of it): re-seek there.
                skipped = True
                self._seek(p, expected)
                continue
            keep[lo:hi] = True
            firsts[p] = (int(off[lo]), expected)
            txns.append(Transaction(app_id(self.cfg.topic, p), int(off[hi - 1]) + 1))
        if skipped:
            self.stats.dropped_batches += 1
        if not txns:
            return
        picked = order[keep]
        kept = operator.itemgetter(*picked.tolist())(msgs) if len(picked) > 1 else (msgs[picked[0]],)
        rows = self._rows(kept, part[keep], off[keep])
        if not self._commit(snapshot, rows, txns, firsts):
            return
        self.stats.messages += len(kept)
        self.stats.batches += 1
        with contextlib.suppress(KafkaException):  # group offsets are for lag tools; Delta holds the truth
            self.consumer.commit(offsets=[TopicPartition(self.cfg.topic, int(t.app_id.rsplit("/", 1)[1]),
                                                         t.version) for t in txns], asynchronous=False)
        self._update_lag()
        if self.report:
            self.report(self.stats)

    def _commit(self, snapshot: DeltaTable, rows: pa.Table, txns: list[Transaction],
                firsts: dict[int, tuple[int, int | None]]) -> bool:
        """Commit ``rows`` with the offsets ``txns``, fenced on ``snapshot``; False: dropped.

        A lost race (any commit since ``snapshot``: another ingester of the group, an import,
        maintenance) is retried on the new version when no partition of the batch moved there
        (Delta still records the offsets the batch starts at), up to :data:`COMMIT_ATTEMPTS`
        times with a jittered backoff. Otherwise (another ingester committed one of them: a
        rebalance handed it over) the batch is dropped and each of its partitions read again
        from the offset Delta records, or from the batch's first one when Delta records none.
        """
        from engine.lifecycle.tombstones import TABLE as TOMBSTONES

        # docs/semantics.md §9: rows of erased subjects are dropped; the tombstones are read after
        # the snapshot (an erasure records its tombstone, then commits a barrier: a commit fenced
        # on an older snapshot fails), and again before a retry whenever they changed since
        stones = self.lake.version(TOMBSTONES)
        rows, erased = drop_erased(self.lake, rows)
        staged: Staged | None = stage_rows(self.lake, schemas.BRONZE, rows)
        meta = {"op": "ingest", "topic": self.cfg.topic, "offsets": {t.app_id: t.version for t in txns}}
        try:
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                assert staged is not None
                try:
                    commit_fenced(self.lake, snapshot, schemas.BRONZE, staged, meta, txns)
                except CommitConflictError:
                    pass  # nothing references the staged files: they may be committed again
                except BaseException:
                    staged = None  # the commit may have landed all the same: its files stay
                    raise
                else:
                    staged = None  # the commit references them
                    self.stats.erased += erased
                    return True
                if attempt == COMMIT_ATTEMPTS:
                    break
                time.sleep(backoff(attempt))
                snapshot = self.lake.refresh(schemas.BRONZE, snapshot)  # the winner's, or later
                if any(self.delta_offset(p, snapshot) != rec for p, (_, rec) in firsts.items()):
                    break  # another ingester committed a partition of the batch
                now = self.lake.version(TOMBSTONES)
                if now != stones:  # an erasure since: drop its subject's rows too
                    stones = now
                    rows, more = drop_erased(self.lake, rows)
                    if more:
                        erased += more
                        discard(self.lake, schemas.BRONZE, staged)
                        staged = None
                        staged = stage_rows(self.lake, schemas.BRONZE, rows)
                self.stats.retried_commits += 1
        finally:
            discard(self.lake, schemas.BRONZE, staged)
        snapshot = self.lake.refresh(schemas.BRONZE, snapshot)
        for p, (first, _) in firsts.items():
            recorded = self.delta_offset(p, snapshot)
            self._seek(p, first if recorded is None else recorded)
        self.stats.dropped_batches += 1
        return False

    def _seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` again from ``offset`` (if it is still this ingester's)."""
        if partition in self._owned:
            self.consumer.seek(TopicPartition(self.cfg.topic, partition, offset))

    def _rows(self, msgs: tuple[Any, ...], part: np.ndarray, off: np.ndarray) -> pa.Table:
        """Bronze rows of the batch's messages (ordered by partition and offset).

        Each field is gathered with C-level ``map`` over the method descriptors (no Python
        bytecode per message) and every column is then built vectorized."""
        n = len(msgs)
        raw = pa.array(list(map(Message.value, msgs)), pa.binary())
        stamps = np.fromiter(itertools.chain.from_iterable(map(Message.timestamp, msgs)), np.int64,
                             2 * n).reshape(-1, 2)
        ts = pa.array(stamps[:, 1] * 1000, pa.int64(), mask=stamps[:, 0] == TIMESTAMP_NOT_AVAILABLE)
        keys = pa.array(list(map(Message.key, msgs)), pa.binary())
        return bronze_rows(raw, self.cfg.topic, pa.array(part, pa.int32()), pa.array(off, pa.int64()),
                           datetime.now(UTC), ts.cast(schemas.TS), keys)

    def _update_lag(self) -> None:
        for part in sorted(self._owned):
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.cfg.topic, part),
                                                              cached=True)
                pos = self.delta_offset(part) or 0
                self.stats.lag[str(part)] = max(0, high - pos)
            except KafkaException:
                pass


def ingest(lake: Lake, cfg: IngestConfig, report: Callable[[IngestStats], None] | None = None
           ) -> IngestStats:
    """Run an ingester until stopped (SIGINT/SIGTERM flush, commit and return)."""
    ing = Ingester(lake, cfg, report)
    prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in prev:
        signal.signal(s, ing.stop)
    try:
        return ing.run()
    finally:
        for s, h in prev.items():
            signal.signal(s, h)


def produce(rows: pa.Table, bootstrap_servers: str, topic: str,
            kafka_config: dict[str, str] | None = None) -> int:
    """Send Bronze-shaped rows' payloads with an idempotent producer, key = tenant_id."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
                  "linger.ms": 20, "batch.num.messages": 10000, "compression.type": "lz4",
                  "message.max.bytes": 4 * 1024 * 1024, "log_level": 3, **(kafka_config or {})})
    errors: list[str] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    values = rows.column("raw_payload").to_pylist()
    keys = rows.column("tenant_id").to_pylist() if "tenant_id" in rows.column_names else [None] * len(values)
    for v, k in zip(values, keys, strict=True):
        while True:
            try:
                p.produce(topic, value=v, key=k.encode() if k else None, on_delivery=done)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(120)
    if errors:
        raise RuntimeError(f"{len(errors)} messages were not delivered: {errors[0]}")
    return len(values)


def print_progress(stats: IngestStats, stream: Any = sys.stderr) -> None:
    lag = ", ".join(f"p{p}={n}" for p, n in sorted(stats.lag.items())) or "-"
    stream.write(f"ingest: {stats.messages:,} messages, {stats.rate():,.0f}/s, {stats.batches} batches "
                 f"committed, lag {lag}\n")
    stream.flush()
