"""Replay scope: an event-time range (widened to whole hours) and/or a set of tenants.

A scoped replay recomputes every row inside the scope exactly as a full replay
would (dedup still sees copies outside the range) and leaves the rows outside
it as they were. Per table, a row is in scope when:
- Silver, duplicates: its event_timestamp is in [start, end) and its tenant is listed;
- quarantine: its parsed event_timestamp / tenant (NULL when unparseable: never in scope);
- Gold: its window_start is in [start, end) and its tenant is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from engine.contract import schemas
from engine.contract.errors import UsageError

HOUR = timedelta(hours=1)


def parse_time(text: str, flag: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected an ISO time like 2026-03-02T13:00:00Z") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class Scope:
    start: datetime | None = None
    end: datetime | None = None
    tenants: tuple[str, ...] = ()
    #: how the scope is described in commits and the ledger (None: its times and tenants);
    #: an erasure's scope names no tenant in clear (docs/semantics.md §9)
    label: str | None = None

    @classmethod
    def of(cls, start: datetime | str | None = None, end: datetime | str | None = None,
           tenants: list[str] | tuple[str, ...] | None = None) -> Scope | None:
        s = parse_time(start, "--start") if isinstance(start, str) else start
        e = parse_time(end, "--end") if isinstance(end, str) else end
        if s is not None and e is not None and s >= e:
            raise UsageError("--start must be before --end")
        if s is None and e is None and not tenants:
            return None
        # whole hours, so hourly rows (and the 5-minute burst windows inside them) stay whole
        if s is not None:
            s = s.replace(minute=0, second=0, microsecond=0)
        if e is not None and (e.minute or e.second or e.microsecond):
            e = e.replace(minute=0, second=0, microsecond=0) + HOUR
        return cls(s, e, tuple(sorted(set(tenants or ()))))

    def describe(self) -> str:
        if self.label is not None:
            return self.label
        parts = []
        if self.start or self.end:
            parts.append(f"event time [{self.start or '-inf'}, {self.end or '+inf'})")
        if self.tenants:
            parts.append(f"tenants {', '.join(self.tenants)}")
        return " and ".join(parts)

    def source_filter(self, mode: str) -> pds.Expression | None:
        """Rows a replay in ``mode`` must read from its source (None: all of them).

        Gold mode reads Silver, whose tenant and event time are exact: both prune. Full mode
        reads Bronze, whose tenant_id medallion's writers leave NULL where it could differ
        from the tenant validate finds: the scope's tenants and NULLs are read, all times
        (dedup must see every copy of a key).
        """
        tenant = pc.field("tenant_id")
        expr = None
        if self.tenants:
            expr = tenant.isin(list(self.tenants))
            if mode == "full":
                expr = expr | tenant.is_null()
        if mode == "gold":
            ts = pc.field("event_timestamp")
            for part in ((ts >= pa.scalar(self.start, schemas.TS)) if self.start else None,
                         (ts < pa.scalar(self.end, schemas.TS)) if self.end else None):
                if part is not None:
                    expr = part if expr is None else expr & part
        return expr

    def table_filter(self, name: str) -> pds.Expression:
        """An expression no row of table ``name`` inside the scope fails (for pruning files and
        row groups; :meth:`mask` decides row by row)."""
        col = pc.field("window_start" if name in schemas.WINDOWED else "event_timestamp")
        expr = pc.scalar(True)
        if self.tenants:
            expr = expr & pc.field("tenant_id").isin(list(self.tenants))
        if self.start is not None:
            expr = expr & (col >= pa.scalar(self.start, schemas.TS))
        if self.end is not None:
            expr = expr & (col < pa.scalar(self.end, schemas.TS))
        return expr

    def mask(self, table: pa.Table, name: str) -> pa.Array:
        """True for rows inside the scope (NULL-safe: unknown time or tenant is outside)."""
        col = "window_start" if name in schemas.WINDOWED else "event_timestamp"
        m = pa.array([True] * table.num_rows, pa.bool_())
        ts = table.column(col)
        if self.start is not None:
            m = pc.and_kleene(m, pc.greater_equal(ts, pa.scalar(self.start, schemas.TS)))
        if self.end is not None:
            m = pc.and_kleene(m, pc.less(ts, pa.scalar(self.end, schemas.TS)))
        if self.tenants:
            m = pc.and_kleene(m, pc.is_in(table.column("tenant_id"), value_set=pa.array(self.tenants)))
        return pc.fill_null(m, False)

    def merge(self, old: pa.Table, new: pa.Table, name: str) -> pa.Table:
        """Old rows outside the scope + new rows inside it."""
        keep = old.filter(pc.invert(self.mask(old, name)))
        return pa.concat_tables([keep, new.filter(self.mask(new, name))])
