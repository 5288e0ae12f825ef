"""cluster.yaml is a usable Ray cluster-launcher config for an S3 lake, whose shell lines do
what they say when bash runs them, and whose Ray is not open to the network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.lakes import ROOT

CFG = yaml.safe_load((ROOT / "cluster.yaml").read_text())
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
COMMANDS = [(key, c) for key in COMMAND_KEYS for c in CFG.get(key) or []]
# The storage options every node exports (MEDALLION_STORAGE_OPTIONS must parse as this object).
STORAGE_OPTIONS = {"AWS_REGION": "us-east-1", "conditional_put": "etag"}


def test_cluster_yaml_is_a_launcher_config():
    cfg = CFG
    assert cfg["provider"]["type"] == "aws"
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("pip install" in c and "medallion-replay" in c for c in cfg["setup_commands"])
    assert any("MEDALLION_STORAGE_OPTIONS" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


@pytest.mark.parametrize("key,command", COMMANDS, ids=[f"{k}[{i}]" for i, (k, _) in enumerate(COMMANDS)])
def test_every_command_is_valid_bash(key, command):
    p = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert p.returncode == 0, (key, command, p.stderr)


def _bashrc_env(home) -> dict[str, str]:
    """Source ``home``/.bashrc in a fresh bash (nothing inherited) and return its environment."""
    script = 'source "$HOME/.bashrc" && exec "$PY" -c "import json, os; print(json.dumps(dict(os.environ)))"'
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       env={"HOME": str(home), "PATH": "/usr/bin:/bin", "PY": sys.executable})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_bashrc_lines_export_the_storage_options_as_a_json_object(tmp_path):
    """Run every setup line that writes ~/.bashrc (twice: `ray up` reruns them on a live node,
    whose ~/.bashrc may hold the unquoted line of an earlier config), then source it."""
    lines = [c for c in CFG["setup_commands"] if ".bashrc" in c]
    assert any("MEDALLION_STORAGE_OPTIONS" in c for c in lines)
    (tmp_path / ".bashrc").write_text(  # the old, broken line: brace expansion split it
        'export MEDALLION_STORAGE_OPTIONS={"AWS_REGION":"us-east-1","conditional_put":"etag"}\n')
    assert _bashrc_env(tmp_path)["MEDALLION_STORAGE_OPTIONS"] == "conditional_put:etag"
    for _ in range(2):
        for line in lines:
            p = subprocess.run(["bash", "-c", line], capture_output=True, text=True,
                               env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
            assert p.returncode == 0, (line, p.stderr)
    env = _bashrc_env(tmp_path)
    value = json.loads(env["MEDALLION_STORAGE_OPTIONS"])
    assert isinstance(value, dict) and value == STORAGE_OPTIONS
    assert env["RAY_AUTH_MODE"] == "token"
    assert f"{tmp_path}/venv/bin" in env["PATH"].split(":")
    text = (tmp_path / ".bashrc").read_text()
    assert text.count("MEDALLION_STORAGE_OPTIONS") == 1 and text.count("RAY_AUTH_MODE") == 1


def test_ray_keeps_token_auth_and_a_loopback_dashboard():
    for key, command in COMMANDS:
        assert "RAY_AUTH_MODE=disabled" not in command, (key, command)
        assert "0.0.0.0" not in command, (key, command)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in CFG[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    (head,) = [c for c in CFG["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in head
    # every node gets the token made on the user's machine (`ray get-auth-token --generate`)
    assert CFG["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert CFG["auth"]["ssh_user"] == "ubuntu"
