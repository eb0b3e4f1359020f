"""The reader's summary at the top of report.html: what was measured, on what, on which machine;
the best improvement and what it buys; each variant's verdict; and warnings a reader cannot miss.

Every figure is read from the results dictionary as written to results.json (``moorelab run``
or ``moorelab improve``): rows with ``performance_per_cost`` (``credited``, ``verdict``,
``months_of_trend``; :func:`moorelab.report.results.add_cost_gain`), ``speed_disturbed`` and
``speed_protocol`` (:func:`moorelab.measure.task.measure_speed_rows`). A gain is called a gain
only where the results credit it (equal quality, measurable); a speed-up bought with quality is
said to be one, with its figure and the rule it broke.
"""

from __future__ import annotations

import html

#: the reference trends in words (results key → phrase), as months of ... are read
TREND_WORDS = {
    "algorithmic_efficiency": "algorithmic progress",
    "llm_price_at_fixed_capability": "the fall in LLM prices at fixed capability",
}


def _x(v: float) -> str:
    return f"×{v:.2f}"


def _factor(g: dict) -> str:
    """"×2.83 tokens per $ (2.37–3.36)" from a ``gain_vs_baseline`` entry with a value."""
    ci = f" ({g['ci'][0]:.2f}–{g['ci'][1]:.2f})" if g.get("ci") else ""
    return f"{_x(g['value'])} tokens per ${ci}"


def _months(months: dict | None) -> str:
    """"+8.2 months of algorithmic progress (90% CI +6.3 to +11.6) and +2.3 months of ..."."""
    parts = []
    for name, m in (months or {}).items():
        ci = f" (90% CI {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f})" if m.get("ci") else ""
        parts.append(f"{m['value']:+.1f} months of {TREND_WORDS.get(name, name.replace('_', ' '))}{ci}")
    return " and ".join(parts)


def _why_not_claimed(g: dict) -> str:
    v = str(g.get("verdict") or "no paired rounds")
    return v[len("not claimed: "):] if v.startswith("not claimed: ") else v


def variant_verdict(row: dict) -> str:
    """One sentence on a non-baseline row: its tokens per $ against the baseline with the
    interval, its change in bits per byte, and whether that is credited as a gain at equal
    quality (with the months of the reference trends) or why not.

    Raises:
        KeyError: a row without ``performance_per_cost`` (the baseline).
    """
    pc = row["performance_per_cost"]
    g, d = pc["gain_vs_baseline"], pc["delta_bits_per_byte"]["value"]
    rule = pc["quality_rule"]["max_delta_bits_per_byte"]
    dq = f"{d:+.4f} bits per byte"
    if pc["credited"]:
        kind = "a gain" if g["value"] > 1 else "a loss"
        return (f"{_factor(g)} at {dq} (within the +{rule:g} allowed): {kind} at equal quality, worth "
                f"{_months(pc['months_of_trend'])}.")
    if not pc["quality_rule"]["held"]:
        if g["value"] is None or str(g.get("verdict", "")).startswith("not claimed"):
            speed = f"tokens per $ not claimed ({_why_not_claimed(g)})"
        elif g.get("verdict") == "no measurable difference":
            speed = f"no measurable difference in tokens per $ (×{g['ci'][0]:.2f}–{g['ci'][1]:.2f})"
        else:
            speed = _factor(g)
        return f"{speed} but {dq}, above the +{rule:g} allowed: not credited as a gain at equal quality."
    if g["value"] is None or str(g.get("verdict", "")).startswith("not claimed"):
        return f"tokens per $ not claimed ({_why_not_claimed(g)}); {dq}."
    if g.get("verdict") == "no measurable difference":
        return (f"no measurable difference in tokens per $ (×{g['ci'][0]:.2f}–{g['ci'][1]:.2f}) at {dq}: "
                "nothing to credit.")
    return f"{_factor(g)} at {dq}: {pc['verdict']}."


def best_improvement(rows: list[dict]) -> str:
    """The headline: the largest gain credited at equal quality and what it buys in months of the
    reference trends; when none is credited, says so and names the largest speed-up with why it
    is not credited (or that no variant was measurably faster)."""
    variants = [r for r in rows[1:] if r.get("performance_per_cost")]
    if not variants:
        return "Only the baseline was measured: there is no improvement to compare."
    credited = [r for r in variants if r["performance_per_cost"]["credited"]
                and r["performance_per_cost"]["gain_vs_baseline"]["value"] > 1]
    if credited:
        best = max(credited, key=lambda r: r["performance_per_cost"]["gain_vs_baseline"]["value"])
        return f"Best improvement: {best['name']}: {variant_verdict(best)}"
    faster = [r for r in variants if r["performance_per_cost"]["gain_vs_baseline"].get("value") is not None
              and r["performance_per_cost"]["gain_vs_baseline"].get("verdict") == "higher"]
    if all(r["performance_per_cost"]["gain_vs_baseline"].get("value") is None for r in variants):
        return ("No gain can be claimed: no variant's tokens per $ could be compared with the baseline's "
                f"({_why_not_claimed(variants[0]['performance_per_cost']['gain_vs_baseline'])}; see Warnings).")
    if not faster:
        return ("No variant is credited with a gain at equal quality, and none was measurably cheaper per token "
                "than the baseline.")
    top = max(faster, key=lambda r: r["performance_per_cost"]["gain_vs_baseline"]["value"])
    return (f"No variant is credited with a gain at equal quality. The largest speed-up, {top['name']}: "
            f"{variant_verdict(top)}")


