"""``moorelab generate MODEL "prompt"``: stream a model's continuation (or chat answer) to the terminal.

Text in, streamed text out (:func:`moorelab.model.generate.generate_text`): greedy by default,
sampled with ``--temperature`` (and ``--top-p``, ``--top-k``, ``--seed``: the same seed gives the
same text), ``--chat`` through the model's own chat template, stopping at any end-of-sequence id
the model declares. The generated text goes to stdout as it comes; loading messages and the
closing line (tokens, why it stopped, prefill and decode tokens/s, the decode path and the CPU
share of the run) go to stderr, so ``> file`` keeps only the text. MODEL is anything
:func:`moorelab.model.zoo.load_pretrained` loads, including every folder ``moorelab improve``
saves. It lives on the report floor because it reads the CPU share from :mod:`moorelab.measure.speed`.
"""

from __future__ import annotations

from typing import Optional

import typer


def generate_command(
    model: str = typer.Argument(..., help="Model name (e.g. smollm2-135m) or path (HF folder, .gguf, or a `moorelab improve` output)."),
    prompt: str = typer.Argument(..., help="The text to continue (with --chat: the user's message)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="At most this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples from softmax(logits / T)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling: keep the smallest set of tokens reaching this probability (needs --temperature > 0)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep only the k most likely tokens (needs --temperature > 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling generator (same seed, same text)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt as a user message in the model's own chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="With --chat: a system message before the user's."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's choice)."),
) -> None:
    """Generate text from a model, streamed token by token; prints prefill and decode tokens/s at the end."""
    from rich.console import Console

    from moorelab.errors import MoorelabError

    if threads is not None and threads < 1:
        raise MoorelabError(f"--threads {threads}: must be >= 1")
    if not prompt:
        raise MoorelabError("PROMPT: empty; give the text to continue")
    from moorelab.model.zoo import model_source

    model_source(model)  # a bad name or path fails before torch is imported
    from moorelab.model.generate import check_options, generate_text

    check_options(max_new_tokens, temperature, top_p, top_k)  # before the model is loaded
    import torch

    from moorelab.measure.speed import CpuShareClock, cpu_share_method
    from moorelab.model.zoo import load_pretrained

    if threads:
        torch.set_num_threads(threads)
    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)
    loaded = load_pretrained(model, progress=lambda s: err.print(s, style="dim", markup=False))
    history = list(getattr(loaded.model, "applied_techniques", None) or [])
    err.print(f"{loaded.name}" + (f" (saved with {' + '.join(history)})" if history else "")
              + f", loaded in {loaded.load_seconds:.1f} s; stops at ids {loaded.eos_token_ids}", style="dim", markup=False)

    def show(piece: str) -> None:
        out.print(piece, end="", markup=False)
        out.file.flush()

    from moorelab.model.fused_decode import prepare_decode

    prepare_decode(loaded.model)  # the decode weights packed in reading order, before the clock starts
    clock = CpuShareClock()
    clock.start()
    res = generate_text(loaded, prompt, chat=chat, system=system, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, on_text=show)
    share = clock.stop()
    out.print()
    decode = res.decode_tokens_per_s
    mode = "greedy" if temperature == 0 else (f"sampled T={temperature:g}" + (f" top-p={top_p:g}" if top_p else "")
                                               + (f" top-k={top_k}" if top_k else "") + f" seed={seed}")
    err.print(
        f"{len(res.prompt_ids)} prompt + {len(res.new_ids)} new tokens ({mode}; stopped: "
        + ("end-of-sequence id " + str(res.new_ids[-1]) if res.stop == "eos" else f"--max-new-tokens {max_new_tokens}")
        + f"); prefill {res.prefill_tokens_per_s:.1f} tokens/s ({len(res.prompt_ids)} tokens in {res.prefill_seconds * 1e3:.0f} ms), "
        + (f"decode {decode:.1f} tokens/s ({len(res.new_ids) - 1} tokens, {res.decode_path} path)" if decode
           else "decode: no step after the first token")
        + f"; {torch.get_num_threads()} threads, CPU share {share:.2f} ({cpu_share_method()}; under 0.9: other processes took the cores)",
        markup=False)
