"""`moorelab eval MODEL --task NAME|FILE [--with SPEC ...] [--limit N] [--out DIR]`: zero-shot
multiple-choice accuracy, lm-evaluation-harness's protocol (:mod:`moorelab.measure.choice`), on
a named task built from real data or a task file (:mod:`moorelab.measure.tasks`).

Order of work: the task file(s) and technique specs are read and checked first (bad input fails
in seconds, exit 2, nothing written); then the model is loaded, the techniques applied in order
(:func:`moorelab.improve.api.apply`, as `moorelab improve`), every item scored with a progress
bar, and a table printed: ``acc``, ``acc_norm`` and ``acc_bytes`` with lm-eval's standard error
and a 95% Wilson interval, beside the chance level (mean of 1/K), the majority class of the
training labels (sentiment tasks) and reference figures measured elsewhere (the fine-tuned
MiniLM of ``benchmarks/bench_finetune.py``). ``results.json`` holds every figure and every
item's log-likelihoods. :mod:`moorelab.cli` registers :func:`eval_command` and
:func:`eval_tasks_command`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

CALIBRATION_PLAY = "histories/henry-v.md"
CALIBRATION_TOKENS = 4096


def prefix_token(loaded) -> int | None:
    """lm-eval's ``prefix_token_id`` for a loaded model: BOS, else EOS (used for empty contexts)."""
    return loaded.bos_token_id if loaded.bos_token_id is not None else loaded.eos_token_id


def task_items(task, limit: int | None):
    """The first ``limit`` items of a task (all when None)."""
    from moorelab.errors import MoorelabError

    if limit is not None and limit < 1:
        raise MoorelabError(f"--limit {limit}: must be at least 1 item")
    return task.items if limit is None else task.items[:limit]


def score_model(model, loaded, items, progress=None, label: str = "scoring"):
    """Score ``items`` on ``model`` with ``loaded``'s tokenizer; returns (Accuracy, seconds).

    ``progress`` is a rich Progress (a bar is added) or None. Context length: the model's
    ``max_position_embeddings`` (lm-eval's ``max_length`` for the same folder)."""
    from moorelab.measure.choice import score_items
    from moorelab.model.tokenize import encode_text

    bar = progress.add_task(label, total=len(items)) if progress is not None else None
    t0 = time.perf_counter()
    acc = score_items(model, lambda t: encode_text(loaded.tokenizer, t), items,
                      max_length=loaded.config.max_position_embeddings, prefix_token_id=prefix_token(loaded),
                      progress=(lambda n: progress.advance(bar, n)) if bar is not None else None)
    return acc, time.perf_counter() - t0


def baselines(task, items) -> dict:
    """Chance (mean of 1/K over the items), majority class of the training labels on these items
    (tasks that record it), and reference figures the task records."""
    out = {"chance": {"value": sum(1 / len(i.choices) for i in items) / len(items), "unit": "fraction of items",
                      "note": "mean over the items of 1 / number of choices"}}
    maj = task.info.get("majority_index")
    if maj is not None:
        out["majority_class"] = {"value": sum(1 for i in items if i.gold == maj) / len(items), "unit": "fraction of items",
                                 "note": f"always '{task.info.get('majority_class')}', the training split's majority label"}
    for name, value in (task.info.get("reference") or {}).items():
        out[name] = {"value": value, "unit": "fraction of items", "note": "measured elsewhere, on the whole test split"}
    return out


def _fmt(p) -> str:
    return f"{p.value:.3f} ± {p.stderr:.3f}  [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}]"


