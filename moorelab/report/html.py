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


def _ratio(q: dict | None) -> str:
    """A ``vs_baseline`` entry as cell text (the same wording as the terminal table)."""
    if q is None:
        return "–"
    if "ci" not in q:
        return f"×{_fmt(q['value'])}"
    if q["value"] is None:
        return "not claimed"
    lo, hi = q["ci"]
    if q["verdict"] == "no measurable difference":
        return f"no measurable difference (×{_fmt(lo)}–{_fmt(hi)})"
    return f"×{_fmt(q['value'])} ({_fmt(lo)}–{_fmt(hi)})"


def rows_table(rows: list[dict]) -> str:
    """HTML table: one row per model variant, one column per metric (unit in the header); under
    each variant its ratios to the baseline (speed ratios with their paired-round interval)."""
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
            ratio_cells = "".join(f"<td><i>{html.escape(_ratio(r['vs_baseline'].get(k)))}</i></td>" for k in keys)
            body.append(f"<tr class='ratio'><th><i>ratio to baseline</i></th>{ratio_cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def gains_table(rows: list[dict]) -> str:
    """HTML table: per variant, tokens per $ against the baseline (interval), Δ bits per byte,
    the verdict (a gain only at equal quality and when measurable) and months of the reference
    trends with the command that reproduces each."""
    out = ["<table><tr><th>variant</th><th>tokens per $<br><small>x baseline (interval)</small></th>"
           "<th>Δ bits/byte<br><small>rule</small></th><th>verdict</th><th>months of the reference trends</th></tr>"]
    for r in rows[1:]:
        pc = r.get("performance_per_cost")
        if not pc:
            continue
        g = pc["gain_vs_baseline"]
        factor = "not claimed" if g["value"] is None else (
            f"×{_fmt(g['value'])}" + (f" ({_fmt(g['ci'][0])}–{_fmt(g['ci'][1])}, {g['confidence']:.0%})" if g.get("ci") else ""))
        months = "<br>".join(
            f"{m['value']:+.1f} months of {html.escape(name)} ({m['factor_per_year']:g}x/year"
            + (f", 90% CI {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f}" if m.get("ci") else "")
            + f")<br><small><code>{html.escape(m['command'])}</code></small>"
            for name, m in (pc["months_of_trend"] or {}).items()) or "–"
        out.append(f"<tr><th>{html.escape(r['name'])}</th><td>{html.escape(factor)}</td>"
                   f"<td>{pc['delta_bits_per_byte']['value']:+.4f}<br><small>≤ +{pc['quality_rule']['max_delta_bits_per_byte']:g}</small></td>"
                   f"<td>{html.escape(pc['verdict'])}</td><td>{months}</td></tr>")
    out.append("</table>")
    return "".join(out)


def speed_protocol_table(rows: list[dict]) -> str:
    """HTML: the speed protocol's settings, then per variant the rounds kept, measurements
    excluded for a low CPU share, re-measurements, and whether it is flagged disturbed."""
    sp = rows[0].get("speed_protocol")
    if not sp:
        return ""
    settings = {k: v for k, v in sp.items() if k not in ("tries", "rounds_kept", "measurements", "remeasured",
                                                         "disturbed_measurements", "disturbed", "figures_are")}
    head = kv_table([(k, str(v)) for k, v in settings.items()])
    body = ["<table><tr><th>variant</th><th>rounds kept</th><th>measurements</th><th>excluded (CPU share low)</th>"
            "<th>re-measured</th><th>disturbed</th><th>figures are</th></tr>"]
    for r in rows:
        p = r["speed_protocol"]
        body.append(f"<tr><th>{html.escape(r['name'])}</th><td>{p['rounds_kept']}</td><td>{p['measurements']}</td>"
                    f"<td>{p['disturbed_measurements']}</td><td>{p['remeasured']}</td>"
                    f"<td>{'yes: no ratio claimed' if p['disturbed'] else 'no'}</td><td>{html.escape(p['figures_are'])}</td></tr>")
    body.append("</table>")
    return head + "".join(body)


def float_weights_table(section: dict) -> str:
    """HTML: the quantization section on truly float32 weights (MiniLM), or why it was skipped."""
    if section.get("skipped"):
        return f"<p>{html.escape(section['model'])}: skipped, {html.escape(section['skipped'])}</p>"
    intro = (f"<p>{html.escape(section['model'])}: {html.escape(section['what'])}; "
             f"{section['sentences']['count']} sentences of {html.escape(section['sentences']['from'])}.</p>")
    body = ["<table><tr><th>technique</th><th>weight SQNR<br><small>dB, pooled</small></th><th>lowest layer SQNR<br><small>dB</small></th>"
            "<th>mean cosine similarity<br><small>sentence embeddings vs float32</small></th><th>lowest cosine similarity</th></tr>"]
    for r in section["rows"]:
        body.append(f"<tr><th>{html.escape(r['name'])}<br><small>{html.escape(r['technique'])}</small></th>"
                    f"<td>{r['weight_sqnr_db']['value']:.1f}</td><td>{r['min_layer_sqnr_db']['value']:.1f}</td>"
                    f"<td>{r['mean_cosine_similarity']['value']:.4f}</td><td>{r['min_cosine_similarity']['value']:.4f}</td></tr>")
    body.append("</table>")
    return intro + "".join(body)


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
