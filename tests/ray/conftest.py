from __future__ import annotations

import pytest
import ray

from engine.execution.ray_executor import RayExecutor
from engine.ingest.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def history_parts():
    """A generated history split into 3 Bronze appends (several files: several map tasks)."""
    t = generate(GeneratorConfig(events=30_000, tenants=25, days=0.3, seed=11))
    n = t.num_rows
    return [t.slice(0, n // 3), t.slice(n // 3, n // 3), t.slice(2 * (n // 3))]



@pytest.fixture(scope="module")
def ray_ex():
    """One local Ray (2 CPUs) per test module, shut down after it."""
    ex = RayExecutor(num_cpus=2)
    yield ex
    ray.shutdown()
