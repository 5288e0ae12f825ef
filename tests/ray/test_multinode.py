"""Multi-node: a head and two worker nodes (ray.cluster_utils.Cluster) on this machine."""

from __future__ import annotations

import pytest
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from engine.batch.apply import map_specs
from engine.batch.plan import build_plan  # noqa: E402
from engine.execution.local import LocalExecutor  # noqa: E402
from engine.execution.ray_executor import RayExecutor  # noqa: E402
from replay import api  # noqa: E402
from rules.ruleset import load_ruleset  # noqa: E402
from tests.lakes import assert_same_tables, make_lake  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_tasks_land_on_both_worker_nodes_and_tables_match_local(tmp_path, history_parts, cluster):
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    api.run(local, "2026-02", executor=LocalExecutor())
    ex = RayExecutor(address=cluster.address)
    assert ex.cpus() == 2
    rs = load_ruleset("2026-02")
    plan = build_plan(dist, rs, executor="ray", cpus=ex.cpus(), buckets=4)
    from engine.execution.specs import ReduceSpec

    out = ex.run(map_specs(dist, plan, rs, ex.cpus()),
                 [ReduceSpec(b, "full", rs) for b in range(plan.buckets)])
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    assert len(workers) == 2 and set(out.nodes) == workers
    api.run(dist, "2026-02", executor=ex, shards=4)
    assert_same_tables(local, dist)