def what_was_measured(results: dict) -> str:
    """Plain sentences: the model and its variants, the text, the measures, the machine, the
    speed protocol and the assumed price."""
    rows = results["rows"]
    model, task, env = results.get("model", {}), results.get("task", {}), results.get("environment", {})
    base = rows[0]["name"]
    names = [r["name"] for r in rows[1:]]
    variants = (f" and {len(names)} variant{'s' if len(names) != 1 else ''} of it ({'; '.join(names)})" if names
                else "")
    text = task.get("text", "a text")
    size = ", ".join(x for x in (f"{task['bytes']:,} bytes" if task.get("bytes") else "",
                                 f"{task['tokens']:,} tokens" if task.get("tokens") else "") if x)
    price = task.get("usd_per_hour_assumed", {}).get("value")
    out = [f"{model.get('name', 'The model')}, baseline “{base}”{variants}, measured on the same text: {text}"
           + (f" ({size})" if size else "") + ". Quality is bits per byte of that text (lower is better), speed is "
           "prefill and decode tokens per second at batch 1, memory is peak RSS and weight bytes, and cost is $ per "
           "million decoded tokens" + (f" at an assumed ${price:g}/hour" if price is not None else "") + "."]
    machine = ", ".join(x for x in (env.get("cpu_model"), f"{env['cpu_count']} CPUs" if env.get("cpu_count") else "",
                                    f"{env['torch_threads']} torch threads" if env.get("torch_threads") else "",
                                    f"torch {env['torch_version']}" if env.get("torch_version") else "") if x)
    sp = rows[0].get("speed_protocol")
    proto = ""
    if sp:
        excluded = sum(r.get("speed_protocol", {}).get("disturbed_measurements", 0) for r in rows)
        total = sum(r.get("speed_protocol", {}).get("measurements", 0) for r in rows)
        proto = (f" Speed figures are medians over {sp['rounds']} rounds with the variants interleaved; "
                 + (f"{excluded} of {total} timed measurements were excluded for a CPU share under "
                    f"{sp['min_cpu_share']:.2f} (other processes running) and taken again."
                    if excluded else f"all {total} timed measurements ran undisturbed."))
    if machine:
        out.append(f"Machine: {machine}.{proto}")
    bl = model.get("baseline") or {}
    if bl and not bl.get("truly_float", True):
        out.append(f"The baseline “{base}” is not an original float32 model: the rounding of the file it was read "
                   "from is already in its weights, so quantization rows measure the loss on top of it (see Baseline).")
    return " ".join(out)


def warnings(results: dict) -> list[str]:
    """What a reader must not miss, one sentence each: disturbed speed measurements (what is not
    claimed because of them), speed-ups not credited at equal quality, variants skipped, a
    section skipped, a parity check that failed or was not made."""
    rows = results["rows"]
    out = []
    busy = [r["name"] for r in rows if r.get("speed_disturbed")]
    if busy:
        scope = ("the baseline is among them, so no speed ratio, gain or months figure is claimed for any variant"
                 if rows[0].get("speed_disturbed") else
                 "their speed figures are shown, but no speed ratio, gain or months figure is claimed for them")
        out.append(f"Disturbed measurement: other processes kept taking the CPU, leaving too few undisturbed speed "
                   f"rounds for {', '.join(busy)}; {scope}. Re-run on an idle machine.")
    for r in rows[1:]:
        pc = r.get("performance_per_cost")
        if not pc or pc["credited"]:
            continue
        g = pc["gain_vs_baseline"]
        if g.get("value") is not None and g.get("verdict") == "higher" and not pc["quality_rule"]["held"]:
            out.append(f"Not credited: {r['name']} is {_x(g['value'])} tokens per $ but its bits per byte rose by "
                       f"{pc['delta_bits_per_byte']['value']:+.4f}, above the "
                       f"+{pc['quality_rule']['max_delta_bits_per_byte']:g} allowed; a speed-up bought with quality "
                       "is not counted as a gain at equal quality (nor in months of the trends).")
    for s in results.get("skipped_variants") or []:
        out.append(f"Variant skipped: {s['name']} ({s['spec']}): {s['reason']}.")
    fw = results.get("quantization_on_float_weights")
    if fw and fw.get("skipped"):
        out.append(f"Section skipped: quantization on true float32 weights ({fw.get('model', '')}): {fw['skipped']}.")
    parity = (results.get("model") or {}).get("parity_max_abs_logit_diff_vs_transformers")
    if parity and parity.get("value") is not None and parity["value"] > 1e-2:
        out.append(f"Parity: the largest logit difference against transformers is {parity['value']:.2g}, above 0.01: "
                   "the model may not be loaded correctly.")
    return out


