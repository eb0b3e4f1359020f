"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and top-p (nucleus) sampling.

:func:`generate` works on token ids (batches); :func:`generate_text` is text in, streamed text
out for one prompt of a loaded model (plain or through the model's own chat template), with
prefill and decode timing (``moorelab generate``).

Prefill runs the prompt once and stores keys/values; each decode step feeds one token per row.
Left-padded batches work: padding is masked and each row's positions start at 0 at its first
real token, so a row decodes the same tokens in a batch as alone (Holtzman et al. 2020 for top-p).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from moorelab.model import decode
from moorelab.model.fused_decode import steady
from moorelab.model.transformer import KVCache, Transformer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from ``logits [B, vocab]`` -> ``LongTensor[B]``.

    ``temperature <= 0`` is greedy (argmax). Otherwise logits are divided by ``temperature``,
    restricted to the ``top_k`` largest and then to the smallest set whose probability reaches
    ``top_p`` (always keeping the most likely token), and sampled.
    """
    if temperature <= 0:
        return decode.greedy(logits)  # logits.argmax(-1), through the compiled kernel for float32
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    timings: list[tuple[float, float]] | None = None,
    kv_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Continue ``input_ids [B, T]`` (left-padded if ``attention_mask`` has zeros) by up to ``max_new_tokens``.

    Args:
        attention_mask: ``[B, T]``, 1 = real token, 0 = left padding.
        temperature, top_k, top_p: see :func:`sample_next`; temperature 0 is greedy.
        eos_token_id: one id or several (e.g. ``model.config.eos_token_ids``: a config may list
            ``[eos, end_of_turn]``); a row stops after emitting any of them, as transformers'
            ``generate`` does, and is then filled with the first. None: never stop early.
        generator: ``torch.Generator`` for reproducible sampling.
        use_cache: False recomputes the whole sequence each step (reference for tests).
        on_token: called with the new tokens ``LongTensor[B]`` after each step. It must not
            change the model: the steps run in a :func:`~moorelab.model.fused_decode.steady`
            block, which does not re-check hooks or weights' storage per step.
        timings: if given, one ``(start, end)`` pair of ``time.perf_counter()`` seconds is
            appended per step: the model call and the choice of the token, not ``on_token``. The
            first step is the prefill (the whole prompt), the others decode one token each.
        kv_dtype: storage type of the KV cache (``KVCache(dtype=...)``); ``torch.float16`` halves
            what each step reads at depth (cost in bits per byte: ``benchmarks/bench_decode_depth.py``).

    Returns:
        ``LongTensor[B, T + n]`` with ``n <= max_new_tokens`` new tokens (fewer if every row
        hit one of ``eos_token_id``).

    Raises:
        ContextLengthError: a model with learned positions (GPT-2) and a prompt plus
            ``max_new_tokens`` longer than its ``max_position_embeddings``, before any step runs.
    """
    stops = None
    if eos_token_id is not None:
        stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long)
        if stops.numel() == 0:
            stops = None
    B, T = input_ids.shape
    n_pos = model.config.max_position_embeddings
    if model.config.position == "learned":
        longest = T if attention_mask is None else int(attention_mask.sum(-1).max())
        if longest + max_new_tokens > n_pos:
            from moorelab.errors import ContextLengthError

            raise ContextLengthError(
                f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                f"{n_pos} learned positions (config max_position_embeddings={n_pos})"
            )
    out = input_ids.new_empty(B, T + max_new_tokens)
    out[:, :T] = input_ids
    mask = None
    if attention_mask is not None:
        mask = attention_mask.new_ones(B, T + max_new_tokens)
        mask[:, :T] = attention_mask
    cache = KVCache(max_len=T + max_new_tokens, dtype=kv_dtype) if use_cache else None
    done = torch.zeros(B, dtype=torch.bool)
    # greedy with a cache: the pick is made inside the fused decode call (decode.forward's greedy_into)
    pick = torch.empty(B, dtype=torch.long) if temperature <= 0 and use_cache else None
    n = 0
    step_ids = input_ids
    with steady(model):  # the loop owns the model between its steps
        for n in range(1, max_new_tokens + 1):
            t_step = time.perf_counter()
            L = T + n - 1
            if use_cache:
                # the cache keeps the prompt's mask and extends it by one real column per step, so
                # later steps pass none (and a left-padded batch can take the fused decode)
                logits = decode.forward(model, step_ids, attention_mask=None if mask is None or n > 1 else mask[:, :L],
                                        cache=cache, last_only=True, greedy_into=pick)
            else:
                logits = model(out[:, :L], attention_mask=None if mask is None else mask[:, :L], last_only=True)
            nxt = pick.clone() if pick is not None else sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            if stops is not None:
                nxt = torch.where(done, torch.full_like(nxt, int(stops[0])), nxt)
                done |= torch.isin(nxt, stops.to(nxt.device))
            out[:, L] = nxt
            if timings is not None:
                timings.append((t_step, time.perf_counter()))
            if on_token is not None:
                on_token(nxt)
            if stops is not None and bool(done.all()):
                break
            step_ids = out[:, L : L + 1]
    return out[:, : T + n]


