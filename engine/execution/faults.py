"""Fault-injection hooks for tests (set through ``MEDALLION_FAULT_*``, read in :mod:`engine.config`)."""

from __future__ import annotations

import os
from typing import Any

from engine.config import environment


def kill_once(stage: str) -> None:
    """``MEDALLION_FAULT_KILL_ONCE=<stage>:<marker file>`` kills this worker process the
    first time ``stage`` runs (the marker makes the retry succeed)."""
    spec = environment().fault_kill_once
    if not spec:
        return
    want, _, marker = spec.partition(":")
    if want == stage and marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)


def die_after_commits(committed: int) -> None:
    """``MEDALLION_FAULT_AFTER_COMMITS=N`` kills the driver after N table commits."""
    limit = environment().fault_after_commits
    if limit is not None and committed >= limit:
        os._exit(99)


_races_lost = 0


def lose_race(lake: Any, table: str) -> None:
    """``MEDALLION_FAULT_LOSE_RACES=N``: the first N fenced Bronze commits of this process
    lose their race: a neutral barrier commit lands on ``table`` right before each. A no-op
    unless the variable is set."""
    global _races_lost
    limit = environment().fault_lose_races
    if limit is not None and _races_lost < limit:
        _races_lost += 1
        lake.barrier(table, "fault-lose-race")
