"""A self-contained HTML report: tables of every figure with its unit, and embedded plots."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1e5 or (0 < abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def rows_table(rows: list[dict]) -> str:
    """HTML table: one row per model variant, one column per metric (unit in the header)."""
    keys: list[str] = []
    for r in rows:
        for k in r["metrics"]:
            if k not in keys:
                keys.append(k)
    units = {k: next(r["metrics"][k]["unit"] for r in rows if k in r["metrics"]) for k in keys}
    head = "".join(f"<th>{html.escape(k)}<br><small>{html.escape(units[k])}</small></th>" for k in keys)
    body = []
    for r in rows:
        cells = "".join(f"<td>{_fmt(r['metrics'].get(k, {}).get('value'))}</td>" for k in keys)
        body.append(f"<tr><th>{html.escape(r['name'])}<br><small>{html.escape(r['kernel'])}</small></th>{cells}</tr>")
        if r.get("vs_baseline") and r.get("technique") != "none":
            ratio_cells = "".join(f"<td><i>×{_fmt(r['vs_baseline'].get(k))}</i></td>" for k in keys)
            body.append(f"<tr class='ratio'><th><i>ratio to baseline</i></th>{ratio_cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def kv_table(pairs: list[tuple[str, str]]) -> str:
    """Two-column HTML table of (label, value) strings."""
    return "<table>" + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>" for a, b in pairs) + "</table>"


def write_report(path: Path, title: str, sections: list[tuple[str, str]], figures: list[tuple[Path, str]]) -> Path:
    """Write report.html.

    Args:
        path: output file.
        title: page title.
        sections: (heading, html body) in order.
        figures: (png path, caption), embedded as base64 so the page stands alone.

    Returns:
        ``path``.
    """
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}tr.ratio td{color:#555}figure{margin:1em 0}img{max-width:100%}"
        "figcaption{font-size:0.85em;color:#555}"
    )
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{css}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if figures:
        parts.append("<h2>Plots</h2>")
        parts.extend(_img(p, c) for p, c in figures)
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
    return Path(path)
