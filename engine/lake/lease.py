"""One replay at a time per lake: a lease with a heartbeat, taken and renewed atomically.

Two kinds, same interface (:func:`lease_for` picks one by where the lake physically is, never
by how it was spelled):

- :class:`Lease`, for a lake on a local filesystem, given as a path or a ``file:`` URI: the file
  ``<dir>/_medallion/lease.json``, ``<dir>`` the lake's identity (the real path of its
  directory, engine/lake/storage.py), so ``/data/lake``, ``file:///data/lake``,
  ``./lake/`` or a symlink to it all lock one file.
- :class:`DeltaLease`, for a lake on an object store (``s3://`` ...): the one-row Delta table
  ``<lake>/_medallion_lease``.

A lease body names its owner (a replay id), a random ``token`` of the lease object that wrote
it, the pid and host, and the time of its last heartbeat. A lease whose heartbeat is older than
its TTL (or, for the file lease, whose process is gone on this host) is expired and may be
taken over. Ownership is always decided by the token, never by the owner name.

**Why two drivers never both hold it.** Every change of the lease is a compare-and-swap on the
state that was read:

- *Delta lease*: acquire, heartbeat and release read the table at version ``v`` and commit on
  top of exactly ``v`` with ``CommitProperties(max_commit_retries=0)``. The commit writes the
  log entry ``v+1`` with a put-if-absent (local filesystems: a hard link; S3: a conditional
  put, storage option ``conditional_put``), so of several commits on ``v`` exactly one lands
  and every other fails with :class:`deltalake.exceptions.CommitFailedError` (delta-rs does
  not rebase or retry with ``max_commit_retries=0``). A heartbeat commits on the version of
  the owner's own previous commit, so once anyone else committed (a takeover), the stalled
  owner's beat fails instead of taking the lease back. Nothing here matches error texts: the
  lost race is the exception class. An ambiguous outcome (a put that landed although the
  client saw an error) is settled by reading the latest body back: it is ours only if it
  carries our token.
- *File lease*: every read-decide-write of ``lease.json`` runs inside an exclusive
  ``flock`` on the sibling file ``lease.json.lock`` (created once, never removed: removing a
  lock file would let two processes lock two different inodes). Inside it, acquire takes a
  free or expired lease, a heartbeat renews it only while the token in the file is still
  ours, release removes it only while it is ours. The body is replaced with ``os.replace``
  so that readers without the lock never see a half-written file. The kernel drops the lock
  of a process that dies; a process stopped inside the (milliseconds long) critical section
  makes others wait at most ``LOCK_WAIT`` seconds, then they give up (``LeaseHeldError``).

**Losing the lease.** A heartbeat that finds the lease taken over stops beating and marks
the lease ``lost``. The work the lease guards must learn it: call :meth:`Lease.check` /
:meth:`DeltaLease.check` right before every commit; it raises :class:`LeaseHeldError` once the
lease is lost, and renews the lease first when its last renewal is older than one heartbeat
interval or half the TTL (so an owner that stalled past its TTL either proves, atomically,
that nobody took over, or learns that someone did). ``lease.lost`` tells the same without
raising.
(:class:`engine.txn.protocol.Transaction` calls ``check()`` right before each commit of every
multi-table write.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.contract.errors import LeaseHeldError

TTL_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0
#: How long the file lease waits for another process's critical section (milliseconds long).
LOCK_WAIT = 10.0

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interval(ttl: float, heartbeat: float | None) -> float:
    """The heartbeat interval: as given, else a third of the TTL (at most HEARTBEAT_SECONDS)."""
    if heartbeat is not None:
        return max(0.01, float(heartbeat))
    return max(0.05, min(HEARTBEAT_SECONDS, ttl / 3))


def _held_message(info: dict) -> str:
    return (f"replay {info.get('owner')} is running on this lake (pid {info.get('pid')} on "
            f"{info.get('host')}); wait for it to finish")


class _Heartbeat:
    """What both leases share: the body, the heartbeat thread, ``lost`` and ``check()``.

    Subclasses implement ``_renew()`` (a conditional renewal: True if still ours, False if
    taken over, an exception if the store could not be reached) and ``_verify()`` (is the
    latest state still ours, without writing).
    """

    owner: str
    ttl: float
    heartbeat: float
    token: str
    #: seconds ``with lease:`` keeps trying while another holder has it (0: refuse at once)
    wait: float = 0.0

    def acquire(self) -> Any:  # pragma: no cover - both subclasses implement it
        raise NotImplementedError

    def acquire_waiting(self) -> Any:
        """Acquire, retrying while the lease is held, for up to ``wait`` seconds: a replay or
        rollback started while ``replay follow`` runs waits for the follower's current step
        (steps are short and the follower takes the lease for one step at a time)."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self.acquire()
            except LeaseHeldError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self.wait > 0:
                        raise LeaseHeldError(f"{exc} (waited {self.wait:g} s; "
                                             "MEDALLION_LEASE_WAIT sets how long)",
                                             **exc.data) from None
                    raise
                time.sleep(min(0.1, left))

    def _init_heartbeat(self, heartbeat: float | None) -> None:
        self.heartbeat = _interval(self.ttl, heartbeat)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = 0.0  # time.monotonic() of the last successful write of our body
        self._taken_by: str | None = None

    def _body(self) -> dict:
        return {"owner": self.owner, "token": self.token, "pid": os.getpid(),
                "host": socket.gethostname(), "heartbeat": time.time(), "ttl": self.ttl}

    def _expired_by_time(self, info: dict) -> bool:
        return time.time() - float(info.get("heartbeat", 0)) > float(info.get("ttl", self.ttl))

    @property
    def lost(self) -> bool:
        """True once a heartbeat or a check found the lease taken over by another owner."""
        return self._lost.is_set()

    def _lose(self, info: dict | None) -> None:
        self._taken_by = (info or {}).get("owner")
        if not self._lost.is_set():
            log.warning("replay %s lost the lake's lease to %s", self.owner, self._taken_by)
        self._lost.set()
        self._stop.set()

    def _lost_error(self) -> LeaseHeldError:
        by = f"replay {self._taken_by}" if self._taken_by else "another replay (or nobody)"
        return LeaseHeldError(
            f"replay {self.owner} lost the lake's lease to {by}: its heartbeat stalled past the "
            f"{self.ttl:g}s TTL and the lease was taken over; it must not commit",
            owner=self._taken_by)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    if not self._renew():
                        return  # taken over: never beat again (that would steal it back)
                except Exception as exc:  # unreachable store: try again next beat
                    log.warning("lease heartbeat of %s failed: %s", self.owner, exc)

        self._thread = threading.Thread(target=beat, name="medallion-lease", daemon=True)
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def check(self) -> None:
        """Raise :class:`LeaseHeldError` if this lease was lost; call it before every commit.

        Renews the lease (a conditional write) when the last renewal is older than one
        heartbeat interval or half the TTL, else verifies that the latest state is still ours.
        """
        if self._lost.is_set():
            raise self._lost_error()
        fresh = time.monotonic() - self._renewed < min(self.heartbeat, self.ttl / 2)
        if not (self._verify() if fresh else self._renew()):
            raise self._lost_error()

    def _renew(self) -> bool:
        raise NotImplementedError

    def _verify(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.release()
        except Exception:
            if exc_type is None:
                raise
            log.warning("could not release the lease of %s", self.owner, exc_info=True)


class Lease(_Heartbeat):
    """The lease of a local lake: ``lease.json`` changed only under an exclusive ``flock``."""

    def __init__(self, path: Path | str, owner: str, ttl: float = TTL_SECONDS,
                 heartbeat: float | None = None) -> None:
        self.path, self.owner, self.ttl = Path(path), owner, ttl
        self._init_heartbeat(heartbeat)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The critical section: an exclusive flock on ``lease.json.lock`` (own open file, so
        the heartbeat thread and the caller's thread exclude each other too)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseHeldError(
                            f"the lake's lease file {self.lock_path} stayed locked for "
                            f"{LOCK_WAIT:g}s; another replay is starting or stopped") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing the file drops the lock

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def expired(self, info: dict) -> bool:
        if self._expired_by_time(info):
            return True
        return info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1)))

    def _put(self, body: dict) -> None:
        """Replace the lease file (inside the critical section only)."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._renewed = time.monotonic()

    def acquire(self) -> Lease:
        with self._locked():
            info = self.read()
            if info is not None and info.get("token") != self.token and not self.expired(info):
                raise LeaseHeldError(_held_message(info), owner=info.get("owner"))
            self._put(self._body())
        self._start_heartbeat()
        return self

    def _renew(self) -> bool:
        with self._locked():
            if self._lost.is_set():
                return False
            info = self.read()
            if info is None or info.get("token") != self.token:
                self._lose(info)
                return False
            self._put(self._body())
            return True

    def _verify(self) -> bool:
        with self._locked():
            info = self.read()
            if info is None or info.get("token") != self.token:
                self._lose(info)
                return False
            return True

    def release(self) -> None:
        self._stop_heartbeat()
        with self._locked():
            info = self.read()
            if info is not None and info.get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        return self.acquire_waiting()


class DeltaLease(_Heartbeat):
    """The lease of an object-store lake: a one-row Delta table ``_medallion_lease``.

    (It works on local filesystems too, where the tests race it; :func:`lease_for` never gives
    it to a local lake, whose writers all take the file lease.)

    Every write is a Delta commit on top of exactly the version that was read, without
    retries: of two drivers racing for the lease one commit lands, the other fails with
    ``CommitFailedError`` (delta-rs needs the store's put-if-absent for that: local and
    ``file://`` filesystems have it; on S3 set the storage option ``conditional_put``).
    """

    TABLE = "_medallion_lease"

    def __init__(self, lake: Any, owner: str, ttl: float = TTL_SECONDS,
                 heartbeat: float | None = None) -> None:
        self.lake, self.owner, self.ttl = lake, owner, ttl
        self._init_heartbeat(heartbeat)
        self._mu = threading.Lock()  # the heartbeat thread and check() never commit at once
        self._version: int | None = None  # the version of our last commit

    def _uri(self) -> str:
        return f"{self.lake.root}/{self.TABLE}"

    def _opts(self) -> dict[str, str] | None:
        return dict(self.lake.storage_options) if self.lake.storage_options else None

    def _open(self, version: int | None = None) -> Any:
        """The lease table (at ``version``; default: latest), created empty if missing."""
        import pyarrow as pa
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import CommitFailedError, TableNotFoundError

        try:
            return DeltaTable(self._uri(), version=version, storage_options=self._opts())
        except TableNotFoundError:
            if version is not None:
                raise
        # a CommitFailedError: another driver created it at the same moment, empty all the same
        with contextlib.suppress(CommitFailedError):
            DeltaTable.create(self._uri(), pa.schema([("body", pa.string())]), mode="ignore",
                              storage_options=self._opts(),
                              commit_properties=CommitProperties(max_commit_retries=0))
        return DeltaTable(self._uri(), storage_options=self._opts())

    @staticmethod
    def _body_of(dt: Any) -> dict | None:
        rows = dt.to_pyarrow_table().to_pylist()
        return json.loads(rows[0]["body"]) if rows and rows[0]["body"] else None

    def read(self) -> dict | None:
        """The current lease body (None: free)."""
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(self._uri(), storage_options=self._opts()):
            return None
        return self._body_of(DeltaTable(self._uri(), storage_options=self._opts()))

    def expired(self, info: dict) -> bool:
        return self._expired_by_time(info)

    def _commit(self, dt: Any, body: dict | None) -> int:
        """Replace the body in one commit on top of exactly ``dt``'s version; returns the new
        version. A commit by anyone since raises ``CommitFailedError`` (no rebase, no retry)."""
        import pyarrow as pa
        from deltalake import CommitProperties, write_deltalake

        data = pa.table({"body": pa.array([json.dumps(body) if body else None], pa.string())})
        write_deltalake(dt, data, mode="overwrite",
                        commit_properties=CommitProperties(max_commit_retries=0))
        if body is not None and body.get("token") == self.token:
            self._renewed = time.monotonic()
        return dt.version()

    def _ours_after_conflict(self) -> bool:
        """After a failed commit: the latest body is ours only if it carries our token (a
        put that landed although the client saw an error); then adopt its version."""
        dt = self._open()
        info = self._body_of(dt)
        if info is not None and info.get("token") == self.token:
            self._version, self._renewed = dt.version(), time.monotonic()
            return True
        return False

    def _write(self, body: dict | None) -> int:
        """Commit ``body`` on the latest version, conditionally (a lost race: LeaseHeldError)."""
        from deltalake.exceptions import CommitFailedError

        try:
            return self._commit(self._open(), body)
        except CommitFailedError:
            raise LeaseHeldError("another replay took the lake's lease at the same time") from None

    def acquire(self) -> DeltaLease:
        from deltalake.exceptions import CommitFailedError

        with self._mu:
            dt = self._open()
            info = self._body_of(dt)
            if info is not None and info.get("token") != self.token and not self.expired(info):
                raise LeaseHeldError(_held_message(info), owner=info.get("owner"))
            try:
                self._version = self._commit(dt, self._body())
            except CommitFailedError:
                if not self._ours_after_conflict():
                    raise LeaseHeldError(
                        "another replay took the lake's lease at the same time; wait for it to "
                        "finish") from None
        self._start_heartbeat()
        return self

    def _renew(self) -> bool:
        from deltalake.exceptions import CommitFailedError

        with self._mu:
            if self._lost.is_set() or self._version is None:
                return False
            try:
                self._version = self._commit(self._open(self._version), self._body())
                return True
            except CommitFailedError:  # someone committed after our last beat: a takeover
                if self._ours_after_conflict():
                    return True
                self._lose(self.read())
                return False

    def _verify(self) -> bool:
        from deltalake import DeltaTable

        with self._mu:
            latest = DeltaTable(self._uri(), storage_options=self._opts()).version()
            if latest == self._version or self._ours_after_conflict():
                return True
            self._lose(self.read())
            return False

    def release(self) -> None:
        from deltalake.exceptions import CommitFailedError

        self._stop_heartbeat()
        with self._mu:
            if self._lost.is_set() or self._version is None:
                return
            try:
                self._version = self._commit(self._open(self._version), None)
            except CommitFailedError:
                if self._ours_after_conflict():  # ours after all: free it on top of that
                    self._commit(self._open(self._version), None)
                # else: taken over meanwhile; the new owner's lease stays
            self._version = None

    def __enter__(self) -> DeltaLease:
        return self.acquire_waiting()


def lease_for(lake: Any, owner: str, ttl: float = TTL_SECONDS,
              heartbeat: float | None = None, wait: float = 0.0,
              name: str = "lease") -> Lease | DeltaLease:
    """The lease of the physical lake: a file lease for a local one (a path or a ``file:`` URI:
    the file under its identity, whatever the spelling), a Delta-table lease for an object store.

    ``wait``: how long ``with lease:`` waits for another holder. ``name``: which lease (the
    lake's write lease, or ``follower``: the one a ``replay follow`` process holds for its life).
    """
    lease: Lease | DeltaLease
    storage = lake.storage
    if storage.is_local:
        lease = Lease(Path(storage.identity) / "_medallion" / f"{name}.json", owner, ttl, heartbeat)
    else:
        lease = DeltaLease(lake, owner, ttl, heartbeat)
        if name != "lease":
            lease.TABLE = f"_medallion_{name}"
    lease.wait = wait
    return lease
