"""One replay at a time per lake: a lease file with a heartbeat.

The lease lives at ``<lake>/_medallion/lease.json`` and is created atomically
(``O_EXCL``). A lease whose heartbeat is older than its TTL, or whose process
is gone (same host), is expired and may be taken over. Object-store lakes use
:class:`DeltaLease`, a one-row Delta table, instead (:func:`lease_for`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.contract.errors import LeaseHeldError

TTL_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    path: Path
    owner: str
    ttl: float = TTL_SECONDS
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def _body(self) -> dict:
        return {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                "heartbeat": time.time(), "ttl": self.ttl}

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def expired(self, info: dict) -> bool:
        if time.time() - float(info.get("heartbeat", 0)) > float(info.get("ttl", self.ttl)):
            return True
        return info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1)))

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.read()
                if info is not None and not self.expired(info):
                    raise LeaseHeldError(
                        f"replay {info.get('owner')} is running on this lake (pid {info.get('pid')} on "
                        f"{info.get('host')}); wait for it to finish", owner=info.get("owner")) from None
                self.path.unlink(missing_ok=True)  # expired: a dead process left it
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._body(), f)
            self._start_heartbeat()
            return self
        raise LeaseHeldError("could not take the lake's lease; another replay is starting")

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()

        def beat() -> None:
            assert self._stop is not None
            while not self._stop.wait(HEARTBEAT_SECONDS):
                info = self.read()
                if info is None or info.get("owner") != self.owner:
                    return
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._body()))
                os.replace(tmp, self.path)

        self._thread = threading.Thread(target=beat, name="medallion-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        info = self.read()
        if info is not None and info.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class DeltaLease:
    """The same lease for object-store lakes: a one-row Delta table ``_medallion_lease``.

    Taking or renewing the lease is a Delta commit; two drivers racing for it
    conflict at commit time (delta-rs needs the store's conditional put or a
    locking provider for that, configured through the lake's storage options).
    """

    TABLE = "_medallion_lease"

    def __init__(self, lake: Any, owner: str, ttl: float = TTL_SECONDS) -> None:
        self.lake, self.owner, self.ttl = lake, owner, ttl
        self._stop: threading.Event | None = None

    def _uri(self) -> str:
        return f"{self.lake.root}/{self.TABLE}"

    def read(self) -> dict | None:
        from deltalake import DeltaTable

        opts = dict(self.lake.storage_options) if self.lake.storage_options else None
        if not DeltaTable.is_deltatable(self._uri(), storage_options=opts):
            return None
        rows = DeltaTable(self._uri(), storage_options=opts).to_pyarrow_table().to_pylist()
        return json.loads(rows[0]["body"]) if rows and rows[0]["body"] else None

    def _write(self, body: dict | None) -> None:
        import pyarrow as pa
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        opts = dict(self.lake.storage_options) if self.lake.storage_options else None
        data = pa.table({"body": pa.array([json.dumps(body) if body else None], pa.string())})
        try:
            write_deltalake(self._uri(), data, mode="overwrite", storage_options=opts)
        except CommitFailedError:
            raise LeaseHeldError("another replay took the lake's lease at the same time") from None

    def acquire(self) -> DeltaLease:
        info = self.read()
        if info is not None and info.get("owner") != self.owner and \
                time.time() - float(info.get("heartbeat", 0)) <= float(info.get("ttl", self.ttl)):
            raise LeaseHeldError(
                f"replay {info.get('owner')} is running on this lake (pid {info.get('pid')} on "
                f"{info.get('host')}); wait for it to finish", owner=info.get("owner"))
        self._write(self._body())
        self._stop = threading.Event()

        def beat() -> None:
            assert self._stop is not None
            while not self._stop.wait(HEARTBEAT_SECONDS):
                self._write(self._body())

        threading.Thread(target=beat, name="medallion-lease", daemon=True).start()
        return self

    def _body(self) -> dict:
        return {"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                "heartbeat": time.time(), "ttl": self.ttl}

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        info = self.read()
        if info is not None and info.get("owner") == self.owner:
            self._write(None)

    def __enter__(self) -> DeltaLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_for(lake: Any, owner: str, ttl: float = TTL_SECONDS) -> Lease | DeltaLease:
    """A file lease for a lake given as a local path, a Delta-table lease for one given as a URI."""
    if lake.storage.scheme is not None:  # any URI, file:// included, takes the object-store path
        return DeltaLease(lake, owner, ttl)
    return Lease(Path(lake.root) / "_medallion" / "lease.json", owner, ttl)
