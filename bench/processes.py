"""Process-level figures for ``make bench``: the DuckDB script and the default CLI replay,
each in processes of their own, with the peak resident memory of every process.

- :func:`script_process`: the baseline SQL script in a fresh Python process (its time,
  measured inside it, and its peak RSS); it leaves its Gold as Parquet for the equality check.
- :func:`cli_replays`: ``replay run`` (the default executor, Ray) against a Ray cluster
  started with ``ray start --head`` (as a ``ray job submit`` replay finds it); the replay's
  own time (``seconds`` of its ``--json``), the command's wall time, and the peak RSS of
  the driver and of each Ray worker process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
GIB = 1 << 30


class RssSampler:
    """Peak resident memory of processes, sampled from /proc (Linux) every 0.1 s while a
    ``with`` block runs: this process and every process below it, and every Ray worker
    (``ray::`` processes: a cluster from ``ray start`` is not below this process)."""

    def __init__(self, ray_workers: bool = True) -> None:
        self.peaks: dict[int, tuple[int, str]] = {}  # pid -> (peak RSS in bytes, command)
        self.shared: dict[int, int] = {}  # pid -> its file and shared-memory pages then
        self.ray_workers = ray_workers
        self._stop = threading.Event()

    def _family(self) -> list[int]:
        parent: dict[int, int] = {}
        ray: list[int] = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    if self.ray_workers:
                        with open(f"/proc/{d}/cmdline", "rb") as f:
                            if f.read(5) == b"ray::":
                                ray.append(int(d))
                except (OSError, IndexError, ValueError):
                    continue
        out, todo = set(ray), [os.getpid()]
        while todo:
            pid = todo.pop()
            out.add(pid)
            todo += [c for c, p in parent.items() if p == pid]
        return sorted(out)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self._family():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        status = {line.split(":")[0]: line.split()[1] for line in f
                                  if line.startswith(("VmRSS", "RssAnon"))}
                    rss = int(status["VmRSS"])
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        name = f.read().split(b"\0")[0].decode(errors="replace")
                except (OSError, KeyError, IndexError):
                    continue
                if rss * 1024 > self.peaks.get(pid, (0, ""))[0]:
                    self.peaks[pid] = (rss * 1024, name)
                    self.shared[pid] = (rss - int(status.get("RssAnon", rss))) * 1024

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def workers(self) -> list[int]:
        return sorted((rss for rss, name in self.peaks.values() if name.startswith("ray::")),
                      reverse=True)

    def worker_text(self) -> str:
        """Each Ray worker's peak RSS, split into shared pages (mapped files: the shuffle's
        files, read memory-mapped, the libraries; and shared memory such as Ray's object
        store: pages the kernel holds once, whoever maps them, and file pages it can drop
        and read again) and the process's own (anonymous) memory."""
        rows = sorted(((rss, self.shared.get(pid, 0)) for pid, (rss, name) in self.peaks.items()
                       if name.startswith("ray::")), reverse=True)
        return ", ".join(f"{r / 2**20:,.0f} ({s / 2**20:,.0f} shared + {(r - s) / 2**20:,.0f} own)"
                         for r, s in rows if r > 256 << 20) or "none above 256"

    def report(self, driver: int | None = None) -> str:
        """``driver``: the driver's pid (default: this process)."""
        me = self.peaks.get(driver or os.getpid(), (0, ""))[0]
        text = f"driver peak RSS {me / 2**20:,.0f} MiB"
        workers = self.workers()
        if workers:
            text += (f"; Ray workers ({len(workers)}): "
                     + ", ".join(f"{w / 2**20:,.0f}" for w in workers)
                     + f" MiB, above 2 GiB: {sum(w > 2 * GIB for w in workers)}")
        return text


SCRIPT = """
import resource, sys, time
import duckdb
from engine.contract import schemas
from replay import api
lake, sql, out = sys.argv[1:4]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.register("bronze", api.open_lake(lake).dataset(schemas.BRONZE))
t0 = time.perf_counter()
con.execute(open(sql).read())
seconds = time.perf_counter() - t0
for t in ("minute", "hourly"):
    con.execute(f"COPY {t} TO '{out}/{t}.parquet' (FORMAT parquet)")
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def script_process(lake: Path, out: Path) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of the DuckDB script in a process of its own."""
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(lake), str(HERE / "duckdb_gold.sql"),
                        str(out)], capture_output=True, text=True, cwd=HERE.parent)
    if p.returncode != 0:
        raise RuntimeError(f"the DuckDB script failed: {p.stderr[-2000:]}")
    seconds, rss = p.stdout.split()[-2:]
    return float(seconds), int(rss)


@contextmanager
def ray_cluster(cpus: int) -> Iterator[dict[str, str]]:
    """A local Ray cluster from ``ray start --head`` (token auth off, as in the README's
    ``ray job submit`` example); yields the environment whose ``--address auto`` joins it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    tmp = tempfile.mkdtemp(prefix="mr-bench-ray-")
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", str(cpus),
                    "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", tmp],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def cli_replay(lake: Path, mode: str, env: dict[str, str]) -> tuple[float, float, RssSampler, int]:
    """``replay run --mode MODE --address auto --json`` (executor: the default, Ray):
    (the replay's seconds, the command's wall seconds, the RSS samples, the driver's pid)."""
    t0 = time.perf_counter()
    with RssSampler() as rss:
        p = subprocess.Popen([sys.executable, "-m", "replay", "run", "--lake", str(lake), "--ruleset",
                              "2026-02", "--mode", mode, "--reason", f"bench {mode}", "--address",
                              "auto", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        stdout, stderr = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"replay run failed: {stderr[-2000:]}")
    result = json.loads(stdout[stdout.index("{"): stdout.rindex("}") + 1])
    return float(result["seconds"]), wall, rss, p.pid
