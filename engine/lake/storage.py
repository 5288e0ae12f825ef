"""The storage resolver: (lake URI, storage options) -> delta-rs options, a pyarrow filesystem, DuckDB.

Every module that touches files goes through :class:`Storage`, so a lake on an
object store is reached with exactly the options delta-rs uses (no module builds
its own client, and none guesses from the environment: the options come from
``--storage-option`` / ``MEDALLION_STORAGE_OPTIONS``, merged in :func:`storage_options`).

- A local lake is a directory; its root is absolute. ``file:`` URIs are local too.
- Any other ``scheme://`` root is an object store reached through delta-rs's own
  filesystem (``deltalake.fs.DeltaStorageHandler``), so pyarrow reads and writes use
  the same endpoint, credentials and flags as the Delta log.

**One lake, one name.** A lake can be spelled many ways; :meth:`Storage.resolve` gives each
spelling one ``root`` (how the code reaches it) and :attr:`Storage.identity` names the
physical lake (what the lease is keyed on: engine/lake/lease.py):

- a plain path: absolute, ``.``/``..`` and repeated or trailing slashes gone (lexically, as
  delta-rs does); relative paths are taken from the current directory;
- a ``file:`` URI (``file:///abs``, ``file://localhost/abs``, ``file:/abs``, any case of
  ``file``, percent-encoded or not): root ``file://`` + the percent-encoded normalized path,
  so delta-rs (which decodes it) and the local filesystem (:meth:`Storage.local_path`
  decodes it) reach the same directory; a ``file:`` URI naming another host, or a relative
  one (``file:lake``), is refused;
- identity of a local lake: the directory's real path (symlinks resolved), whether it was
  given as a path or as a ``file:`` URI;
- an object store: the scheme in lower case, no trailing slash; identity also writes ``s3a``
  as ``s3`` (delta-rs reaches both through one S3 store). ``.`` and ``..`` segments are
  refused (delta-rs resolves them, object keys do not).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pyarrow.fs as pafs

from engine.contract.errors import UsageError

#: ``file://`` URIs go through Arrow's local filesystem (tests turn this off to run the
#: object-store path, delta-rs's own filesystem, against local files).
LOCAL_SHORTCUT = True


#: Schemes that name the same store as another (delta-rs serves ``s3a://`` as ``s3://``).
SCHEME_ALIASES = {"s3a": "s3"}


def _scheme(root: str) -> str | None:
    head, sep, _ = root.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def _is_file_uri(text: str) -> bool:
    return text[:5].lower() == "file:"


def _clean_path(path: str) -> str:
    """An absolute path without ``.``/``..`` segments, repeated or trailing slashes."""
    path = posixpath.normpath(path)
    return "/" + path.lstrip("/")  # normpath keeps a leading "//"; POSIX reads it as "/"


def _file_uri_path(text: str) -> str:
    """The local directory a ``file:`` URI names (absolute, decoded, normalized)."""
    rest = text[len("file:"):]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            raise UsageError(f"lake {text}: a file URI must name this machine "
                             "(file:///path or file://localhost/path)")
        rest = slash + path or "/"
    if not rest.startswith("/"):
        raise UsageError(f"lake {text}: a file URI needs an absolute path (file:///path); "
                         "give a relative directory as a plain path")
    return _clean_path(unquote(rest))


def _local_dir(path: str) -> str:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"lake path {path} is a file; pass a directory for --lake")
    return path


def storage_options(explicit: Mapping[str, str] | None = None,
                    env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The lake's delta-rs options: ``MEDALLION_STORAGE_OPTIONS``, then ``explicit`` over it.

    The CLI (``--storage-option``) and the Python API (``storage_options=``) both come here.
    """
    from engine.config import environment

    opts = dict(environment(env).storage_options)
    opts.update({str(k): str(v) for k, v in (explicit or {}).items()})
    return opts


