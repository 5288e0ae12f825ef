"""cluster.yaml is a usable Ray cluster-launcher config for an S3 lake."""

from __future__ import annotations

import yaml

from tests.lakes import ROOT


def test_cluster_yaml_is_a_launcher_config():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("pip install" in c and "medallion-replay" in c for c in cfg["setup_commands"])
    assert any("MEDALLION_STORAGE_OPTIONS" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])
