"""The Ray executor: the same map/reduce shard workers as the local executor, as Ray tasks.

Map tasks read their Bronze (or Silver) row groups straight from the lake and write each
tenant bucket they compute as a file of the run's shuffle area in the lake
(:mod:`engine.execution.shuffle`); the reduce task of a bucket reads that bucket's files
(memory-mapped on a local lake) and writes its tables as staged Parquet files. Tasks return
small handles only: no table data passes through Ray's object store or the driver. Tasks
are retried when a worker process dies; a retried task recomputes its whole output from
its immutable spec (a map writes new files), so nothing is counted twice.

Errors: a task that raises a :class:`ReplayError` (a ``LakeError``, a ``RuleError`` ...)
fails the replay with that very error (class, message, data, exit code, ``retryable``);
Ray does not retry a task's exceptions (``retry_exceptions`` is off), only worker deaths.
A task whose worker died on every attempt fails it with a :class:`ShardError` saying so.

Rules registered in this process only (the Python API's experiments with a plugin class)
are unknown to the workers' own registries: the driver ships those classes with the tasks,
pickled by value, and each task resolves the ruleset against them (:func:`ship_rules`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from engine.config import environment, quiet_ray_auth_notice
from engine.contract.errors import RegistryError, ReplayError, ShardError, TaskError, UsageError
from engine.execution.shuffle import Piece, ShuffleArea, heartbeat
from engine.execution.specs import (
    JobOutput,
    MapResult,
    MapSpec,
    Progress,
    ReduceResult,
    ReduceSpec,
    combine,
)
from engine.execution.workers import map_shard, reduce_shard, release_memory, warm_up
from rules.base import Rule
from rules.ruleset import Ruleset

MAX_RETRIES = 3
#: Seconds a failed run waits for its cancelled tasks to end before removing its shuffle area.
SETTLE_SECONDS = 30


def warm_worker() -> int:
    """Load what shard tasks use: modules, DuckDB's JSON functions, the rule plugins.

    Folds one tiny message through a built-in ruleset (see :meth:`RayExecutor._warm_up`).
    """
    warm_up()
    return os.getpid()


def ship_rules(rulesets: Iterable[Ruleset]) -> bytes | None:
    """The rule classes of ``rulesets`` that a worker's own registry (built-ins plus installed
    entry points) would not resolve to the same class, pickled by value; None: no such rule.

    Such a class was registered in this process only (a plugin class in a script, a notebook
    or a test). cloudpickle ships classes of ``__main__`` and local classes by value already;
    a class of an importable module would go by reference (a worker may not have that module),
    so its module is pickled by value for this one dump. A class that cannot be pickled is
    refused here, before any task runs.
    """
    from ray import cloudpickle

    from rules.registry import builtin_registry

    installed = builtin_registry()
    installed.load_entry_points()
    ship: dict[str, type[Rule]] = {}
    for rs in rulesets:
        for ref in rs.rules:
            cls = ref.rule()
            try:
                if installed.get(ref.name, ref.version) is cls:
                    continue
            except RegistryError:
                pass
            ship[ref.key] = cls
    if not ship:
        return None
    names = {c.__module__ for c in ship.values()} - {"__main__"}
    mods = [sys.modules[n] for n in names if n in sys.modules]
    added = [m for m in mods if m.__name__ not in cloudpickle.list_registry_pickle_by_value()]
    for m in added:
        cloudpickle.register_pickle_by_value(m)
    try:
        return cloudpickle.dumps(tuple(ship.values()))
    except Exception as exc:
        raise RegistryError(
            f"rule(s) {', '.join(sorted(ship))} registered in this process cannot be shipped to "
            f"Ray workers ({type(exc).__name__}: {exc}); install them as a plugin (entry point "
            "group medallion_replay.rules) or use the local executor", rules=sorted(ship)) from None
    finally:
        for m in added:
            cloudpickle.unregister_pickle_by_value(m)


def _with_rules(rules: bytes | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` with the shipped rule classes registered (a Ray worker runs one task at a
    time: the process's registry is swapped for the task and restored after it)."""
    if rules is None:
        return fn(*args)
    from ray import cloudpickle

    from rules.registry import default_registry, swap_default_registry

    try:
        classes = cloudpickle.loads(rules)
    except Exception as exc:
        raise RegistryError(f"a Ray worker cannot load the rule classes registered in the driver "
                            f"({type(exc).__name__}: {exc}); install them as a plugin") from None
    registry = default_registry().copy()
    for cls in classes:
        registry.register(cls)
    previous = swap_default_registry(registry)
    try:
        return fn(*args)
    finally:
        swap_default_registry(previous)


def map_task(rules: bytes | None, spec: MapSpec, area: ShuffleArea) -> MapResult:
    """The map shard task (:func:`map_shard`) with the driver's in-process rules; its
    buckets leave it as files of ``area`` (the result holds their :class:`Piece` handles)."""
    try:
        res = _with_rules(rules, map_shard, spec)
        return replace(res, buckets=area.write(res.buckets))
    finally:
        res = None  # the buckets' rows go before the trim
        release_memory()


