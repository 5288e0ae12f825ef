"""A self-contained HTML report of what a rule change did (works offline: inline SVG, no JS)."""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

COLORS = {"before": "#9aa5b1", "after": "#2f6fde"}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d9e2ec;padding:4px 8px;text-align:right}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
figure{margin:12px 0;display:inline-block;vertical-align:top}figcaption{font-weight:600}
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def table_html(tbl: pa.Table, limit: int = 50) -> str:
    rows = tbl.slice(0, limit).to_pylist()
    head = "".join(f"<th>{_esc(c)}</th>" for c in tbl.column_names)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(chart_id: str, title: str, categories: list[str], series: dict[str, list[float]],
              width: int = 560, height: int = 240) -> str:
    """Grouped bars as inline SVG (one group per category, one bar per series)."""
    top = max([v for vals in series.values() for v in vals] + [1])
    left, bottom, pad = 48, 40, 8
    plot_w, plot_h = width - left - pad, height - bottom - pad
    group_w = plot_w / max(len(categories), 1)
    bar_w = max(2.0, (group_w - 6) / max(len(series), 1))
    parts = [f'<svg width="{width}" height="{height}" '
             f'data-chart="{_esc(chart_id)}" role="img" aria-label="{_esc(title)}">']
    for k in range(5):
        y = pad + plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7eb"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{_tick(top * (4 - k) / 4)}</text>')
    for i, cat in enumerate(categories):
        x0 = left + i * group_w + 3
        for j, (name, vals) in enumerate(series.items()):
            h = plot_h * vals[i] / top
            color = COLORS.get(name, "#888")
            parts.append(f'<rect x="{x0 + j * bar_w:.1f}" y="{pad + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{_esc(cat)} {_esc(name)}: '
                         f'{vals[i]:,.0f}</title></rect>')
        parts.append(f'<text x="{x0 + group_w / 2 - 3:.1f}" y="{height - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{_esc(cat)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{_esc(title)}</figcaption>{''.join(parts)}</figure>"


def _tick(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == int(v) else f"{v:.2g}"


def histogram(values: list[int], bins: int = 12) -> tuple[list[str], list[float]]:
    if not values:
        return ["0"], [0]
    lo, hi = min(values), max(values)
    if lo == hi:
        return [str(lo)], [float(len(values))]
    step = (hi - lo) / bins
    counts = [0.0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    return [f"{lo + step * i:,.0f}" for i in range(bins)], counts


def render(title: str, summary: dict[str, pa.Table], row_diffs: dict[str, dict[str, int]]) -> str:
    daily = summary["daily"].to_pylist()
    charts = []
    for plan in sorted({r["plan"] for r in daily}):
        rows = [r for r in daily if r["plan"] == plan]
        days = [str(r["day"]) for r in rows]
        charts.append(bar_chart(f"over-limit-{plan}", f"Over-limit minutes per day: {plan}", days, {
            "before": [r["over_limit_minutes_before"] for r in rows],
            "after": [r["over_limit_minutes_after"] for r in rows]}))
        charts.append(bar_chart(f"alerts-{plan}", f"Alerts per day: {plan}", days, {
            "before": [r["alerts_before"] for r in rows], "after": [r["alerts_after"] for r in rows]}))
    deltas = [r["overage_delta"] for r in summary["tenant_changes"].to_pylist() if r["overage_delta"]]
    cats, counts = histogram(deltas)
    dist = bar_chart("tenant-change", "Tenants by change in overage requests (after - before)",
                     cats, {"after": counts}, width=760)
    diff_rows = defaultdict(dict)
    for t, c in row_diffs.items():
        diff_rows[t] = c
    diff_tbl = pa.Table.from_pylist([{"table": t, **c} for t, c in diff_rows.items()]) if diff_rows \
        else pa.table({"table": pa.array([], pa.string())})
    legend = "".join(f'<span style="background:{c}"></span>{n}' for n, c in COLORS.items())
    regions = ""
    if "regions" in summary:  # docs/semantics.md §8: where the region table exists
        rows = summary["regions"].to_pylist()
        names = ["(none)" if r["data_residency_region"] is None else r["data_residency_region"]
                 for r in rows]
        regions = ("<h2>Requests per data-residency region</h2>" + table_html(summary["regions"])
                   + bar_chart("regions", "Requests per region", names, {
                       "before": [r["requests_before"] for r in rows],
                       "after": [r["requests_after"] for r in rows]}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by medallion-replay.</p>
<h2>Per plan, before vs after</h2>
{table_html(summary["plans"])}
<h2>Tenants that flip</h2>
{table_html(summary["flips"])}
<h2>Over-limit minutes and alerts per day</h2>
<p class="legend">{legend}</p>
{''.join(charts)}
<h2>Distribution of per-tenant change</h2>
{dist}
<h2>Top changed tenants</h2>
{table_html(summary["top_tenants"])}
{regions}
<h2>Row changes per table</h2>
{table_html(diff_tbl)}
</body></html>
"""


def write_report(path: str | Path, title: str, summary: dict[str, pa.Table],
                 row_diffs: dict[str, dict[str, int]]) -> Path:
    out = Path(path)
    out.write_text(render(title, summary, row_diffs), encoding="utf-8")
    return out