# ------------------------------------------------------------------ text in, text out (`moorelab generate`)

#: where a model folder may keep its chat template, in the order looked at
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")


def find_chat_template(folder: Path, gguf: Path | None = None) -> tuple[str, str] | None:
    """The model's own chat template (a Jinja2 string) and where it was found, or None.

    Looked for in ``folder/chat_template.jinja`` (how transformers 5 saves it, and how
    ``moorelab improve`` copies it), then the ``chat_template`` field of
    ``folder/tokenizer_config.json`` (older transformers), then the GGUF field
    ``tokenizer.chat_template`` of ``gguf`` when given.

    Raises:
        ModelLoadError: ``tokenizer_config.json`` is not a JSON object.
    """
    import json

    from moorelab.errors import ModelLoadError

    folder = Path(folder)
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    path = folder / "tokenizer_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise ModelLoadError(f"{path}: expected a JSON object")
        tmpl = cfg.get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
            tmpl = named.get("default") or next(iter(named.values()), None)
        if isinstance(tmpl, str) and tmpl.strip():
            return tmpl, f"{path} (field chat_template)"
    if gguf is not None and Path(gguf).suffix == ".gguf" and Path(gguf).is_file():
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
        if field is not None:
            return str(field.contents()), f"{gguf} (field tokenizer.chat_template)"
    return None