@dataclass(frozen=True)
class Storage:
    """Where a lake (or one table of it) lives, and how to reach it."""

    root: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def resolve(cls, root: str | os.PathLike[str], options: Mapping[str, str] | None = None) -> Storage:
        """Normalize ``root`` (the module's "One lake, one name"): a local path becomes
        absolute and clean, a ``file:`` URI ``file://`` + its clean, percent-encoded path, an
        object-store URI keeps its scheme (lower case) without trailing slashes."""
        text = os.fspath(root)
        if _is_file_uri(text):
            text = "file://" + quote(_local_dir(_file_uri_path(text)))
        elif _scheme(text) is None:
            text = _local_dir(_clean_path(os.path.abspath(text)))
        else:
            scheme, _, rest = text.partition("://")
            rest = rest.rstrip("/")
            if {".", ".."} & set(rest.split("/")):
                raise UsageError(f"lake {text}: '.' and '..' are not parts of an object-store "
                                 "location; spell it without them")
            text = f"{scheme.lower()}://{rest}"
        return cls(text, tuple(sorted((options or {}).items())))

    @property
    def identity(self) -> str:
        """The physical lake: for a local one the real path of its directory (symlinks
        resolved, the same for every path or ``file:`` URI spelling of it); for an object store
        ``scheme://bucket/prefix`` (``s3a`` written ``s3``). Two roots with one identity are
        one lake: they share one lease."""
        local = self.local_path()
        if local is not None:
            return os.path.realpath(local)
        root = Storage.resolve(self.root).root
        scheme, _, rest = root.partition("://")
        return f"{SCHEME_ALIASES.get(scheme, scheme)}://{rest}"

    @property
    def scheme(self) -> str | None:
        """``s3``, ``gs``, ``az``... for an object store, ``file`` for a ``file:`` URI; None
        for a local path."""
        return "file" if _is_file_uri(self.root) else _scheme(self.root)

    @property
    def is_local(self) -> bool:
        """True for a directory on this machine (a plain path or a ``file:`` URI)."""
        return self.scheme in (None, "file")

    @property
    def delta_options(self) -> dict[str, str] | None:
        """The storage options for delta-rs (None when there are none)."""
        return dict(self.options) or None

    def child(self, *parts: str) -> Storage:
        """The storage of a path under this root (a table, an experiment area)."""
        names = [p.strip("/") for p in parts]
        if self.scheme == "file":  # the root is percent-encoded: so are the names under it
            names = [quote(n) for n in names]
        return Storage("/".join([self.root, *names]), self.options)

    def local_path(self) -> str | None:
        """The root as a local filesystem path (the directory delta-rs uses for it: a
        ``file:`` URI decoded), or None for an object store."""
        if self.scheme is None:
            return _clean_path(os.path.abspath(self.root))
        if self.scheme == "file":
            return _file_uri_path(self.root)
        return None

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root's path in it (``""``: the filesystem is rooted here)."""
        local = self.local_path()
        if local is not None and (self.scheme is None or LOCAL_SHORTCUT):
            return pafs.LocalFileSystem(), local
        from deltalake.fs import DeltaStorageHandler

        return pafs.PyFileSystem(DeltaStorageHandler(self.root, self.delta_options)), ""

    def _filesystem_if_exists(self) -> tuple[pafs.FileSystem, str] | None:
        from deltalake.exceptions import TableNotFoundError

        try:  # delta-rs refuses to open a local root that does not exist
            return self.filesystem()
        except TableNotFoundError:
            return None

    def list_dirs(self) -> list[str]:
        """Names of the directories (prefixes) right under the root; [] when it does not exist."""
        found = self._filesystem_if_exists()
        if found is None:
            return []
        fs, base = found
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (FileNotFoundError, OSError):
            return []
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def exists(self) -> bool:
        found = self._filesystem_if_exists()
        if found is None:
            return False
        fs, base = found
        if base:
            return fs.get_file_info(base).type != pafs.FileType.NotFound
        try:  # an object-store prefix "exists" when something is stored under it
            return bool(fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True)))
        except (FileNotFoundError, OSError):
            return False

    def delete(self) -> None:
        """Delete everything under the root (on an object store, folder markers too)."""
        fs, base = self.filesystem()
        if base:
            fs.delete_dir(base)
            return
        # Some S3 servers keep emptied folders visible to listings for a while: remove every
        # entry, deepest first, so a listing right after shows nothing.
        entries = fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
        for info in sorted(entries, key=lambda i: (i.type != pafs.FileType.File, -i.path.count("/"))):
            with contextlib.suppress(OSError):
                fs.delete_file(info.path)

    @staticmethod
    def connect(memory_limit: int | None = None, spill_dir: str | None = None) -> Any:
        """A DuckDB connection for queries over this lake's Arrow datasets (UTC session).

        DuckDB reads the lake through delta-rs's Arrow datasets (no DuckDB extension), so
        the same options reach it; registering datasets is the query layer's job.
        ``memory_limit`` (bytes) caps DuckDB's own memory: past it, its joins, aggregates
        and sorts spill to ``spill_dir``.
        """
        import duckdb

        config: dict[str, str] = {}
        if memory_limit is not None:
            config["memory_limit"] = f"{max(1, memory_limit >> 20)}MiB"
        if spill_dir is not None:
            config["temp_directory"] = spill_dir
        con = duckdb.connect(config=config)
        con.execute("SET TimeZone = 'UTC'")
        return con
