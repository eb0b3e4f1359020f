"""Tokenizing text the way the reference tools do.

Two faults of a tokenizer rebuilt or used naively, each fixed here:

* **Special-token strings in ordinary text.** A ``tokenizers.Tokenizer`` splits out its added
  special tokens (``<|endoftext|>``, ``<|im_start|>``) even with ``add_special_tokens=False``,
  so a text that merely contains those strings is scored as control tokens. llama.cpp's
  perplexity tool tokenizes with ``parse_special = false``: control tokens are ordinary text
  there. :func:`encode_text` does the same (added tokens that are not special, e.g. user-defined
  words, are still matched, as in llama.cpp).
* **The GGUF's declared pre-tokenizer.** A GGUF names the regex split its merges were learned
  with (``tokenizer.ggml.pre``); llama.cpp (``src/llama-vocab.cpp``) applies that split before
  BPE. transformers' GGUF tokenizer reader knows some names and falls back to the plain GPT-2
  split for the rest (e.g. SmolLM2's ``smollm``, which first isolates every numeral ``\\p{N}``),
  so text such as ``" ٣"`` (a space then an Arabic-Indic digit) was tokenized differently from
  llama.cpp. :func:`apply_gguf_pre_tokenizer` sets the split for the names it knows and states
  an unknown one.
"""

from __future__ import annotations

import warnings

# llama.cpp's GPT-2 split (LLAMA_VOCAB_PRE_TYPE_GPT2); tokenizers' ByteLevel(use_regex=True) uses
# the same expression.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# tokenizer.ggml.pre -> the regexes llama.cpp applies in order (llama-vocab.cpp, llm_tokenizer_bpe).
LLAMA_CPP_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    **{name: (GPT2_SPLIT,) for name in ("gpt-2", "phi-2", "mpt", "olmo", "jais")},
    **{name: (r"\p{N}", GPT2_SPLIT)
       for name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")},
}


def _gguf_splits_known_to_transformers() -> dict:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # other transformers versions: only our own table counts
        return {}
    return dict(GGUF_PRE_TOKENIZER_SPLITS)


def apply_gguf_pre_tokenizer(tokenizer, tokenizer_model: str | None, pre: str | None, source: str = "") -> str:
    """Give a tokenizer rebuilt from a GGUF the pre-tokenizer its ``tokenizer.ggml.pre`` names.

    Args:
        tokenizer: the ``tokenizers.Tokenizer`` rebuilt by transformers from the GGUF (changed
            in place).
        tokenizer_model: ``tokenizer.ggml.model`` (``"gpt2"`` for byte-level BPE; other models,
            e.g. SentencePiece ``"llama"``, have no regex split and are left alone).
        pre: ``tokenizer.ggml.pre``.
        source: the GGUF path, for the message.

    Returns:
        One line saying what was done: the split applied (names in
        :data:`LLAMA_CPP_PRE_SPLITS`, llama.cpp's regexes), left to transformers (names its GGUF
        reader maps itself), or, for an unknown name, that the tokenizer may split text
        differently from llama.cpp (also issued as a ``UserWarning``).
    """
    from tokenizers import Regex, pre_tokenizers

    if tokenizer_model != "gpt2":
        return f"tokenizer.ggml.model={tokenizer_model!r}: no regex pre-tokenizer to check"
    if pre in LLAMA_CPP_PRE_SPLITS:
        splits = LLAMA_CPP_PRE_SPLITS[pre]
        steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits[:-1]]
        # the last split is GPT-2's, which ByteLevel(use_regex=True) applies itself
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tokenizer.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
        return f"tokenizer.ggml.pre={pre!r}: llama.cpp's split {' then '.join(splits)} applied"
    if pre in _gguf_splits_known_to_transformers():
        return f"tokenizer.ggml.pre={pre!r}: split set by transformers' GGUF tokenizer reader"
    note = (f"{source}: tokenizer.ggml.pre={pre!r} is not a pre-tokenizer moorelab knows; the rebuilt "
            "tokenizer uses the GPT-2 split and may tokenize some text differently from llama.cpp")
    warnings.warn(note, stacklevel=2)
    return note


_PLAIN: dict[int, tuple[object, object]] = {}


def plain_text_tokenizer(tokenizer):
    """A copy of ``tokenizer`` that reads special-token strings as ordinary text.

    The copy is the same tokenizer (vocabulary, merges, normalizer, pre-tokenizer, added tokens
    and their ids) with ``tokenizers``' ``encode_special_tokens`` switched on: added tokens marked
    ``special`` are no longer split out of the input, other added tokens still are. Built once per
    tokenizer object (a ``to_str``/``from_str`` round trip, ~0.5 s for a 49k vocabulary); the
    caller's tokenizer is not changed.
    """
    from tokenizers import Tokenizer

    hit = _PLAIN.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    plain = Tokenizer.from_str(tokenizer.to_str())
    plain.encode_special_tokens = True
    plain.no_padding()
    plain.no_truncation()
    if len(_PLAIN) > 8:
        _PLAIN.clear()
    _PLAIN[id(tokenizer)] = (tokenizer, plain)
    return plain


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as ordinary text: no special tokens added, none parsed.

    A ``<|endoftext|>`` inside the text becomes the ids of the characters ``<``, ``|``,
    ``endoftext``, ... as llama.cpp's perplexity tool tokenizes it (``parse_special = false``),
    never the control id.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (``LoadedModel.tokenizer``).
        text: the text.

    Returns:
        List of int token ids.
    """
    return list(plain_text_tokenizer(tokenizer).encode(text, add_special_tokens=False).ids)
