"""`moorelab generate`: text streamed from a tiny LLaMA model with its own byte-level BPE tokenizer and
chat template, from the float folder and from the int8 and int4 variants `moorelab.improve.save` writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def moorelab(*args):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """HF llama folder (d_model 64, so int4 groups of 32 fit), tokenizer.json with special tokens
    0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, a chat template; weights scaled up so that
    sampling is not uniform."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from moorelab.model.config import TransformerConfig
    from moorelab.model.load_hf import save_hf_llama_folder
    from moorelab.model.transformer import Transformer

    out = tmp_path_factory.mktemp("tiny") / "tiny"
    out.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog. " * 50, "床前明月光，疑是地上霜。" * 20,
                             "To be, or not to be, that is the question."], trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(TEMPLATE)
    (out / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            head_dim=16, d_ff=128, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)
    save_hf_llama_folder(model, out)
    return out


@pytest.fixture(scope="module")
def variants(tiny_dir, tmp_path_factory):
    """The int8 and int4 (g32) variants saved by moorelab.improve.save: name -> folder."""
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.improve.save import save_improved
    from moorelab.model.zoo import load_pretrained

    out = {}
    for spec in ("int8", "int4:group_size=32"):
        net = load_pretrained(str(tiny_dir)).model
        apply(net, parse_spec(spec), ApplyContext())
        folder = tmp_path_factory.mktemp("saved") / spec.split(":")[0]
        saved = save_improved(net, folder, tokenizer_file=tiny_dir / "tokenizer.json", techniques=[spec])
        assert saved["format"] == "moorelab-improved/1"
        out[spec.split(":")[0]] = folder
    return out


def _load(path):
    import moorelab.improve.save  # noqa: F401  (registers the saved format)
    from moorelab.model.zoo import load_pretrained

    return load_pretrained(str(path))


def test_same_seed_same_text_and_stream_equals_decode(tiny_dir):
    from moorelab.model.generate import generate, generate_text

    loaded = _load(tiny_dir)
    loaded.eos_token_ids = []  # run the full length
    pieces = []
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=0.9)
    a = generate_text(loaded, "The quick", seed=5, on_text=pieces.append, **kw)
    b = generate_text(loaded, "The quick", seed=5, **kw)
    c = generate_text(loaded, "The quick", seed=6, **kw)
    assert a.new_ids == b.new_ids and a.text == b.text and a.new_ids != c.new_ids
    assert "".join(pieces) == a.text == loaded.tokenizer.decode(a.new_ids)
    # the ids are generate()'s with a generator seeded the same way
    ids = torch.tensor([loaded.tokenizer.encode("The quick").ids])
    ref = generate(loaded.model, ids, max_new_tokens=24, temperature=1.0, top_p=0.9,
                   generator=torch.Generator().manual_seed(5))
    assert ref[0, ids.shape[1]:].tolist() == a.new_ids
    # greedy: no generator involved, any seed gives the same text
    g1 = generate_text(loaded, "The quick", max_new_tokens=10, seed=1)
    assert g1.new_ids == generate_text(loaded, "The quick", max_new_tokens=10, seed=2).new_ids
    assert g1.new_ids == generate(loaded.model, ids, max_new_tokens=10)[0, ids.shape[1]:].tolist()
    # timing: prefill covers the prompt, decode the tokens after the first
    assert a.prefill_seconds > 0 and a.decode_seconds > 0
    assert a.decode_tokens_per_s == pytest.approx(23 / a.decode_seconds)
    assert a.prefill_tokens_per_s == pytest.approx(len(a.prompt_ids) / a.prefill_seconds)
    assert a.decode_path == "fused"


def test_stops_at_every_declared_eos_id(tiny_dir):
    from moorelab.model.generate import generate_text

    loaded = _load(tiny_dir)
    loaded.eos_token_ids = []
    free = generate_text(loaded, "To be", max_new_tokens=12).new_ids
    k = next(i for i in range(2, 12) if free[i] not in free[:i])  # a token first emitted at step k
    never = next(t for t in range(3, 330) if t not in free)
    loaded.eos_token_ids = [never, free[k]]  # the second of two declared ids stops it
    res = generate_text(loaded, "To be", max_new_tokens=12)
    assert res.stop == "eos" and res.new_ids == free[: k + 1]
    assert res.text == loaded.tokenizer.decode(free[:k])  # the EOS itself is not printed


