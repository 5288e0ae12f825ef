"""Configuration: frozen pydantic models (unknown keys refused), passed explicitly.

This is the one place that reads ``MEDALLION_*`` environment variables
(:func:`environment`) and the one place that applies process-wide settings
(:func:`start_process`: Arrow's memory pool, DuckDB's default thread count).
Nothing happens at import time: entry points (the CLI, the Python API, shard
workers) call :func:`start_process` explicitly.

| variable | meaning |
|---|---|
| ``MEDALLION_STORAGE_OPTIONS`` | JSON object of delta-rs storage options for an object-store lake |
| ``MEDALLION_ARROW_POOL`` | Arrow allocator: ``system`` (default), ``mimalloc``, ``jemalloc`` |
| ``MEDALLION_DUCKDB_THREADS`` | DuckDB threads per query where a task sets none (default: every core) |
| ``MEDALLION_FAULT_AFTER_COMMITS`` | test hook: the driver dies after N table commits |
| ``MEDALLION_FAULT_KILL_ONCE`` | test hook: ``stage:marker`` kills a worker once in ``map`` or ``reduce`` |
| ``MEDALLION_LEASE_WAIT`` | seconds a replay, rollback or lifecycle operation waits for the lake's lease (default 120) |
| ``MEDALLION_COMMIT_WAIT`` | seconds an import keeps retrying a Bronze commit that other writers' commits beat (default 600) |
| ``MEDALLION_FAULT_LOSE_RACES`` | test hook: the first N fenced Bronze commits of this process lose their race |
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Literal, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.contract import sql
from engine.contract.errors import UsageError

M = TypeVar("M", bound=BaseModel)
MiB = 1 << 20
GiB = 1 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": MiB, "mb": 1000**2,
          "mib": MiB, "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}


class ReplayConfig(BaseModel):
    """How a replay is cut into tasks.

    - ``shards``: tenant shards (reduce tasks); None: twice the cluster's CPUs, or more
      so that each fits ``task_memory`` (:func:`engine.batch.plan.shard_count`).
    - ``task_memory``: bytes one reduce task may use for a chunk's working set; a shard
      whose rows need more is folded in ingestion-time chunks (dedup state carried).
    - ``rows_per_map_task``: Bronze/Silver rows one map task reads.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    shards: int | None = Field(default=None, ge=1)
    task_memory: int = Field(default=2 * GiB, ge=MiB)
    rows_per_map_task: int = Field(default=1_000_000, ge=1)


def parse_size(text: str | int, flag: str = "--task-memory") -> int:
    """``512MiB``, ``2G``, ``1500000000`` -> bytes (binary units for k/m/g/t)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"{flag} {text!r}: expected a size like 512MiB or 2GiB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < MiB:
        raise UsageError(f"{flag} {text!r}: at least 1MiB")
    return value


class Environment(BaseModel):
    """The ``MEDALLION_*`` environment of this process, parsed once (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    storage_options: dict[str, str] = Field(default_factory=dict)
    arrow_pool: Literal["system", "mimalloc", "jemalloc"] = "system"
    duckdb_threads: int = Field(default=0, ge=0)
    fault_after_commits: int | None = None
    fault_kill_once: str | None = None
    #: seconds a replay, rollback or lifecycle operation waits for the lake's lease (a
    #: follower's step, another replay) before giving up
    lease_wait: float = Field(default=120.0, ge=0)
    #: seconds an import keeps retrying a Bronze commit that lost its race to other writers
    #: (ingesters, other imports, maintenance) before it gives up
    commit_wait: float = Field(default=600.0, ge=0)
    fault_lose_races: int | None = Field(default=None, ge=0)

    @property
    def faults(self) -> dict[str, str]:
        """The fault-injection variables as set, to hand on to worker processes."""
        out = {}
        if self.fault_after_commits is not None:
            out["MEDALLION_FAULT_AFTER_COMMITS"] = str(self.fault_after_commits)
        if self.fault_kill_once:
            out["MEDALLION_FAULT_KILL_ONCE"] = self.fault_kill_once
        return out


def environment(env: Mapping[str, str] | None = None) -> Environment:
    """Parse ``MEDALLION_*`` variables (of ``env``, default ``os.environ``); bad values: UsageError."""
    env = os.environ if env is None else env
    raw = env.get("MEDALLION_STORAGE_OPTIONS")
    opts: dict[str, str] = {}
    if raw:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError
            opts = {str(k): str(v) for k, v in doc.items()}
        except ValueError:
            raise UsageError("MEDALLION_STORAGE_OPTIONS must be a JSON object of strings") from None
    fields = {"storage_options": opts, "arrow_pool": env.get("MEDALLION_ARROW_POOL") or "system",
              "duckdb_threads": env.get("MEDALLION_DUCKDB_THREADS") or 0,
              "fault_after_commits": env.get("MEDALLION_FAULT_AFTER_COMMITS") or None,
              "fault_kill_once": env.get("MEDALLION_FAULT_KILL_ONCE") or None,
              "lease_wait": env.get("MEDALLION_LEASE_WAIT") or 120.0,
              "commit_wait": env.get("MEDALLION_COMMIT_WAIT") or 600.0,
              "fault_lose_races": env.get("MEDALLION_FAULT_LOSE_RACES") or None}
    try:
        return Environment.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MEDALLION_" + str(first["loc"][0]).upper()
        raise UsageError(f"{name}: {first['msg']}") from None


_STARTED = False


def start_process(env: Environment | None = None) -> None:
    """Apply the process-wide settings once: Arrow's memory pool, DuckDB's default threads.

    Arrow's allocator defaults to ``system``: on these machines most of a replay's and the
    generator's Arrow work writes large fresh buffers, and glibc's allocator measured ~1.4x
    faster there than mimalloc (Arrow's default). ``make bench`` prints the numbers.
    """
    global _STARTED
    if _STARTED:
        return
    e = env or environment()
    pools = {"system": pa.system_memory_pool, "mimalloc": pa.mimalloc_memory_pool,
             "jemalloc": pa.jemalloc_memory_pool}
    with contextlib.suppress(NotImplementedError):  # not built into this pyarrow: Arrow's default
        pa.set_memory_pool(pools[e.arrow_pool]())
    sql.set_default_threads(e.duckdb_threads)
    _STARTED = True


class _TokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def quiet_ray_auth_notice() -> None:
    """An embedded local Ray keeps Ray's default, token authentication, without the notice Ray
    logs on every start about it (a mode the user set in ``RAY_AUTH_MODE`` is used as is)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNotice) for f in logger.filters):
        logger.addFilter(_TokenNotice())


def validated(model: type[M], **fields: object) -> M:
    """``model(**fields)``, with a validation failure as a one-line UsageError naming the flag."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else model.__name__
        info = model.model_fields.get(name)
        bounds = {k: getattr(m, k) for m in (info.metadata if info else [])
                  for k in ("ge", "le", "gt") if getattr(m, k, None) is not None}
        if "ge" in bounds and "le" in bounds:
            msg = f"must be between {bounds['ge']} and {bounds['le']}"
        elif "ge" in bounds:
            msg = f"must be at least {bounds['ge']}"
        elif "gt" in bounds:
            msg = f"must be greater than {bounds['gt']}"
        else:
            msg = first["msg"].lower()
        raise UsageError(f"--{name.replace('_', '-')} {fields.get(name)!r}: {msg}") from None