def reduce_task(rules: bytes | None, spec: ReduceSpec, area: ShuffleArea | None,
                *pieces: Piece | None) -> ReduceResult:
    """The reduce shard task (:func:`reduce_shard`) over its bucket's pieces, read from ``area``
    (None: the run had no map task, nothing to read)."""
    tables: list[Any] = []
    try:
        tables = area.read(pieces) if area is not None else []
        return _with_rules(rules, reduce_shard, spec, *tables)
    finally:
        tables.clear()  # the mapped files are released before the trim
        release_memory()


def task_error(exc: Exception) -> ReplayError:
    """The error a failed shard task raises in the driver.

    The task's own :class:`ReplayError` itself, as the task raised it (Ray pickles it with its
    data; the remote traceback is added as a note), not Ray's exception that wraps it. A task
    whose worker died on every attempt (Ray retries only those, MAX_RETRIES times): a
    ShardError with the number of attempts. Anything else: a ShardError naming the exception
    (a task's exception is never retried, so no retries are claimed).
    """
    import ray

    header = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause  # the task's exception as it was raised (Ray's dual class is ``exc``)
        if isinstance(cause, ReplayError):
            cause.add_note(f"raised in a Ray task: {exc}")  # Ray's text: the remote traceback
            return cause
        if cause is not None:
            first = (str(cause).strip().splitlines() or [""])[0]
            return TaskError(f"a shard task raised {type(cause).__name__}: {first}",
                              task=header, traceback=str(exc))
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return ShardError(f"a shard task's worker died on all {MAX_RETRIES + 1} attempts "
                          f"({MAX_RETRIES} retries): {header}", attempts=MAX_RETRIES + 1)
    return ShardError(f"a shard task failed: {header}")


def _task_options() -> dict[str, Any]:
    """Ray options shared by every task. No runtime_env unless a test injects faults: a
    runtime_env gets workers of its own, while the default pool's are prestarted and stay
    warm. (Each spec carries its DuckDB thread count: one per task, as Ray runs one per CPU.)
    """
    faults = environment().faults
    return {"runtime_env": {"env_vars": faults}} if faults else {}


class RayExecutor:
    """Runs shard workers as Ray tasks on a local or existing Ray cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning",
                                      "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                quiet_ray_auth_notice()
                if num_cpus:
                    kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise UsageError(f"cannot join Ray cluster at {address}: {exc}; check --address") from None
        self._warm = self._warm_up()

    def _warm_up(self) -> list[Any]:
        """Start one worker per CPU and import the shard code there while the driver plans.

        A fresh worker spends about a second importing DuckDB, Arrow and delta-rs; paying it
        before the first map task keeps it off the replay's critical path. Never awaited
        for correctness: the tasks are ordinary, and their results are ignored.
        """
        task = self._ray.remote(num_cpus=1, max_retries=0, **_task_options())(warm_worker)
        return [task.remote() for _ in range(self.cpus())]

    def cpus(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def _settle(self, refs: list[Any]) -> None:
        """Cancel the tasks of ``refs`` still running (a run that failed: Ray does not stop a
        failed task's siblings) and give them a moment to end, so none writes the shuffle area
        after the driver removed it."""
        ray = self._ray
        if not refs:
            return
        # (a timeout of 0 reports every task ready here: a short one tells the running ones)
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0.01, fetch_local=False)
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if pending:
            with contextlib.suppress(Exception):
                ray.wait(pending, num_returns=len(pending), timeout=SETTLE_SECONDS, fetch_local=False)

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput:
        ray = self._ray
        n = len(reduces)
        opts = {"max_retries": MAX_RETRIES, **_task_options()}
        map_fn = ray.remote(num_cpus=1, **opts)(map_task)
        reduce_fn = ray.remote(num_cpus=1, **opts)(reduce_task)
        shipped = ship_rules({s.ruleset.fingerprint: s.ruleset for s in [*maps, *reduces]}.values())
        rules = None if shipped is None else ray.put(shipped)
        area = ShuffleArea.create(maps[0].lake_root, maps[0].storage_options) if maps else None
        launched: list[Any] = []
        total = len(maps) + n
        done = 0

        def drain(refs: list[Any]) -> None:
            nonlocal done
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)  # surface task errors early
                done += len(ready)
                if progress:
                    progress("ray", done, total)

        try:
            with heartbeat(area):
                map_refs = [map_fn.remote(rules, spec, area) for spec in maps]
                launched += map_refs
                drain(map_refs)  # maps first: reduce tasks need every map's output anyway
                map_out: list[MapResult] = ray.get(map_refs)
                # biggest shard first (longest-processing-time order): the last wave ends sooner
                size = {s.bucket: sum(m.bucket_rows[s.bucket] for m in map_out if m.bucket_rows)
                        for s in reduces}
                order = sorted(reduces, key=lambda s: -size[s.bucket])
                red_refs = {s.bucket: reduce_fn.remote(rules, s, area,
                                                       *[m.buckets[s.bucket] for m in map_out])
                            for s in order}
                launched += red_refs.values()
                drain(list(red_refs.values()))
                red_out: list[ReduceResult] = ray.get([red_refs[s.bucket] for s in reduces])
        except ray.exceptions.RayError as exc:
            raise task_error(exc) from None
        finally:
            self._settle(launched)  # after a failure: no task still writes the area
            if area is not None:
                area.delete()
        map_out = [replace(m, buckets=()) for m in map_out]
        return combine(map_out, red_out, reduces[0].mode if reduces else "full")