def test_chat_uses_the_models_template(tiny_dir):
    from moorelab.model.generate import prompt_ids

    loaded = _load(tiny_dir)
    ids, text = prompt_ids(loaded, "hi", chat=True, system="be brief")
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(1) == 3 and ids.count(2) == 2 and ids[0] == 1  # special tokens, not their characters
    assert prompt_ids(loaded, "hi")[0] == loaded.tokenizer.encode("hi").ids


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_generates_from_saved_quantized_variants(variants, name):
    from moorelab.model.generate import find_chat_template, generate, generate_text

    folder = variants[name]
    assert find_chat_template(folder)[1].endswith("chat_template.jinja")  # carried over by save_improved
    loaded = _load(folder)
    assert any(getattr(m, "scheme", None) for m in loaded.model.modules())
    assert loaded.eos_token_ids == [2]
    res = generate_text(loaded, "The quick", max_new_tokens=10)
    ids = torch.tensor([res.prompt_ids])
    ref = generate(loaded.model, ids, max_new_tokens=10, eos_token_id=[2])
    assert res.new_ids == ref[0, ids.shape[1]:].tolist() and len(res.new_ids) >= 1
    chat = generate_text(loaded, "hi", chat=True, max_new_tokens=6, temperature=0.8, seed=3)
    assert chat.new_ids == generate_text(loaded, "hi", chat=True, max_new_tokens=6, temperature=0.8, seed=3).new_ids


def test_cli_streams_text_and_prints_speeds(variants, tiny_dir):
    from moorelab.model.generate import generate_text

    p = moorelab("generate", str(variants["int4"]), "The quick", "--max-new-tokens", "8", "--temperature", "0.9",
                 "--top-p", "0.95", "--seed", "11", "--threads", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    want = generate_text(_load(variants["int4"]), "The quick", max_new_tokens=8, temperature=0.9, top_p=0.95, seed=11)
    assert p.stdout == want.text + "\n"
    assert "saved with int4:group_size=32" in p.stderr
    assert "prefill" in p.stderr and "tokens/s" in p.stderr and "CPU share" in p.stderr
    assert f"{len(want.prompt_ids)} prompt + {len(want.new_ids)} new tokens" in p.stderr


@pytest.mark.parametrize("kw, says", [
    (dict(temperature=-1.0), "--temperature -1.0: must be a finite number >= 0"),
    (dict(temperature=float("nan")), "--temperature nan: must be a finite number >= 0"),
    (dict(top_p=1.5, temperature=1.0), "--top-p 1.5: must be in (0, 1]"),
    (dict(top_p=0.0, temperature=1.0), "--top-p 0.0: must be in (0, 1]"),
    (dict(top_p=0.5), "give --temperature > 0"),
    (dict(top_k=0, temperature=1.0), "--top-k 0: must be >= 1"),
    (dict(max_new_tokens=0), "--max-new-tokens 0: must be an integer >= 1"),
])
def test_bad_options_are_named(kw, says):
    from moorelab.errors import MoorelabError
    from moorelab.model.generate import check_options

    args = dict(max_new_tokens=4, temperature=0.0) | kw
    with pytest.raises(MoorelabError) as exc:
        check_options(**args)
    assert says in str(exc.value)


def test_chat_without_template_and_empty_prompt(tiny_dir, tmp_path):
    import shutil

    from moorelab.errors import MoorelabError
    from moorelab.model.generate import generate_text

    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "chat_template.jinja").unlink()
    loaded = _load(bare)
    with pytest.raises(MoorelabError, match="--chat: model bare declares no chat template"):
        generate_text(loaded, "hello", chat=True)
    with pytest.raises(MoorelabError, match="prompt: empty"):
        generate_text(loaded, "")


def test_cli_bad_input_exit_2_before_loading(tiny_dir):
    p = moorelab("generate", str(tiny_dir), "hello", "--top-p", "0.5")
    assert p.returncode == 2 and "error: --top-p/--top-k: sampling options; give --temperature > 0" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "loaded in" not in p.stderr  # refused before the model was loaded
