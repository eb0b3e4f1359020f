"""Issue 11.3: tokenizer fidelity.

* Special-token strings inside a text are ordinary text (llama.cpp's perplexity tool,
  ``parse_special = false``): the ids equal the plain byte-level BPE of the string.
* A GGUF's declared pre-tokenizer (``tokenizer.ggml.pre``) is honoured: SmolLM2's ``smollm``
  isolates every numeral before the GPT-2 split, as llama.cpp does.
"""

from __future__ import annotations

import json

import pytest
import regex

from moorelab.model.tokenize import GPT2_SPLIT, LLAMA_CPP_PRE_SPLITS, apply_gguf_pre_tokenizer, encode_text


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_byte_bpe():
    """256 byte tokens (id = byte value), one merge h+e -> id 256, two special tokens, one user token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["he"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<|im_start|>", special=True)])
    tok.add_tokens([AddedToken("<tool>", special=False)])
    return tok


def test_special_strings_are_plain_text_by_hand():
    tok = tiny_byte_bpe()
    eot, im_start, tool = (tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<tool>"))
    assert (eot, im_start, tool) == (257, 258, 259)
    text = "he said <|endoftext|><|im_start|> ok"
    # by hand: "he" is one pre-token and merges to 256; every other byte is its own token
    want = [256] + list(text[2:].encode())
    got = encode_text(tok, text)
    assert got == want
    assert not {eot, im_start} & set(got)
    # the fault this replaces: tokenizers splits out special tokens even without add_special_tokens
    assert eot in tok.encode(text, add_special_tokens=False).ids
    # a user-defined (non-special) added token is still matched, as in llama.cpp
    assert encode_text(tok, "a<tool>b") == [ord("a"), tool, ord("b")]


def llama_cpp_split(text: str, regexes) -> list[str]:
    """llama.cpp's unicode_regex_split: each regex in turn splits every piece into matches and the text between."""
    pieces = [text]
    for expr in regexes:
        out = []
        for p in pieces:
            pos = 0
            for m in regex.finditer(expr, p):
                if m.start() > pos:
                    out.append(p[pos:m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(p):
                out.append(p[pos:])
        pieces = out
    return pieces


def reference_ids(tokenizer, text: str, regexes) -> list[int]:
    """llama.cpp's pre-split, then byte-level BPE of each piece alone (no regex, no added tokens)."""
    from tokenizers import Tokenizer, pre_tokenizers

    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = []
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return [i for piece in llama_cpp_split(text, regexes) for i in bpe.encode(piece, add_special_tokens=False).ids]


TEXTS = [
    "Hello <|endoftext|> world<|im_start|>user\nhi<|im_end|>",
    "x ٣ y ½ z Ⅻ and 2024 then ²",  # a space then non-ASCII numerals (Arabic-Indic, vulgar fraction, Roman)
    "plain text, nothing special.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_equal_llama_cpp_tokenization(smollm2, text):
    tok = smollm2.tokenizer
    got = encode_text(tok, text)
    assert got == reference_ids(tok, text, LLAMA_CPP_PRE_SPLITS["smollm"])
    special = {tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert not special & set(got)
    assert tok.decode(got) == text


def test_smollm2_gguf_pre_tokenizer_is_honoured(smollm2):
    assert "tokenizer.ggml.pre='smollm'" in smollm2.tokenizer_note and "applied" in smollm2.tokenizer_note
    text = "x ٣"
    assert encode_text(smollm2.tokenizer, text) == reference_ids(smollm2.tokenizer, text, LLAMA_CPP_PRE_SPLITS["smollm"])
    # what transformers' GGUF reader built before (the GPT-2 split alone) joins the space and the numeral
    gpt2_only = reference_ids(smollm2.tokenizer, text, (GPT2_SPLIT,))
    assert gpt2_only != encode_text(smollm2.tokenizer, text)


def test_unknown_pre_tokenizer_is_stated():
    tok = tiny_byte_bpe()
    before = tok.to_str()
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre='mystery' is not a pre-tokenizer moorelab knows"):
        note = apply_gguf_pre_tokenizer(tok, "gpt2", "mystery", "m.gguf")
    assert note.startswith("m.gguf: tokenizer.ggml.pre='mystery'") and tok.to_str() == before
    assert "no regex pre-tokenizer" in apply_gguf_pre_tokenizer(tok, "llama", "default")
    assert "applied" in apply_gguf_pre_tokenizer(tok, "gpt2", "smollm")
    assert encode_text(tok, "a ٣") == reference_ids(tok, "a ٣", LLAMA_CPP_PRE_SPLITS["smollm"])


def test_train_tokenize_text_reads_special_strings_as_text():
    from moorelab.train.data import tokenize_text

    tok = tiny_byte_bpe()
    assert tokenize_text(tok, "a<|endoftext|>") == list(b"a<|endoftext|>")
