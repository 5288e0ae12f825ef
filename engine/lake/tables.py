"""The lake: one Delta table per contract table under a root directory or URI (docs/semantics.md §6).

:class:`Lake` is the one entry to the tables; its methods, by concern:

- where and what: ``at``, ``storage``, ``uri``, ``scratch`` (an experiment area), ``exists``;
- reading: ``table`` (cached per :func:`table_cache` block), ``dataset``, ``read``,
  ``row_count``, ``files``, ``version``, ``readable_from`` / ``check_readable`` (vacuum's
  horizon);
- commit metadata: ``carry_metadata``, ``data_changed``, ``is_active``, ``commit_metadata``,
  ``history`` (the encoding: :func:`encode_metadata` / :func:`decode_metadata` at the end);
- writing: ``ensure`` (create), ``write`` (delta-rs writes the rows), ``stage`` +
  ``commit_staged`` (workers' Parquet files, one commit), ``append_fenced`` (Bronze appends),
  ``barrier``;
- rewriting and repair: ``rewrite`` (drop the rows a predicate hits: erasure, scoped replays,
  incremental steps), ``merge_files`` (compaction), ``sweep``
  (uncommitted files of a replay), ``restore`` (rollback).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import RemoveAction

from engine.contract import schemas
from engine.contract.errors import CommitConflictError, LakeError, VersionGoneError
from engine.lake.staging import PREFIX, Staged, add_actions, stage
from engine.lake.storage import Storage

META_PREFIX = "medallion."
_cache = threading.local()


@contextmanager
def table_cache() -> Iterator[None]:
    """Within the block, this thread reuses each opened table's latest snapshot, brought up to
    date with ``update_incremental`` (~1 ms) instead of opened again (~8 ms and growing with
    the log). An incremental step opens its tables ~90 times. Tables must not be dropped and
    created again inside the block (nothing in a step does)."""
    outer = getattr(_cache, "tables", None)
    if outer is None:
        _cache.tables = {}
    try:
        yield
    finally:
        if outer is None:
            _cache.tables = None
#: Delta operations that never change which rows a table holds.
NEUTRAL_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES",
                                "CHECKPOINT", "CREATE TABLE"})
#: Row groups of ~128k rows: the unit a replay's map tasks split files into.
ROW_GROUP_ROWS = 131_072
WRITER = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="ZSTD")


@dataclass(frozen=True)
class Lake:
    """A lake root (local directory or object-store URI) plus delta-rs storage options."""

    root: str
    storage_options: Mapping[str, str] | None = None
    #: A scratch lake (an experiment) reads Bronze from its production lake and never writes it.
    bronze_root: str | None = None

    @classmethod
    def at(cls, root: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None) -> Lake:
        """A lake at ``root`` with exactly these storage options (see :func:`storage_options`
        for the merge with ``MEDALLION_STORAGE_OPTIONS`` that the CLI and API do)."""
        st = Storage.resolve(root, storage_options)
        return cls(st.root, st.delta_options)

    @property
    def storage(self) -> Storage:
        """The lake root's storage (resolver of filesystems and options)."""
        return Storage(self.root, tuple(sorted((self.storage_options or {}).items())))

    def table_storage(self, table: str) -> Storage:
        return Storage(self.uri(table), self.storage.options)

    @property
    def _opts(self) -> dict[str, str] | None:
        return self.storage.delta_options

    def uri(self, table: str) -> str:
        if table == schemas.BRONZE and self.bronze_root:
            return f"{self.bronze_root}/{table}"
        return f"{self.root}/{table}"

    def scratch(self, name: str) -> Lake:
        """The experiment area ``<lake>/_experiments/<name>``: own tables, this lake's Bronze."""
        return Lake(f"{self.root}/_experiments/{name}", self.storage_options, self.bronze_root or self.root)

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table), storage_options=self._opts)

    def table(self, table: str, version: int | None = None) -> DeltaTable:
        try:
            cache = getattr(_cache, "tables", None)
            if cache is not None and version is None:
                return self._cached(cache, table)
            dt = self._open(table)
            if version is not None and version != dt.version():
                self.check_readable(table, version)
                dt.load_as_version(version)
            return dt
        except VersionGoneError:
            raise
        except TableNotFoundError:
            raise LakeError(f"table {table} does not exist in lake {self.root}", table=table) from None
        except Exception as exc:  # delta-rs raises generic errors for bad versions
            raise LakeError(f"cannot open {table} in {self.root}: {exc}", table=table) from None

    def _open(self, table: str) -> DeltaTable:
        """Open ``table`` at its latest version. A log entry listed and then removed by a
        vacuum's cleanup (``Invalid table version``, a missing ``_delta_log`` file) is a race
        with that cleanup: the table is opened again, from the checkpoint the cleanup kept."""
        for attempt in range(4):
            try:
                return DeltaTable(self.uri(table), storage_options=self._opts)
            except TableNotFoundError:
                raise
            except Exception as exc:
                text = str(exc)
                if attempt == 3 or not ("_delta_log" in text or "Invalid table version" in text):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _cached(self, cache: dict[Any, DeltaTable], table: str) -> DeltaTable:
        key = (self.uri(table), tuple(sorted((self._opts or {}).items())))
        dt = cache.get(key)
        if dt is not None:
            try:
                dt.update_incremental()  # ~1 ms: only the log entries since
                return dt
            except Exception:  # gone or unreadable: open it again (and fail as usual)
                cache.pop(key, None)
        dt = self._open(table)
        cache[key] = dt
        return dt

    @staticmethod
    def _last_data_commit(dt: DeltaTable) -> dict[str, Any] | None:
        """The newest commit that changed rows, or the newest carrier of its metadata (a log
        cleanup leaves a carrier: :meth:`carry_metadata`); None when there is none."""
        n = 4
        while True:  # newest first, in growing windows
            entries = dt.history(n)
            for entry in entries:
                if not is_neutral(entry) or entry.get(META_PREFIX + "carried") == "true":
                    return entry
            if len(entries) < n:
                return None
            n *= 4

    def carry_metadata(self, table: str) -> dict[str, str]:
        """Custom metadata for a neutral commit that carries the last data commit's metadata
        and version forward, so a log cleanup that removes that commit loses neither."""
        dt = self.table(table)
        entry = self._last_data_commit(dt)
        if entry is None:
            return {META_PREFIX + "neutral": "true"}
        # the scope's text is left behind: it may name tenants, and a purge must not keep them
        carried = {k: v for k, v in entry.items() if isinstance(k, str) and k.startswith(META_PREFIX)
                   and k != META_PREFIX + "scope"}
        version = entry.get(META_PREFIX + "carried_data_version", entry.get("version"))
        return {**carried, META_PREFIX + "neutral": "true", META_PREFIX + "carried": "true",
                META_PREFIX + "carried_data_version": str(version)}

    def data_changed(self, table: str, since: int | None) -> bool:
        """Whether a commit after version ``since`` changed which rows ``table`` holds.

        Neutral commits (docs/semantics.md §10: compaction, Z-ordering, vacuum, archiving, property
        changes, each marked ``medallion.neutral`` or one of Delta's own maintenance
        operations) move rows without changing them, so they do not count.
        """
        latest = self.version(table)
        if latest is None or since is None:
            return latest != since
        since = max(since, -1)
        if latest < since:
            return True
        if latest == since:
            return False
        for entry in self.history(table, latest - since):
            v = entry.get("version")
            if v is None or v <= since:
                continue
            if entry.get(META_PREFIX + "carried") == "true":  # older commits were cleaned up
                return int(entry[META_PREFIX + "carried_data_version"]) > since
            if not is_neutral(entry):
                return True
        return False

    def is_active(self, table: str) -> bool:
        """The table exists and its latest commit did not retire it (an optional Gold table
        is retired by a replay whose ruleset no longer makes it, docs/semantics.md §8)."""
        if not self.exists(table):
            return False
        return table not in schemas.OPTIONAL_GOLD or not self.commit_metadata(table).get("retired")

    def readable_from(self, table: str) -> tuple[int, str] | None:
        """The oldest version of ``table`` that may still be read, and what removed the older
        ones (:func:`engine.txn.snapshots.readable_from`: the ledger is the protocol's)."""
        from engine.txn.snapshots import readable_from

        return readable_from(self, table)

    def check_readable(self, table: str, version: int) -> None:
        """Refuse, in one line, a version that a vacuum or an erasure made unreadable."""
        floor = self.readable_from(table)
        if floor is not None and version < floor[0]:
            raise VersionGoneError(
                f"{table} version {version} cannot be read: {floor[1]} removed the versions before "
                f"{floor[0]}", table=table, version=version)

    def version(self, table: str) -> int | None:
        return self.table(table).version() if self.exists(table) else None

    def ensure(self, table: str) -> DeltaTable:
        """Open ``table``, creating it empty with its schema (docs/semantics.md) on first use."""
        if not self.exists(table):
            try:
                DeltaTable.create(
                    self.uri(table),
                    schemas.SCHEMAS[table],
                    mode="ignore",
                    partition_by=schemas.PARTITIONS.get(table),
                    storage_options=self._opts,
                    commit_properties=CommitProperties(custom_metadata={META_PREFIX + "op": "create"}),
                )
            except Exception as exc:
                raise LakeError(f"cannot create {table} in {self.root}: {exc}", table=table) from None
        return self.table(table)

    def dataset(self, table: str, version: int | None = None) -> pds.Dataset:
        return self.table(table, version).to_pyarrow_dataset()

    def read(self, table: str, version: int | None = None, columns: list[str] | None = None,
             filter: pds.Expression | None = None) -> pa.Table:
        if not self.exists(table):
            return schemas.empty(schemas.SCHEMAS[table]).select(columns or schemas.SCHEMAS[table].names)
        data = self.dataset(table, version).to_table(columns=columns, filter=filter)
        if columns is None and table in schemas.SCHEMAS:
            data = schemas.conform(data, schemas.SCHEMAS[table])
        return data

    def write(self, table: str, data: pa.Table, *, mode: str, metadata: Mapping[str, Any],
              app_transactions: list[Any] | None = None) -> int:
        """Write ``data`` in one Delta commit (``overwrite`` or ``append``); returns the new version."""
        if table == schemas.BRONZE and self.bronze_root:
            raise LakeError("an experiment never writes Bronze; import into the production lake")
        self.ensure(table)
        data = schemas.conform(data, schemas.SCHEMAS[table])
        props = CommitProperties(custom_metadata=encode_metadata(metadata),
                                 app_transactions=app_transactions)
        try:
            write_deltalake(
                self.uri(table),
                data,
                mode=mode,  # type: ignore[arg-type]
                partition_by=schemas.PARTITIONS.get(table),
                storage_options=self._opts,
                commit_properties=props,
                writer_properties=WRITER,
            )
        except CommitFailedError as exc:
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        return self.table(table).version()

    def commit_staged(self, table: str, staged: Staged, *, metadata: Mapping[str, Any],
                      mode: str = "overwrite") -> int:
        """Replace ``table`` with (or append to it) the staged files in one Delta commit;
        returns the new version."""
        if table == schemas.BRONZE:
            raise LakeError("Bronze is append-only; staged files never replace it")
        dt = self.ensure(table)
        try:
            dt.create_write_transaction(
                add_actions(staged), mode=mode,  # type: ignore[arg-type]
                schema=schemas.SCHEMAS[table],
                partition_by=schemas.PARTITIONS.get(table),
                commit_properties=CommitProperties(custom_metadata=encode_metadata(metadata)))
        except CommitFailedError as exc:
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        return self.table(table).version()

    def rewrite(self, table: str, hit: Callable[[pa.Table], pa.Array], *, tag: str,
                metadata: Mapping[str, Any], prune: pds.Expression | None = None,
                add: Staged | None = None) -> int:
        """Delete the rows ``hit`` selects and add the ``add`` files, in one Delta commit.

        Copy on write, done here rather than by delta-rs (whose rewrites store strings as
        Arrow views, which pyarrow cannot filter next to plain strings): each file that holds
        a hit row is removed and its other rows are written again as a staged file; files
        ``prune`` (partition values, then row-group statistics) rules out are not read.
        Returns the new version.
        """
        dt = self.ensure(table)
        ds = dt.to_pyarrow_dataset()
        actions: list[Any] = []
        kept: list[Staged] = []
        kept_rows: list[pa.Table] = []
        adds = {a["path"]: a for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist()}
        now = int(time.time() * 1000)
        for frag in ds.get_fragments(filter=prune) if prune is not None else ds.get_fragments():
            if prune is not None:
                frag.ensure_complete_metadata()
                if not frag.subset(filter=prune, schema=ds.schema).row_groups:
                    continue
            data = frag.to_table(schema=ds.schema)
            mask = hit(data)
            if not pc.any(mask).as_py():
                continue
            rel = next(p for p in adds if frag.path == p or frag.path.endswith("/" + p))
            act = adds[rel]
            parts = {k[len("partition."):]: (None if v is None else _partition_text(v))
                     for k, v in act.items() if k.startswith("partition.")}
            actions.append(RemoveAction(rel, True, now, act.get("size_bytes"), parts or None))
            rest = data.filter(pc.invert(mask))
            if rest.num_rows:
                kept_rows.append(rest)
        if kept_rows:  # the rows kept from every rewritten file, written together: files merge
            kept.append(self.stage(table, pa.concat_tables(kept_rows), f"{tag}-k"))
        staged = Staged.merge(table, [*kept, *([add] if add is not None else [])])
        if not actions and not staged.files:
            return dt.version()
        try:
            dt.create_write_transaction(
                [*actions, *add_actions(staged)], mode="append", schema=schemas.SCHEMAS[table],
                partition_by=schemas.PARTITIONS.get(table),
                commit_properties=CommitProperties(custom_metadata=encode_metadata(metadata)))
        except CommitFailedError as exc:
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        return self.table(table).version()

    def merge_files(self, table: str, paths: list[str], *, tag: str,
                    metadata: Mapping[str, Any]) -> int:
        """Rewrite the files ``paths`` (relative to the table root) as one staged file per
        partition (and day, for time-clustered tables), in one commit: rows unchanged, files
        fewer. Returns the new version (unchanged when there is nothing to merge)."""
        dt = self.ensure(table)
        wanted = set(paths)
        adds = {a["path"]: a for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist()
                if a["path"] in wanted}
        if len(adds) < 2:
            return dt.version()
        ds = dt.to_pyarrow_dataset()
        parts = [f.to_table(schema=ds.schema) for f in ds.get_fragments()
                 if any(f.path == p or f.path.endswith("/" + p) for p in adds)]
        now = int(time.time() * 1000)
        removes = [RemoveAction(rel, False, now, act.get("size_bytes"), {
            k[len("partition."):]: (None if v is None else _partition_text(v))
            for k, v in act.items() if k.startswith("partition.")} or None)
            for rel, act in adds.items()]
        staged = self.stage(table, pa.concat_tables(parts), tag)
        dt.create_write_transaction(
            [*removes, *add_actions(staged)], mode="append", schema=schemas.SCHEMAS[table],
            partition_by=schemas.PARTITIONS.get(table),
            commit_properties=CommitProperties(custom_metadata=encode_metadata(metadata)))
        return self.table(table).version()

    def barrier(self, table: str, op_id: str) -> int:
        """An empty, neutral commit: writers fenced on an older snapshot of ``table`` must read
        it again (an erasure makes one right after recording its tombstone)."""
        dt = self.ensure(table)
        props = CommitProperties(custom_metadata=encode_metadata(
            {"op": "barrier", "replay_id": op_id, "neutral": "true"}))
        dt.create_write_transaction([], mode="append", schema=schemas.SCHEMAS[table],
                                    partition_by=schemas.PARTITIONS.get(table), commit_properties=props)
        return self.table(table).version()

    def stage(self, table: str, data: pa.Table, tag: str) -> Staged:
        """Write ``data`` as uncommitted files of ``table`` (see :mod:`engine.staging`)."""
        return stage(self.table_storage(table), table, data, tag, ROW_GROUP_ROWS)

    def row_count(self, table: str, version: int | None = None) -> int:
        """Rows of a version, from the record counts the Delta log holds (no file is read)."""
        adds = pa.table(self.table(table, version).get_add_actions(flatten=True))
        if not adds.num_rows:
            return 0
        counts = adds.column("num_records")
        if counts.null_count:  # a writer that recorded no statistics: count from the footers
            return self.dataset(table, version).count_rows()
        return int(pc.sum(counts).as_py() or 0)

    def files(self, table: str, version: int | None = None) -> set[str]:
        """Paths (relative to the table root) of the data files of a version."""
        adds = self.table(table, version).get_add_actions(flatten=True)
        return {str(p) for p in pa.table(adds).column("path").to_pylist()}

    def sweep(self, table: str, replay_id: str) -> int:
        """Delete files staged by ``replay_id`` that no version of ``table`` references.

        Tasks killed and retried, or a replay that failed before committing, leave such
        files; readers never see them. Only the latest snapshot counts as referencing, so
        call it right after the replay committed the table (or before any commit).
        Returns how many were removed (best effort).
        """
        if not self.exists(table):
            return 0
        fs, base = self.table_storage(table).filesystem()
        referenced = self.files(table)
        try:
            infos = fs.get_file_info(pafs.FileSelector(base or "", recursive=True))
        except Exception:
            return 0
        removed = 0
        mark = f"{PREFIX}{replay_id}-"
        for info in infos:
            name = info.path.rsplit("/", 1)[-1]
            if not name.startswith(mark) or info.type != pafs.FileType.File:
                continue
            rel = info.path[len(base):].lstrip("/") if base else info.path
            if rel in referenced or info.path in referenced:
                continue
            try:
                fs.delete_file(info.path)
                removed += 1
            except Exception:
                continue
        return removed

    def data_metadata_at(self, table: str, version: int) -> dict[str, Any]:
        """The medallion metadata that describes the rows of ``version``: its commit's, or,
        when that commit was neutral (an optimize, a compaction, a barrier, an archive's
        delete), the metadata of the last commit at or before it that changed rows."""
        dt = self.table(table)
        n = (dt.version() or 0) - version + 4
        while True:  # newest first, in growing windows
            entries = dt.history(n)
            for entry in entries:
                v = entry.get("version")
                if v is None or v > version:
                    continue
                if not is_neutral(entry) or entry.get(META_PREFIX + "carried") == "true":
                    return decode_metadata(entry)
            if len(entries) < n:
                return {}
            n *= 4

    def restore(self, table: str, version: int, by: str) -> int:
        """Restore ``table`` to ``version`` in a commit of its own: a change of rows (never
        neutral, whatever the commit of ``version`` was) whose metadata describes the rows it
        brings back (:meth:`data_metadata_at`) and names the operation that restored them."""
        self.check_readable(table, version)
        meta = {k: v for k, v in self.data_metadata_at(table, version).items()
                if k not in ("neutral", "carried", "carried_data_version", "op")}
        meta.update({"restored_by": by, "restored_from": version, "op": "restore"})
        self.table(table).restore(version, commit_properties=CommitProperties(
            custom_metadata=encode_metadata(meta)))
        return self.table(table).version()

    def append_fenced(self, dt: DeltaTable, table: str, data: pa.Table, metadata: Mapping[str, Any],
                      app_transactions: list[Any]) -> int:
        """Append in one commit on top of exactly the snapshot ``dt``: no rebase, no retry.

        A commit by anyone else since ``dt`` was read fails this one (CommitConflictError),
        so what the caller checked against ``dt`` (its offsets) still holds when it lands.
        With ``max_commit_retries=0`` delta-rs reports every lost race as ``CommitFailedError``
        on local, ``file://`` and S3 stores alike; any other error propagates as is. The rows
        are staged as Parquet first (row group by row group: no second copy of the batch in
        memory) and the files committed; the files of a commit that lost the race are deleted.
        """
        staged = self.stage(table, data, f"append-{uuid.uuid4().hex[:12]}")
        version = dt.version() + 1  # no rebase: the commit lands right after the snapshot, or fails
        props = CommitProperties(custom_metadata=encode_metadata(metadata),
                                 app_transactions=app_transactions, max_commit_retries=0)
        try:
            dt.create_write_transaction(add_actions(staged), mode="append",  # type: ignore[arg-type]
                                        schema=schemas.SCHEMAS[table],
                                        partition_by=schemas.PARTITIONS.get(table), commit_properties=props)
        except CommitFailedError as exc:  # lost the race: nothing references the files
            fs, base = self.table_storage(table).filesystem()
            for f in staged.files:
                with contextlib.suppress(OSError):
                    fs.delete_file(f"{base}/{f.path}" if base else f.path)
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        # any other error may come after the log entry landed (a post-commit hook, a lost
        # reply): the files stay (``replay vacuum`` removes them if nothing references them)
        with contextlib.suppress(Exception):  # a log cleanup since: callers refresh ``dt``
            dt.load_as_version(version)
        return version

    def refresh(self, table: str, dt: DeltaTable) -> DeltaTable:
        """``dt`` brought to the latest version; opened afresh (from the latest checkpoint)
        when a vacuum cleaned up the log entries between its version and now."""
        try:
            dt.update_incremental()
            return dt
        except Exception:
            return self._open(table)

    def commit_metadata(self, table: str, version: int | None = None) -> dict[str, Any]:
        """The medallion metadata of the commit that produced ``version``; by default of the
        latest commit that changed the rows (neutral maintenance commits are passed over)."""
        dt = self.table(table)
        latest = dt.version()
        if version is None:
            entry = self._last_data_commit(dt)
            if entry is None:
                return {}
            meta = decode_metadata(entry)
            for key in ("neutral", "carried", "carried_data_version", "op"):
                meta.pop(key, None) if entry.get(META_PREFIX + "carried") == "true" else None
            return meta
        if version > latest or version < 0:
            return {}
        # the newest commits first: read back only as far as the wanted version
        for entry in dt.history(latest - version + 1):
            if entry.get("version") == version:
                return decode_metadata(entry)
        return {}

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(table).history(limit)


def _partition_text(value: Any) -> str:
    """A partition value as Delta writes it in the log."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def is_neutral(entry: Mapping[str, Any]) -> bool:
    """Whether a commit (a history entry, or a log entry's ``commitInfo``) left rows unchanged."""
    return entry.get("operation") in NEUTRAL_OPERATIONS or entry.get(META_PREFIX + "neutral") == "true"


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    return {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in meta.items()}


def decode_metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in entry.items():
        if isinstance(key, str) and key.startswith(META_PREFIX):
            name = key[len(META_PREFIX):]
            try:
                out[name] = json.loads(val) if isinstance(val, str) else val
            except json.JSONDecodeError:
                out[name] = val
    return out
