"""Replay configuration: pydantic v2, frozen, unknown keys refused, passed explicitly."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import UsageError

MiB = 1 << 20
GiB = 1 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": MiB, "mb": 1000**2,
          "mib": MiB, "g": GiB, "gb": 1000**3, "gib": GiB, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}


class ReplayConfig(BaseModel):
    """How a replay is cut into tasks.

    - ``shards``: tenant shards (reduce tasks); None: twice the cluster's CPUs.
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
