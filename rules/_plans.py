"""Helpers for rules parameterized by a per-plan table."""

from __future__ import annotations

import pyarrow as pa


def plan_table(values: dict[str, int], column: str) -> pa.Table:
    plans = sorted(values)
    return pa.table({"plan": pa.array(plans, pa.string()),
                     column: pa.array([values[p] for p in plans], pa.int64())})