def reader_summary(results: dict) -> str:
    """The top of report.html: what was measured, the best improvement, a red box of warnings
    (only when there are any), and one line per variant with its verdict."""
    rows = results["rows"]
    parts = ["<section class='summary'>",
             f"<p><b>What was measured.</b> {html.escape(what_was_measured(results))}</p>",
             f"<p><b>{html.escape(best_improvement(rows))}</b></p>"]
    warn = warnings(results)
    if warn:
        parts.append("<div class='warnings' role='alert'><h2>Warnings</h2><ul>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warn) + "</ul></div>")
    lines = []
    for r in rows[1:]:
        if not r.get("performance_per_cost"):
            continue
        cls = "credited" if r["performance_per_cost"]["credited"] else "notcredited"
        mark = "credited" if r["performance_per_cost"]["credited"] else "not credited"
        lines.append(f"<li><b>{html.escape(r['name'])}</b> <span class='{cls}'>[{mark}]</span>: "
                     f"{html.escape(variant_verdict(r))}</li>")
    if lines:
        rule = next(r["performance_per_cost"] for r in rows[1:] if r.get("performance_per_cost"))["quality_rule"]["max_delta_bits_per_byte"]
        parts.append(f"<p>Each variant against the baseline (a gain is credited only at equal quality: bits per byte "
                     f"up by at most +{rule:g}, and only when the speed interval excludes 1):</p>"
                     f"<ul class='verdicts'>{''.join(lines)}</ul>")
    parts.append("</section>")
    return "".join(parts)


def measured_credit(results: dict) -> str:
    """The data credit of a plot of this run's own measurements: who measured what, where."""
    env, task = results.get("environment", {}), results.get("task", {})
    where = ", ".join(x for x in (env.get("cpu_model"), f"{env['torch_threads']} threads" if env.get("torch_threads") else "")
                      if x)
    price = task.get("usd_per_hour_assumed", {}).get("value")
    return ("Data: measured by moorelab in this run" + (f" on {where}" if where else "")
            + (f"; text: {task['text']}" if task.get("text") else "")
            + (f"; cost at an assumed ${price:g}/hour" if price is not None else "") + ".")


def _trends_credit() -> str:
    from moorelab.law.reference import REFERENCE_TRENDS

    parts = [f"{TREND_WORDS.get(k, k)} ×{t['factor_per_year']:g}/year ({t['source'].split(';')[0]})"
             for k, t in REFERENCE_TRENDS.items()]
    return ("Trends: Epoch AI, CC-BY 4.0: " + "; ".join(parts)
            + ". Variants: tokens per $ measured by moorelab in this run.")


#: the data credit of the months-of-trend plot (sources and licence of the reference trends)
TRENDS_CREDIT = _trends_credit()


def months_note(rows: list[dict]) -> str:
    """HTML under the trend plots: how to read months of a trend, each variant's months (credited
    or, marked, what the speed alone would be worth), and the command reproducing each figure."""
    from moorelab.report.plots import months_points

    items = []
    for p in months_points(rows):
        ms = "; ".join(f"{m['value']:+.1f} months of {TREND_WORDS.get(k, k)}" for k, m in p["months"].items())
        if p["credited"]:
            items.append(f"<li><b>{html.escape(p['name'])}</b>: ×{p['gain']:.2f} tokens per $, credited: "
                         f"{html.escape(ms)}</li>")
        else:
            items.append(f"<li><b>{html.escape(p['name'])}</b>: ×{p['gain']:.2f} tokens per $, "
                         f"<span class='notcredited'>not credited</span> ({html.escape(p['why'])}); its speed alone "
                         f"would sit at {html.escape(ms)}</li>")
    cmds = [m["command"] for r in rows[1:] for m in ((r.get("performance_per_cost") or {}).get("months_of_trend") or {}).values()]
    return ("<p>How to read it: a trend that multiplies tokens per $ by F each year reaches a factor G after "
            "12·log(G)/log(F) months; a variant with G times the baseline's tokens per $ is worth that many months "
            "of the field's progress. Only gains at equal quality are credited.</p>"
            + (f"<ul class='notes'>{''.join(items)}</ul>" if items else "")
            + (("<p class='notes'>Reproduce each credited figure: "
                + "; ".join(f"<code>{html.escape(c)}</code>" for c in cmds) + "</p>") if cmds else ""))


def credits_html(results: dict) -> str:
    """HTML: where the report's data come from and under which licence (the trend facts, the
    reference trends, the text, the model), and that the page is self-contained."""
    model, task = results.get("model", {}), results.get("task", {})
    items = [results.get("credits") or "",
             TRENDS_CREDIT,
             f"Model: {model.get('name', '')} from {model.get('source', '')}." if model.get("source") else "",
             f"Text: {task['text']}." if task.get("text") else "",
             "This page is self-contained: the plots are inline images and it fetches nothing from the network."]
    return "<ul class='notes'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items if i) + "</ul>"
