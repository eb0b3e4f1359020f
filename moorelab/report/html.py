"""A self-contained HTML report: tables of every figure with its unit, and embedded plots."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from moorelab.report.console import ratio_text


def _img(path: Path, alt: str, credit: str | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = html.escape(alt) + (f"<br><span class='credit'>{html.escape(credit)}</span>" if credit else "")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{cap}</figcaption></figure>")


def figure(path: Path, caption: str, credit: str | None = None) -> str:
    """One plot as an HTML figure: the PNG inlined as base64 (the page needs no other file and
    no network), the caption under it, and the data credit when given."""
    return _img(path, caption, credit)


def figure_row(figures: list[tuple[Path, str] | tuple[Path, str, str | None]]) -> str:
    """Plots side by side (two per row in a 1280-pixel window, stacked in a narrow one), each
    ``(png path, caption[, credit])`` as in :func:`figure`."""
    return "<div class='figrow'>" + "".join(figure(*f) for f in figures) + "</div>"


def _ratio(q: dict | None) -> str:
    """A ``vs_baseline`` entry as cell text: the terminal table's wording
    (:func:`moorelab.report.console.ratio_text`), a plain ratio within 5% of 1 to 3 decimals."""
    if q is not None and "ci" not in q and abs(q["value"] - 1) < 0.05:
        return f"×{q['value']:.3f}"
    return ratio_text(q)


def _breakable(spec: str) -> str:
    """A technique spec as HTML that may wrap after its commas and colons (no mid-word breaks)."""
    return html.escape(spec).replace(",", ",<wbr>").replace(":", ":<wbr>")


#: the variants table's groups of measures: (group heading, [(metric, label with unit, scale, format)])
MEASURE_GROUPS: list[tuple[str, list[tuple[str, str, float, str]]]] = [
    ("Quality on the text (lower is better)", [
        ("bits_per_byte", "bits per byte", 1.0, ".4f"),
        ("perplexity", "perplexity, per token", 1.0, ".2f"),
    ]),
    ("Speed, batch 1", [
        ("prefill_tokens_per_s", "prefill, tokens/s", 1.0, ".1f"),
        ("decode_tokens_per_s", "decode, tokens/s", 1.0, ".1f"),
        ("decode_latency_p50_ms", "decode latency p50, ms/token", 1.0, ".1f"),
        ("decode_latency_p90_ms", "decode latency p90, ms/token", 1.0, ".1f"),
        ("decode_latency_p99_ms", "decode latency p99, ms/token", 1.0, ".1f"),
    ]),
    ("Memory and size", [
        ("peak_rss_bytes", "peak memory (RSS), MB", 1e-6, ",.0f"),
        ("weight_bytes", "weights, MB", 1e-6, ",.1f"),
        ("parameters", "parameters, millions", 1e-6, ".2f"),
    ]),
    ("Cost", [
        ("usd_per_million_tokens_decode", "cost, $ per 1M decoded tokens", 1.0, ".3f"),
    ]),
    ("The measurement itself", [
        ("cpu_share", "CPU share while timed (median of kept rounds)", 1.0, ".2f"),
    ]),
]


def metric_label(key: str, unit: str = "") -> str:
    """The reader's label of a metric, with its unit ("decode, tokens/s"); for a metric the
    report does not know, its name in words followed by its unit."""
    for _, items in MEASURE_GROUPS:
        for k, label, _, _ in items:
            if k == key:
                return label
    return key.replace("_", " ") + (f", {unit}" if unit else "")


def _better(key: str, q: dict | None) -> str:
    """CSS class of a ratio cell: 'better' / 'worse' for a measurable change in the direction
    :data:`moorelab.measure.row.METRICS` calls better / worse, else ''."""
    from moorelab.measure.row import METRICS

    if q is None or q.get("value") is None or key not in METRICS:
        return ""
    if "ci" in q:
        if q["verdict"] not in ("higher", "lower"):
            return ""
        up = q["verdict"] == "higher"
    else:
        if abs(q["value"] - 1) < 1e-9:
            return ""
        up = q["value"] > 1
    return "better" if up == METRICS[key][1] else "worse"


def rows_table(rows: list[dict]) -> str:
    """HTML table for a reader: one column per model variant, one line per measure (a human
    label with its unit, grouped: quality, speed, memory, cost, the measurement), each value
    with its ratio to the baseline beside it (speed and cost ratios paired by round with their
    interval; "no measurable difference" when it contains 1; green when better, red when worse).
    Under the table, notes: how ratios are computed, and each variant's technique, kernels and
    decode path. Cells wrap, so the table fits a 1280-pixel window."""
    from moorelab.report.results import NO_RATIO_METRICS

    present: list[str] = []
    for r in rows:
        for k in r["metrics"]:
            if k not in present:
                present.append(k)
    known = {k for _, items in MEASURE_GROUPS for k, *_ in items}
    groups = [(g, [it for it in items if it[0] in present]) for g, items in MEASURE_GROUPS]
    extra = [k for k in present if k not in known]
    if extra:
        groups.append(("Other measures", [(k, metric_label(k, next(r["metrics"][k]["unit"] for r in rows if k in r["metrics"])),
                                           1.0, ".4g") for k in extra]))
    ncol = len(rows) + 1
    head = "".join(
        f"<th scope='col'>{html.escape(r['name'])}"
        + ("<br><small>baseline</small>" if i == 0 else
           "" if r["technique"] == r["name"] else f"<br><small>{_breakable(r['technique'])}</small>") + "</th>"
        for i, r in enumerate(rows))
    body = []
    for group, items in groups:
        if not items:
            continue
        body.append(f"<tr class='group'><th colspan='{ncol}'>{html.escape(group)}</th></tr>")
        for key, label, scale, fmt in items:
            cells = []
            for i, r in enumerate(rows):
                m = r["metrics"].get(key)
                val = "–" if m is None or m["value"] is None else format(m["value"] * scale, fmt)
                ratio = ""
                if i > 0 and key not in NO_RATIO_METRICS:
                    q = (r.get("vs_baseline") or {}).get(key)
                    cls = _better(key, q)
                    ratio = f"<span class='ratio {cls}'>{html.escape(_ratio(q))}</span>"
                cells.append(f"<td><span class='val'>{val}</span>{ratio}</td>")
            body.append(f"<tr><th scope='row'>{html.escape(label)}</th>{''.join(cells)}</tr>")
    conf = next((q.get("confidence") for r in rows[1:] for q in (r.get("vs_baseline") or {}).values()
                 if q.get("confidence")), None)
    pairs = next((q.get("pairs") for r in rows[1:] for q in (r.get("vs_baseline") or {}).values() if q.get("pairs")), None)
    notes = [
        "× is the ratio to the baseline (first column). Speed and cost ratios are the median of per-round paired "
        "ratios" + (f" over {pairs} rounds" if pairs else "") + " with their "
        + (f"{conf:.0%} " if conf else "") + "interval in brackets; an interval that contains 1 reads "
        "“no measurable difference”; a variant whose timing was disturbed has no ratio (“not claimed”). Other "
        "ratios are the plain ratio of the two figures. Green: better, red: worse, by the measure's own direction.",
    ]
    for r in rows:
        what = "" if r["technique"] == "none" else f"<code>{html.escape(r['technique'])}</code>; "
        note = r.get("notes") or ""
        if r["technique"] == "none" and len(note) > 160:
            note = "the baseline (see “Baseline” below)"
        notes.append(f"<b>{html.escape(r['name'])}</b>: {what}{html.escape(note)}"
                     f"{'; ' if note else ''}kernels and decode path: {html.escape(r.get('kernel', '–'))}")
    return (f"<table class='variants'><thead><tr><th scope='col'>measure</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            "<ul class='notes'>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")


def gains_table(rows: list[dict]) -> str:
    """HTML table: per variant, tokens per $ against the baseline (interval), the change in bits
    per byte against the quality rule, the verdict (a gain only at equal quality and when
    measurable) and, for a credited gain, the months of each reference trend with the command
    that reproduces it."""
    from moorelab.report.summary import TREND_WORDS

    out = ["<table class='gains'><thead><tr><th scope='col'>variant</th><th scope='col'>tokens per $<br><small>× baseline "
           "(interval)</small></th><th scope='col'>Δ bits per byte<br><small>allowed</small></th><th scope='col'>verdict</th>"
           "<th scope='col'>months of the reference trends<br><small>credited gains only</small></th></tr></thead><tbody>"]
    for r in rows[1:]:
        pc = r.get("performance_per_cost")
        if not pc:
            continue
        g = pc["gain_vs_baseline"]
        factor = "not claimed" if g["value"] is None else (
            f"×{g['value']:.2f}" + (f" ({g['ci'][0]:.2f}–{g['ci'][1]:.2f}, {g['confidence']:.0%})" if g.get("ci") else ""))
        months = "<br>".join(
            f"{m['value']:+.1f} months of {html.escape(TREND_WORDS.get(name, name))} (×{m['factor_per_year']:g}/year"
            + (f", 90% CI {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f}" if m.get("ci") else "")
            + f")<br><small><code>{html.escape(m['command'])}</code></small>"
            for name, m in (pc["months_of_trend"] or {}).items()) or "–"
        cls = "credited" if pc["credited"] else "notcredited"
        out.append(f"<tr><th scope='row'>{html.escape(r['name'])}</th><td class='n'>{html.escape(factor)}</td>"
                   f"<td class='n'>{pc['delta_bits_per_byte']['value']:+.4f}<br>"
                   f"<small>≤ +{pc['quality_rule']['max_delta_bits_per_byte']:g}</small></td>"
                   f"<td><span class='{cls}'>{'credited' if pc['credited'] else 'not credited'}</span>: "
                   f"{html.escape(pc['verdict'])}</td><td>{months}</td></tr>")
    out.append("</tbody></table>")
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
        body.append(f"<tr><th scope='row'>{html.escape(r['name'])}</th><td class='n'>{p['rounds_kept']}</td>"
                    f"<td class='n'>{p['measurements']}</td>"
                    f"<td class='n'>{p['disturbed_measurements']}</td><td class='n'>{p['remeasured']}</td>"
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


def accuracy_table(rows: list[dict]) -> str:
    """Zero-shot accuracy of each row (``rows[i]["accuracy"]`` from
    :func:`moorelab.report.eval_job.row_accuracy`): acc and acc_norm with their 95% Wilson
    intervals, and the subset scored; "" when no row was scored."""
    scored = [r for r in rows if r.get("accuracy")]
    if not scored:
        return ""
    body = []
    subset = ""
    for r in scored:
        a = r["accuracy"]
        if "skipped" in a:
            body.append(f"<tr><th scope='row'>{html.escape(r['name'])}</th><td colspan='2'>skipped: {html.escape(a['skipped'])}</td></tr>")
            continue
        subset = f"{a['subset']}; chance {a['chance']:g}"
        cells = "".join(f"<td class='n'>{a[k]['value']:.3f} ({a[k]['ci95'][0]:.3f}–{a[k]['ci95'][1]:.3f})</td>"
                        for k in ("acc", "acc_norm"))
        body.append(f"<tr><th scope='row'>{html.escape(r['name'])}</th>{cells}</tr>")
    return ("<table class='kv'><tr><th scope='col'>variant</th><th scope='col'>acc (95% Wilson interval)</th>"
            "<th scope='col'>acc_norm (95% Wilson interval)</th></tr>" + "".join(body) + "</table>"
            + (f"<p>Zero-shot multiple choice as lm-evaluation-harness defines it, on {html.escape(subset)}.</p>" if subset else ""))


def kv_table(pairs: list[tuple[str, str]]) -> str:
    """Two-column HTML table of (label, value) strings; an identifier used as a label is shown
    in words ("window_tokens" → "window tokens")."""
    return ("<table class='kv'>" + "".join(f"<tr><th scope='row'>{html.escape(a.replace('_', ' '))}</th>"
                                           f"<td>{html.escape(b)}</td></tr>" for a, b in pairs) + "</table>")


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 16px;color:#222;line-height:1.4}"
    "h1{margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em;max-width:100%}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "td{overflow-wrap:anywhere}th{background:#f4f4f4}th[scope=row]{font-weight:normal}"
    "table.kv th{white-space:nowrap}td.n{text-align:right;white-space:nowrap}"
    "table.variants{width:100%;table-layout:fixed}table.variants th[scope=col]:first-child{width:13em}"
    "table.variants th{overflow-wrap:anywhere}table.variants td,table.variants th[scope=col]{text-align:right}table.variants th[scope=col]:first-child{text-align:left}"
    "tr.group th{text-align:left;background:#e8eef6;font-weight:bold}"
    ".val{display:block}.ratio{display:block;font-size:0.85em;color:#555}"
    ".ratio.better{color:#1a7f37}.ratio.worse{color:#b42318}"
    "ul.notes{font-size:0.85em;color:#444;padding-left:1.2em}ul.notes li{margin:0.2em 0}"
    "figure{margin:0.8em 0;max-width:800px}img{max-width:100%;height:auto}figcaption{font-size:0.85em;color:#444}"
    ".credit{color:#666;font-size:0.95em}"
    ".figrow{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}"
    "code{font-size:0.9em;overflow-wrap:anywhere}"
    ".summary{font-size:1.02em}.summary p{margin:0.5em 0}"
    ".warnings{border:2px solid #b42318;background:#fff4f2;padding:0.4em 1em;margin:0.8em 0;border-radius:4px}"
    ".warnings h2{border:none;margin:0.2em 0;font-size:1.1em;color:#b42318}.warnings li{margin:0.25em 0}"
    ".verdicts li{margin:0.25em 0}.credited{color:#1a7f37;font-weight:bold}.notcredited{color:#b42318;font-weight:bold}"
)


def write_report(path: Path, title: str, sections: list[tuple[str, str]], figures: list[tuple[Path, str]],
                 *, summary: str | None = None) -> Path:
    """Write report.html: one self-contained page (styles inline, plots as base64 PNG), no
    network fetch, laid out for a 1280-pixel-wide window without sideways scrolling.

    Args:
        path: output file.
        title: page title.
        sections: (heading, html body) in order.
        figures: (png path, caption), embedded as base64 under a last "Plots" heading (plots can
            also sit in a section's body: :func:`figure`, :func:`figure_row`).
        summary: HTML put first, under the title (the reader's summary:
            :func:`moorelab.report.summary.reader_summary`).

    Returns:
        ``path``.
    """
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append(summary)
    for heading, body in sections:
        if body:  # a section with nothing to show (e.g. no row scored for accuracy) is left out
            parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if figures:
        parts.append("<h2>Plots</h2>")
        parts.extend(_img(p, c) for p, c in figures)
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
    return Path(path)
