"""The Ray executor: the same map/reduce shard workers as the local executor, as Ray tasks.

Map tasks return one object per tenant bucket (``num_returns``), so each reduce
task pulls only its bucket from the object store. Tasks are retried when a
worker process dies; a retried task recomputes its whole output from its
immutable spec, so nothing is counted twice.
"""

from __future__ import annotations

import os
from typing import Any

from engine.config import environment, quiet_ray_auth_notice
from engine.contract.errors import ShardError, UsageError
from engine.execution.specs import (
    JobOutput,
    MapResult,
    MapSpec,
    Progress,
    ReduceResult,
    ReduceSpec,
    combine,
)
from engine.execution.workers import map_shard_parts, reduce_shard, warm_up

MAX_RETRIES = 3


def warm_worker() -> int:
    """Load what shard tasks use: modules, DuckDB's JSON functions, the rule plugins.

    Folds one tiny message through a built-in ruleset (see :meth:`RayExecutor._warm_up`).
    """
    warm_up()
    return os.getpid()


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

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput:
        ray = self._ray
        n = len(reduces)
        opts = {"max_retries": MAX_RETRIES, **_task_options()}
        map_task = ray.remote(num_cpus=1, num_returns=1 + n, **opts)(map_shard_parts)
        reduce_task = ray.remote(num_cpus=1, **opts)(reduce_shard)
        map_refs = []
        for spec in maps:
            refs = map_task.remote(spec)
            map_refs.append(refs if isinstance(refs, list) else [refs])
        summaries = [m[0] for m in map_refs]
        total = len(summaries) + n
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
            drain(summaries)  # maps first: reduce tasks need every map's output anyway
            map_out: list[MapResult] = ray.get(summaries)
            # biggest shard first (longest-processing-time order): the last wave ends sooner
            size = {s.bucket: sum(m.bucket_rows[s.bucket] for m in map_out if m.bucket_rows)
                    for s in reduces}
            order = sorted(reduces, key=lambda s: -size[s.bucket])
            red_refs = {s.bucket: reduce_task.remote(s, *[m[1 + s.bucket] for m in map_refs])
                        for s in order}
            drain(list(red_refs.values()))
            red_out: list[ReduceResult] = ray.get([red_refs[s.bucket] for s in reduces])
        except ray.exceptions.RayError as exc:
            raise ShardError(f"a shard task failed after {MAX_RETRIES} retries: "
                             f"{str(exc).splitlines()[0]}") from None
        return combine(map_out, red_out, reduces[0].mode if reduces else "full")
