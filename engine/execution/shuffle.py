"""The shuffle between map and reduce tasks, through files in the lake (not Ray's object store).

A map task writes each non-empty tenant bucket it computed as one Arrow IPC file under this
run's area ``<lake>/_shuffle/<run id>/`` and hands back small :class:`Piece` handles; the
reduce task of a bucket reads the pieces of that bucket, from every map, and nothing else.
No table data passes through the driver or Ray's object store:

- on a local lake (a directory, shared by the nodes of a cluster as the lake itself is) the
  files are uncompressed and read memory-mapped, zero-copy: their pages are the kernel's page
  cache, which it can write out and drop under memory pressure (the object store's
  shared memory cannot be dropped, only spilled by Ray with a copy);
- on an object store each piece is one LZ4-compressed object, fetched whole by one GET.

A piece's name carries a fresh id per write, so a map task retried after its worker died
writes new files and never reads or replaces a half-written one; what a dead attempt left is
removed with the area. While the run lasts, the driver touches a file of the area every few
minutes (:func:`heartbeat`); when it ends, whatever the outcome, the driver cancels the
tasks still running and deletes the area. An area a killed driver left behind is removed by
``replay vacuum`` (:func:`stale_areas`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from engine.execution.faults import kill_once
from engine.lake.storage import Storage

#: The shuffle areas of a lake (or of an experiment area) live under ``<root>/_shuffle``.
AREA = "_shuffle"
#: The file a running driver touches in its area (the area's newest file: it is in use).
ALIVE = "alive"
#: How often: well within vacuum's grace for an experiment's area (an hour).
HEARTBEAT_SECONDS = 300.0


@dataclass(frozen=True)
class Piece:
    """One map task's rows of one tenant bucket, as a file of a :class:`ShuffleArea`."""

    name: str  # file name in the area
    rows: int
    size: int  # bytes of the file


@dataclass(frozen=True)
class ShuffleArea:
    """One run's shuffle directory: written by its map tasks, read by its reduce tasks."""

    root: str  # URI or path of the area
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def create(cls, lake_root: str, options: tuple[tuple[str, str], ...] = ()) -> ShuffleArea:
        """A new, empty area under ``lake_root`` (the directory exists on a local lake)."""
        area = cls(Storage(lake_root, options).child(AREA, uuid.uuid4().hex).root, options)
        fs, base = area.storage.filesystem()
        if base:  # a local directory; an object store has no directories to make
            fs.create_dir(base, recursive=True)
        return area

    @property
    def storage(self) -> Storage:
        return Storage(self.root, self.options)

    def _files(self) -> tuple[pafs.FileSystem, str, bool]:
        """(filesystem, the area's path in it, whether it is a local directory)."""
        fs, base = self.storage.filesystem()
        return fs, base, isinstance(fs, pafs.LocalFileSystem)

    def write(self, buckets: Sequence[pa.Table]) -> tuple[Piece | None, ...]:
        """Each bucket as a file (None for an empty bucket: nothing to read)."""
        fs, base, local = self._files()
        attempt = uuid.uuid4().hex
        out: list[Piece | None] = []
        for i, table in enumerate(buckets):
            name = f"{attempt}-b{i}.arrow"
            path = f"{base}/{name}" if base else name
            if not table.num_rows:
                out.append(None)
            elif local:
                out.append(Piece(name, table.num_rows, write_ipc(table, path)))
            else:  # buffered: delta-rs's stream takes bytes, which Arrow passes from a flush only
                with fs.open_output_stream(path) as raw, pa.BufferedOutputStream(raw, 8 << 20) as sink:
                    opts = pa.ipc.IpcWriteOptions(compression="lz4")
                    with pa.ipc.new_file(sink, table.schema, options=opts) as writer:
                        writer.write_table(table)
                    out.append(Piece(name, table.num_rows, sink.tell()))
            kill_once("shuffle")  # test hook: a worker dies with its pieces half written
        return tuple(out)

    def read(self, pieces: Sequence[Piece | None]) -> list[pa.Table]:
        """The pieces' tables, in the order given (the empty ones left out)."""
        fs, base, local = self._files()
        out = []
        for piece in pieces:
            if piece is None:
                continue
            path = f"{base}/{piece.name}" if base else piece.name
            if local:
                out.append(read_ipc(path))
            else:
                with fs.open_input_stream(path) as src:
                    data = src.read()
                out.append(pa.ipc.open_file(pa.BufferReader(data)).read_all())
        return out

    def touch(self) -> None:
        """Mark the area in use: its newest file's time is what vacuum reads (:func:`stale_areas`)."""
        fs, base, _ = self._files()
        path = f"{base}/{ALIVE}" if base else ALIVE
        with fs.open_output_stream(path) as raw, pa.BufferedOutputStream(raw, 1 << 12) as sink:
            sink.write(str(time.time()).encode())

    def delete(self) -> None:
        """Remove the area and every file in it (best effort: a leftover is vacuum's)."""
        with contextlib.suppress(Exception):
            self.storage.delete()
        if not self.storage.is_local:  # the folder entry some S3 servers keep listing
            parent, name = self.root.rsplit("/", 1)
            with contextlib.suppress(Exception):
                Storage(parent, self.options).filesystem()[0].delete_file(name)


def write_ipc(table: pa.Table, path: str) -> int:
    """``table`` as an uncompressed Arrow IPC file at the local ``path``; its size in bytes."""
    with pa.OSFile(path, "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.tell()


def read_ipc(path: str) -> pa.Table:
    """A local Arrow IPC file, memory-mapped: the table's buffers are the file's pages."""
    return pa.ipc.open_file(pa.memory_map(path)).read_all()


@contextlib.contextmanager
def heartbeat(area: ShuffleArea | None, every_s: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Touch ``area`` now and every ``every_s`` seconds while the block runs (its reduce tasks
    may read files written hours ago: vacuum must not take the area for a dead run's)."""
    if area is None:
        yield
        return
    stop = threading.Event()

    def touch() -> None:
        with contextlib.suppress(Exception):  # a missed beat: the next one, well within the grace
            area.touch()

    def beat() -> None:
        while not stop.wait(every_s):
            touch()

    touch()

    thread = threading.Thread(target=beat, name="medallion-shuffle-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def stale_areas(root: Storage, older_than_s: float | None) -> list[Storage]:
    """The shuffle areas under ``root`` whose newest file is older than ``older_than_s``
    seconds (an area with no file at all counts as stale; None: every area, whatever its
    files' times say): runs that ended without their driver deleting them."""
    out = []
    now = time.time()
    for name in root.child(AREA).list_dirs():
        area = root.child(AREA, name)
        if older_than_s is None:
            out.append(area)
            continue
        fs, base = area.filesystem()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base or "", recursive=True, allow_not_found=True))
        except (FileNotFoundError, OSError):
            continue
        if base:  # a local directory: made when the run started, before any file
            infos.append(fs.get_file_info(base))
        times = [i.mtime.timestamp() for i in infos if i.mtime is not None]
        if not times or now - max(times) > older_than_s:
            out.append(area)
    return out
