"""Bronze as every reader sees it: the hot table plus its archive, split at a cutoff date.

``replay archive --before D --to URI`` (engine/lifecycle/archive.py) copies the hot
rows with ingestion_date < D into the archive's ``bronze_api_usage`` and records, in the
ledger, the archive location and the cutoff D. From that ledger row on, Bronze is:

- hot rows with ingestion_date >= cutoff, and
- archive rows with ingestion_date < cutoff.

The ledger row is the switch: rows copied by an archive that died before it are beyond
the cutoff in the archive (never read, removed by the next archive), and hot rows below
the cutoff that an archive did not get to delete are not read either. Rows imported
later with an ingestion_date below the cutoff go to the archive (see importers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from engine.contract import schemas
from engine.lake.tables import Lake


@dataclass(frozen=True)
class SourcePart:
    """One table a replay reads, at a version; for Bronze, restricted to some ingestion dates."""

    lake: Lake
    version: int | None
    after: date | None = None  # ingestion_date >= after
    before: date | None = None  # ingestion_date < before
    table: str = schemas.BRONZE

    def filter(self) -> pds.Expression | None:
        col = pc.field("ingestion_date")
        parts = [e for e in ((col >= pa.scalar(self.after, pa.date32())) if self.after else None,
                             (col < pa.scalar(self.before, pa.date32())) if self.before else None)
                 if e is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] & parts[1]

    def exists(self) -> bool:
        return self.lake.exists(self.table)

    def dataset(self) -> pds.Dataset:
        return self.lake.dataset(self.table, self.version)

    def scan_filter(self, extra: pds.Expression | None) -> pds.Expression | None:
        flt = self.filter()
        if extra is not None:
            flt = extra if flt is None else flt & extra
        return flt

    def count_rows(self) -> int:
        if not self.exists():
            return 0
        flt = self.filter()
        ds = self.dataset()
        return ds.count_rows(filter=flt) if flt is not None else ds.count_rows()

    def read(self, columns: list[str], extra: pds.Expression | None = None) -> pa.Table:
        if not self.exists():
            return schemas.BRONZE_SCHEMA.empty_table().select(columns)
        return self.dataset().to_table(columns=columns, filter=self.scan_filter(extra))


@dataclass(frozen=True)
class Archive:
    """Where a lake's archived Bronze lives and below which ingestion date it holds it."""

    lake: Lake
    cutoff: date
    operation: str


def archive_of(lake: Lake) -> Archive | None:
    """The lake's archive, from its last successful ``archive`` ledger row (None: never archived).

    An experiment area reads its production lake's archive, as it reads its Bronze.
    """
    from engine.txn.snapshots import last_archive

    found = last_archive(Lake(lake.bronze_root or lake.root, lake.storage_options))
    if found is None:
        return None
    where, cutoff, op_id = found
    return Archive(Lake.at(where, lake.storage_options), cutoff, op_id)


def bronze_parts(lake: Lake, hot_version: int | None = None,
                 archive_version: int | None = None) -> list[SourcePart]:
    """The parts Bronze is read from (the hot table at ``hot_version``, default current)."""
    prod = Lake(lake.bronze_root or lake.root, lake.storage_options)
    hv = hot_version if hot_version is not None else prod.version(schemas.BRONZE)
    arch = archive_of(lake)
    if arch is None:
        return [SourcePart(prod, hv)]
    av = archive_version if archive_version is not None else arch.lake.version(schemas.BRONZE)
    return [SourcePart(prod, hv, after=arch.cutoff), SourcePart(arch.lake, av, before=arch.cutoff)]


def bronze_rows(lake: Lake, hot_version: int | None = None, archive_version: int | None = None) -> int:
    """|Bronze|: hot and archive together."""
    return sum(p.count_rows() for p in bronze_parts(lake, hot_version, archive_version))
