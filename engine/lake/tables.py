"""The lake: one Delta table per SPEC table under a root directory or URI (SPEC 6)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from engine.contract import schemas
from engine.contract.errors import CommitConflictError, LakeError
from engine.lake.staging import PREFIX, Staged, add_actions, stage
from engine.lake.storage import Storage

META_PREFIX = "medallion."
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
            dt = DeltaTable(self.uri(table), storage_options=self._opts)
            if version is not None:
                dt.load_as_version(version)
            return dt
        except TableNotFoundError:
            raise LakeError(f"table {table} does not exist in lake {self.root}", table=table) from None
        except Exception as exc:  # delta-rs raises generic errors for bad versions
            raise LakeError(f"cannot open {table} in {self.root}: {exc}", table=table) from None

    def is_active(self, table: str) -> bool:
        """The table exists and its latest commit did not retire it (an optional Gold table
        is retired by a replay whose ruleset no longer makes it, SPEC 8)."""
        if not self.exists(table):
            return False
        return table not in schemas.OPTIONAL_GOLD or not self.commit_metadata(table).get("retired")

    def version(self, table: str) -> int | None:
        return self.table(table).version() if self.exists(table) else None

    def ensure(self, table: str) -> DeltaTable:
        """Open ``table``, creating it empty with its SPEC schema on first use."""
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

    def commit_staged(self, table: str, staged: Staged, *, metadata: Mapping[str, Any]) -> int:
        """Replace ``table`` with the staged files in one Delta commit; returns the new version."""
        if table == schemas.BRONZE:
            raise LakeError("Bronze is append-only; staged files never replace it")
        dt = self.ensure(table)
        try:
            dt.create_write_transaction(
                add_actions(staged), mode="overwrite", schema=schemas.SCHEMAS[table],
                partition_by=schemas.PARTITIONS.get(table),
                commit_properties=CommitProperties(custom_metadata=encode_metadata(metadata)))
        except CommitFailedError as exc:
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        return self.table(table).version()

    def stage(self, table: str, data: pa.Table, tag: str) -> Staged:
        """Write ``data`` as uncommitted files of ``table`` (see :mod:`engine.staging`)."""
        return stage(self.table_storage(table), table, data, tag, ROW_GROUP_ROWS)

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

    def restore(self, table: str, version: int, by: str) -> int:
        """Restore ``table`` to ``version``; the commit carries that version's metadata."""
        meta = self.commit_metadata(table, version)
        meta.update({"restored_by": by, "restored_from": version})
        self.table(table).restore(version, commit_properties=CommitProperties(
            custom_metadata=encode_metadata(meta)))
        return self.table(table).version()

    def append_fenced(self, dt: DeltaTable, table: str, data: pa.Table, metadata: Mapping[str, Any],
                      app_transactions: list[Any]) -> int:
        """Append in one commit on top of exactly the snapshot ``dt``: no rebase, no retry.

        A commit by anyone else since ``dt`` was read fails this one (CommitConflictError),
        so what the caller checked against ``dt`` (its offsets) still holds when it lands.
        With ``max_commit_retries=0`` delta-rs reports every lost race as ``CommitFailedError``
        (a newer version seen before writing, or the put-if-absent of the log entry failing:
        ``MaxCommitAttempts``), on local, ``file://`` and S3 stores alike; any other error is
        not a lost race and propagates as is.
        """
        data = schemas.conform(data, schemas.SCHEMAS[table])
        props = CommitProperties(custom_metadata=encode_metadata(metadata),
                                 app_transactions=app_transactions, max_commit_retries=0)
        try:
            write_deltalake(dt, data, mode="append", partition_by=schemas.PARTITIONS.get(table),
                            commit_properties=props, writer_properties=WRITER)
        except CommitFailedError as exc:
            raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
        return dt.version()

    def commit_metadata(self, table: str, version: int | None = None) -> dict[str, Any]:
        """The medallion metadata of the commit that produced ``version`` (default: latest)."""
        dt = self.table(table)
        latest = dt.version()
        target = latest if version is None else version
        if target > latest or target < 0:
            return {}
        # the newest commits first: read back only as far as the wanted version
        for entry in dt.history(latest - target + 1):
            if entry.get("version") == target:
                return decode_metadata(entry)
        return {}

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(table).history(limit)


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