def _special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/pad/unk token strings from ``tokenizer_config.json`` (templates use ``bos_token``)."""
    import json

    try:
        cfg = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(v, dict):  # {"content": "<s>", ...}
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    return out


def prompt_ids(loaded, prompt: str, chat: bool = False, system: str | None = None) -> tuple[list[int], str]:
    """Token ids of a prompt for :func:`generate_text`, and the exact text they encode.

    Plain (``chat=False``): ``prompt`` encoded with the model's tokenizer and its own special
    tokens (``add_special_tokens=True``: a BOS where the tokenizer adds one, e.g. Gemma; SmolLM2's
    adds none); special-token strings typed in the prompt are read as those tokens.
    Chat: one user message (after an optional ``system`` message) rendered with the model's own
    chat template (:func:`find_chat_template`) by ``transformers``' ``apply_chat_template`` with
    ``add_generation_prompt=True``, then encoded without adding special tokens (the template
    writes them), as transformers does.

    Args:
        loaded: a :class:`moorelab.model.zoo.LoadedModel`.

    Raises:
        MoorelabError: empty prompt; ``chat`` and the model declares no chat template (naming where
            it was looked for).
    """
    from moorelab.errors import MoorelabError

    if not prompt:
        raise MoorelabError("prompt: empty; give the text to continue")
    tok = loaded.tokenizer
    if not chat:
        return list(tok.encode(prompt, add_special_tokens=True).ids), prompt
    found = find_chat_template(loaded.hf_dir, loaded.source)
    if found is None:
        raise MoorelabError(
            f"--chat: model {loaded.name} declares no chat template (looked in {Path(loaded.hf_dir) / 'chat_template.jinja'}, "
            f"tokenizer_config.json{', the GGUF' if Path(loaded.source).suffix == '.gguf' else ''}); run without --chat")
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=found[0], **_special_tokens(loaded.hf_dir))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tok.encode(text, add_special_tokens=False).ids), text


@dataclass
class GenerationResult:
    """What :func:`generate_text` produced, with its timing.

    Attributes:
        prompt_ids: the prompt's token ids (as fed to the model).
        new_ids: generated ids, the end-of-sequence id included when one stopped it.
        text: the generated text (special tokens such as the EOS left out).
        stop: ``"eos"`` (one of the model's end-of-sequence ids came) or ``"max_new_tokens"``.
        prefill_seconds: the prompt's forward pass and the choice of the first new token, s.
        decode_seconds: the later steps (one token each), s; printing is not included.
        decode_path: ``"fused"`` or ``"python"`` (:mod:`moorelab.model.decode`) for the decode steps.
    """

    prompt_ids: list[int]
    new_ids: list[int]
    text: str
    stop: str
    prefill_seconds: float
    decode_seconds: float
    decode_path: str

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens / prefill seconds (tokens/s)."""
        return len(self.prompt_ids) / self.prefill_seconds

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first / decode seconds (tokens/s); None with fewer than 2 new tokens
        (the first new token comes out of the prefill)."""
        n = len(self.new_ids) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else None


def check_options(max_new_tokens: int, temperature: float, top_p: float | None = None, top_k: int | None = None) -> None:
    """Check :func:`generate_text`'s decoding options (before anything is loaded).

    Raises:
        MoorelabError: naming the option (as ``moorelab generate`` spells it) and its range:
            ``max_new_tokens`` an integer ≥ 1, ``temperature`` finite ≥ 0, ``top_p`` in (0, 1],
            ``top_k`` ≥ 1, and ``top_p < 1`` or ``top_k`` only with ``temperature > 0``.
    """
    import math

    from moorelab.errors import MoorelabError

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise MoorelabError(f"--max-new-tokens {max_new_tokens}: must be an integer >= 1")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise MoorelabError(f"--temperature {temperature}: must be a finite number >= 0 (0 = greedy)")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise MoorelabError(f"--top-p {top_p}: must be in (0, 1]")
    if top_k is not None and top_k < 1:
        raise MoorelabError(f"--top-k {top_k}: must be >= 1")
    if ((top_p is not None and top_p < 1) or top_k is not None) and temperature == 0:
        raise MoorelabError("--top-p/--top-k: sampling options; give --temperature > 0 (0 is greedy)")


def generate_text(
    loaded,
    prompt: str,
    *,
    chat: bool = False,
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Continue a prompt (or answer it, with ``chat``) and stream the text as it comes.

    Decodes with a KV cache through :func:`generate` (one sequence, so the fused decode path when
    the model allows it), stopping at any of ``loaded.eos_token_ids`` (all the end-of-sequence ids
    the model declares, e.g. ``<|im_end|>``, ``<end_of_turn>``) or after ``max_new_tokens``.
    Text is detokenized incrementally with ``tokenizers``' ``DecodeStream`` (a character split
    over several byte-level tokens, as Chinese often is, is emitted once complete).

    Args:
        loaded: a :class:`moorelab.model.zoo.LoadedModel` (any saved variant loads into one).
        prompt: the text; see :func:`prompt_ids` for ``chat`` and ``system``.
        max_new_tokens: at most this many new tokens, ≥ 1.
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling, in (0, 1]; top_k: keep the k most likely (≥ 1); both need
            ``temperature > 0``.
        seed: seeds the sampling generator: the same seed gives the same text.
        on_text: called with each new piece of text (for streaming).

    Returns:
        :class:`GenerationResult`.

    Raises:
        MoorelabError: a value out of range (naming the option), an empty prompt, ``chat``
            without a template; ContextLengthError: prompt + ``max_new_tokens`` beyond learned
            positions.
    """
    from tokenizers.decoders import DecodeStream

    from moorelab.errors import MoorelabError

    check_options(max_new_tokens, temperature, top_p, top_k)
    ids, _ = prompt_ids(loaded, prompt, chat=chat, system=system)
    if not ids:
        raise MoorelabError("prompt: encodes to no tokens")
    eos = list(loaded.eos_token_ids or [])
    stream = DecodeStream(skip_special_tokens=True)
    # primed with the prompt's last token, so that a tokenizer that strips a leading space at the
    # start of a text (SentencePiece's "▁") keeps the space before the first new word
    stream.step(loaded.tokenizer, ids[-1:])
    pieces: list[str] = []
    new: list[int] = []

    def emit(nxt: torch.Tensor) -> None:
        tid = int(nxt[0])
        new.append(tid)
        if tid in eos:
            return
        piece = stream.step(loaded.tokenizer, tid)
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    timings: list[tuple[float, float]] = []
    gen = torch.Generator().manual_seed(int(seed)) if temperature > 0 else None
    generate(loaded.model, torch.tensor([ids], dtype=torch.long), max_new_tokens=max_new_tokens,
             temperature=float(temperature), top_k=top_k, top_p=top_p, eos_token_id=eos or None,
             generator=gen, on_token=emit, timings=timings)
    return GenerationResult(
        prompt_ids=ids, new_ids=new, text="".join(pieces),
        stop="eos" if new and new[-1] in eos else "max_new_tokens",
        prefill_seconds=timings[0][1] - timings[0][0],
        decode_seconds=sum(b - a for a, b in timings[1:]),
        decode_path=getattr(loaded.model, "last_decode_path", "python"),
    )