def eval_command(
    model: str = typer.Argument(..., help="Model name (e.g. smollm2-135m) or path (HF folder, .gguf, saved improve folder)."),
    task: List[str] = typer.Option(..., "--task", help="Task name (amazon-sentiment, chinese-sentiment, hamlet-cloze) "
                                   "or file (lm-eval YAML, or JSONL with query/choices/gold); repeatable."),
    with_: List[str] = typer.Option([], "--with", help="Technique spec NAME[:FIELD=VALUE,...] applied before scoring, in order "
                                    "(as `moorelab improve`)."),
    limit: Optional[int] = typer.Option(None, help="Score only the first N items of each task."),
    out: Path = typer.Option(Path("moorelab-eval-out"), help="Output folder for results.json."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's)."),
) -> None:
    """Zero-shot multiple-choice accuracy (lm-eval's acc / acc_norm) on real tasks, with 95% intervals."""
    from moorelab.errors import MoorelabError
    from moorelab.measure.tasks import load_task

    console = Console()
    t0 = time.perf_counter()
    # inputs first: tasks (items checked line by line), --limit, specs; nothing loaded yet
    tasks = [load_task(t) for t in task]
    chosen = [task_items(t, limit) for t in tasks]
    from moorelab.improve.api import ApplyContext, apply, needs_calibration, parse_spec, precheck_chain

    configs = [parse_spec(s) for s in with_]
    precheck_chain(with_, configs)
    if out.exists() and not out.is_dir():
        raise MoorelabError(f"--out {out}: exists and is not a folder")
    import torch

    import moorelab.improve.save  # noqa: F401  (loads saved `moorelab improve` folders)
    from moorelab.measure.text import calibration_windows
    from moorelab.model.zoo import load_pretrained
    from moorelab.report.console import make_progress
    from moorelab.report.results import environment, staged_output, write_json

    if threads:
        torch.set_num_threads(threads)
    with staged_output(out) as stage, make_progress(console) as progress:
        ltask = progress.add_task(f"loading {model}", total=None)
        loaded = load_pretrained(model, progress=lambda m: progress.update(ltask, description=m))
        progress.update(ltask, total=1, completed=1, description=f"loaded {loaded.name}")
        net = loaded.model
        precheck_chain(with_, configs, net)
        ctx = ApplyContext()
        if any(needs_calibration(c) for c in configs):
            ctx.calibration = calibration_windows(loaded.tokenizer, CALIBRATION_PLAY, CALIBRATION_TOKENS)
        if any(type(c).__name__ == "DistillConfig" for c in configs):
            ctx.teacher = load_pretrained(model).model
        for spec, cfg in zip(with_, configs):
            atask = progress.add_task(f"applying {spec}", total=None)
            apply(net, cfg, ctx)
            progress.update(atask, total=1, completed=1)
        sections = []
        for t, items in zip(tasks, chosen):
            acc, seconds = score_model(net, loaded, items, progress, f"{t.name}: {len(items)} items")
            sections.append({
                "task": t.name, "source": t.source, "description": t.description,
                "items_scored": len(items), "items_in_task": len(t.items),
                "subset": "all items" if len(items) == len(t.items) else f"the first {len(items)} items in file order",
                **acc.to_dict(),
                "baselines": baselines(t, items),
                "seconds": {"value": seconds, "unit": "s"},
                "items_per_second": {"value": len(items) / seconds if seconds > 0 else None, "unit": "items/s"},
                "items": [{"where": i.where, "gold": s.gold, "loglikelihoods": s.loglikelihoods, "is_greedy": s.is_greedy,
                           "pred": s.pred, "pred_norm": s.pred_norm, "truncated_tokens": s.truncated_tokens}
                          for i, s in zip(items, acc.scores)],
            })
        results = {
            "schema": "moorelab.eval/1",
            "model": {"name": loaded.name, "source": str(loaded.source), "techniques": list(with_),
                      "context_tokens": loaded.config.max_position_embeddings},
            "protocol": "lm-evaluation-harness multiple choice, zero-shot (moorelab/measure/choice.py): log-likelihood "
                        "of each choice's continuation; the context run once with a KV cache; prompts longer than the "
                        "model's context truncated from the left (counted)",
            "tasks": sections,
            "environment": environment(),
            "elapsed_seconds": {"value": time.perf_counter() - t0, "unit": "s"},
        }
        write_json(stage / "results.json", results)

    table = Table(title=f"zero-shot accuracy — {loaded.name}" + (f" + {' + '.join(with_)}" if with_ else ""))
    for col in ("task", "items", "acc ± se [95% Wilson]", "acc_norm ± se [95% Wilson]", "items/s"):
        table.add_column(col)
    for s in sections:
        from moorelab.measure.choice import Proportion

        def p(d):
            return Proportion(d["value"], d["stderr"], tuple(d["ci95"]), d["n"])

        table.add_row(s["task"], f"{s['items_scored']}/{s['items_in_task']}", _fmt(p(s["acc"])), _fmt(p(s["acc_norm"])),
                      f"{s['items_per_second']['value']:.2f}")
    console.print(table)
    for s in sections:
        console.print(f"{s['task']} baselines: " + "; ".join(f"{k} {v['value']:.3f}" for k, v in s["baselines"].items()))
        console.print(f"{s['task']}: {s['description']} Scored: {s['subset']}."
                      + (f" {s['prompts_truncated_from_left']} prompt(s) truncated from the left." if s["prompts_truncated_from_left"] else ""))
    console.print("acc: the choice with the highest summed log-probability; acc_norm: per character of the choice "
                  "(lm-eval); se: sample sd / sqrt(n) (lm-eval); interval: Wilson score, 95%.")
    console.print(f"wrote {Path(out) / 'results.json'}; elapsed {time.perf_counter() - t0:.1f} s")


def eval_tasks_command(
    name: List[str] = typer.Argument(None, help="Tasks to build (default: all)."),
) -> None:
    """Build the named tasks (JSONL + lm-eval YAML) into the cache from the installed data."""
    from moorelab.measure.tasks import NAMED_TASKS, task_dir, write_named_tasks

    res = write_named_tasks(list(name) if name else None)
    for n, r in res.items():
        typer.echo(f"{n}: {r}")
    typer.echo(f"lm_eval: moorelab lm-eval --model_args pretrained=smollm2-135m --include_path {task_dir('x').parent} "
               f"--tasks {','.join(NAMED_TASKS[n]['lm_eval_name'] for n in res if isinstance(res[n], Path))}")
    if not any(isinstance(r, Path) for r in res.values()):
        raise typer.Exit(1)


#: typer settings of `moorelab lm-eval`: every argument goes to lm-eval's own command line
LM_EVAL_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


#: `moorelab lm-eval --register` / `--unregister`: the start-up hook (moorelab/report/lm_eval_plugin.py)
LM_EVAL_REGISTRATION = ("--register", "--unregister")


def lm_eval_command(ctx: typer.Context) -> None:
    """lm-evaluation-harness on moorelab's model: lm-eval's own options (--tasks, --limit, --model_args
    pretrained=NAME,improve=SPEC, ...); see moorelab/report/lm_eval_adapter.py. `--register` writes
    moorelab-lm-eval.pth into site-packages so that lm-eval's own `lm_eval --model moorelab` finds the
    model in every later process (make setup runs it); `--unregister` removes it."""
    from moorelab.errors import MoorelabError

    args = list(ctx.args)
    if args and args[0] in LM_EVAL_REGISTRATION:
        from moorelab.report import lm_eval_plugin

        if len(args) > 1:
            raise MoorelabError(f"moorelab lm-eval {args[0]}: takes no other argument (got {' '.join(args[1:])})")
        if args[0] == "--register":
            path, changed = lm_eval_plugin.register()
            typer.echo(f"{'registered' if changed else 'already registered'}: {path} "
                       f"(lm_eval --model {lm_eval_plugin.MODEL_NAME} now works in new processes)")
        else:
            path, changed = lm_eval_plugin.unregister()
            typer.echo(f"{'removed' if changed else 'not registered'}: {path}")
        return
    try:
        from moorelab.report.lm_eval_adapter import run_lm_eval_cli
    except ImportError as exc:
        raise MoorelabError(f"lm-eval is not installed ({exc}): pip install 'lm-eval>=0.4.13'") from None
    run_lm_eval_cli(args)


#: `moorelab run`: the task and how many of its first items each row is scored on (full, --quick)
RUN_TASK = "hamlet-cloze"
RUN_ITEMS = {"full": 16, "quick": 16}


def row_accuracy(model, loaded, quick: bool, progress=None, label: str = "") -> dict:
    """Zero-shot accuracy of one `moorelab run` row on the first :data:`RUN_ITEMS` items of
    :data:`RUN_TASK` (results.json ``rows[i]["accuracy"]``): acc, acc_norm with stderr and 95%
    Wilson intervals, the subset named, seconds taken. A task that cannot be built (its data
    missing) gives ``{"skipped": reason}``."""
    from moorelab.errors import MoorelabError
    from moorelab.measure.tasks import load_task

    n = RUN_ITEMS["quick" if quick else "full"]
    try:
        task = load_task(RUN_TASK)
    except MoorelabError as exc:
        return {"skipped": str(exc)}
    items = task.items[:n]
    acc, seconds = score_model(model, loaded, items, progress, f"accuracy {label}: {RUN_TASK}, {len(items)} items")
    d = acc.to_dict()
    d.pop("definitions")
    return {"task": RUN_TASK, "subset": f"the first {len(items)} of {len(task.items)} items of {RUN_TASK}",
            "chance": 0.25, "acc": d["acc"], "acc_norm": d["acc_norm"], "seconds": {"value": seconds, "unit": "s"}}


def print_row_accuracy(console, rows: list[dict]) -> None:
    """One line per row: acc and acc_norm with their 95% intervals, then the subset scored."""
    scored = [r for r in rows if r.get("accuracy", {}).get("acc")]
    for r in rows:
        a = r.get("accuracy")
        if not a:
            continue
        if "skipped" in a:
            console.print(f"accuracy {r['name']}: skipped ({a['skipped']})")
            continue
        console.print(f"accuracy {r['name']}: acc {a['acc']['value']:.3f} [{a['acc']['ci95'][0]:.3f}, {a['acc']['ci95'][1]:.3f}], "
                      f"acc_norm {a['acc_norm']['value']:.3f} [{a['acc_norm']['ci95'][0]:.3f}, {a['acc_norm']['ci95'][1]:.3f}]")
    if scored:
        a = scored[0]["accuracy"]
        total = sum(r["accuracy"]["seconds"]["value"] for r in scored)
        console.print(f"accuracy: zero-shot, {a['subset']} (chance 0.25; lm-eval acc / acc_norm, 95% Wilson intervals; "
                      f"`moorelab eval MODEL --task {RUN_TASK}` scores all), {total:.0f} s for {len(scored)} rows")
