"""Development servers, for the tests and for `make kafka-up` / `make s3-up`; not part of the runtime.

- ``tests/servers/kafka.py``: Apache Kafka (KRaft, one node), jars from Maven Central in
  ``<repo>/.kafka`` (``python -m tests.servers.kafka up|down``);
- ``tests/servers/seaweedfs.py``: SeaweedFS's S3 gateway with a bucket ``lake``, data in
  ``<repo>/.seaweedfs`` (``python -m tests.servers.seaweedfs up|down``).

Run them from the repository root. No module of engine/, rules/ or replay/ imports these
(tests/unit/test_structure.py checks it).
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``host:port``: a server could bind it now.

    With SO_REUSEADDR, as servers bind (and Linux still refuses it over a listening socket):
    the TIME_WAIT connections a stopped server leaves on its port do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def make(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``make ARGS`` from the repository root as a user types it (e.g. ``make("kafka-up")``,
    ``make("s3-up", "S3_PORT=18333")``), output captured. When ``make -q venv`` says the venv
    is stale (e.g. pyproject.toml edited since it was installed), ``--assume-old`` keeps the
    target from reinstalling the venv the test run itself runs from."""
    cmd = ["make", "--no-print-directory", *args]
    if subprocess.run(["make", "-q", "venv"], cwd=ROOT).returncode != 0:
        cmd.insert(1, "--assume-old=.venv/.installed")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def free_port_block(count: int, low: int = 20000, high: int = 30000, tries: int = 200) -> int:
    """The first of ``count`` consecutive ports that are all free (a server's port..port+count-1)."""
    for _ in range(tries):
        base = random.randrange(low, high - count)
        if all(port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {low}..{high}")
