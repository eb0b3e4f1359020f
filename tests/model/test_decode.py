"""The decode dispatcher: generation takes the fused one-token path wherever it can, the reference
model never does, and the dependency runs one way (reference <- fused path <- dispatcher)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from moorelab import kernels
from moorelab.model import decode, fused_decode
from moorelab.model.config import TransformerConfig
from moorelab.model.generate import generate
from moorelab.model.transformer import KVCache, Transformer
from model_helpers import scramble

needs_kernels = pytest.mark.skipif(kernels.get_library() is None,
                                   reason=f"compiled kernels unavailable: {kernels.status()}")

LLAMA = dict(family="llama", vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
             max_position_embeddings=128, rope_theta=100.0)
GPT2 = dict(family="gpt2", vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=64, norm="layernorm",
            activation="gelu_tanh", position="learned", max_position_embeddings=64)
PROMPT = torch.randint(0, 61, (1, 5), generator=torch.Generator().manual_seed(3))


def tiny(config: dict = LLAMA) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(**config)).eval()
    scramble(m, std=0.25)
    return m


def generate_paths(m: Transformer, n: int = 6) -> tuple[torch.Tensor, list[str]]:
    paths = []
    out = generate(m, PROMPT, max_new_tokens=n, on_token=lambda _t: paths.append(m.last_decode_path))
    return out, paths


@needs_kernels
def test_generate_decodes_every_step_on_the_fused_path():
    m = tiny()
    out, paths = generate_paths(m)
    assert paths == ["python"] + ["fused"] * 5  # the prompt (5 tokens at once), then one token per step
    m.fused_decode = False
    ref, ref_paths = generate_paths(m)
    assert ref_paths == ["python"] * 6
    assert torch.equal(out, ref)


def test_generate_of_a_model_without_a_fused_path_runs_python():
    m = tiny(GPT2)
    assert "LLaMA" in fused_decode.why_not_fused(m)
    _, paths = generate_paths(m)
    assert paths == ["python"] * 6


def test_the_reference_forward_never_takes_the_fused_path(monkeypatch):
    m = tiny()
    calls = []
    monkeypatch.setattr(decode, "decode_step", lambda *a: calls.append(a))
    cache = KVCache()
    with torch.inference_mode():
        m(PROMPT, cache=cache)
        m(torch.tensor([[7]]), cache=cache)
    assert calls == [] and m.last_decode_path is None
    with torch.inference_mode():
        decode.forward(m, torch.tensor([[8]]), cache=cache)
    assert len(calls) == 1 and m.last_decode_path == "python"  # the stub declined (returned None)
    assert cache.length == 7


@needs_kernels
def test_dispatcher_returns_the_reference_numbers():
    m = tiny()
    c_fused, c_ref = KVCache(), KVCache()
    with torch.inference_mode():
        m(PROMPT, cache=c_fused)
        m(PROMPT, cache=c_ref)
        got = decode.forward(m, torch.tensor([[9]]), cache=c_fused, last_only=True)
        assert m.last_decode_path == "fused"
        want = m(torch.tensor([[9]]), cache=c_ref, last_only=True)
    assert got.shape == want.shape == (1, 1, 61)
    assert (got - want).abs().max().item() <= 2e-4 * want.abs().max().item()
    assert c_fused.length == c_ref.length == 6


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in ``path`` (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_reference_model_does_not_import_its_fast_path_or_anything_above_the_kernels():
    model_dir = Path(decode.__file__).parent
    ref = _imports(model_dir / "transformer.py")
    assert not {n for n in ref if "fused_decode" in n or n.endswith(".decode") or n.startswith("moorelab.improve")}, ref
    assert "moorelab.kernels.get_library" in ref
    fused = _imports(model_dir / "fused_decode.py")
    assert not {n for n in fused if n.endswith(".decode") or n.startswith("moorelab.improve")}, fused


# ---------------------------------------------------------------- greedy (ml_argmax_rows)
def _greedy_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    nan, inf = float("nan"), float("inf")
    cases = [torch.randn(3, n, generator=g) for n in (1, 7, 8, 9, 16, 17, 61, 49152 + 3)]
    tie = torch.randn(2, 50, generator=g)
    tie[0, [4, 9, 40]] = 9.0  # ties: the first index wins, in the vector part and across blocks
    tie[1, [44, 49]] = 9.0  # ties in the scalar tail
    cases.append(tie)
    late = torch.randn(1, 61, generator=g)
    late[0, 60] = 50.0  # the maximum in the tail only
    cases.append(late)
    nans = torch.randn(4, 37, generator=g)
    nans[0, 20] = nan  # a NaN counts as the largest: its index, not the maximum's
    nans[1, [3, 30]] = nan  # the first NaN
    nans[2, 36] = nan  # a NaN in the tail
    nans[3, 5] = inf  # +inf without NaN
    cases.append(nans)
    cases.append(torch.full((2, 19), -inf))  # a row of -inf: index 0
    signed = torch.zeros(1, 12)
    signed[0, :6] = -0.0  # -0.0 and 0.0 tie (torch: the first)
    cases.append(signed)
    return cases


@needs_kernels
@pytest.mark.parametrize("case", range(len(_greedy_cases())))
def test_greedy_is_torch_argmax_exactly(case):
    logits = _greedy_cases()[case]
    got = decode.greedy(logits)
    assert got.dtype is torch.int64
    assert torch.equal(got, logits.argmax(-1)), (got, logits.argmax(-1))


@needs_kernels
def test_greedy_reads_strided_rows_and_falls_back_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(6)
    lo = torch.randn(3, 4, 70, generator=g)
    last = lo[:, -1]  # [B, V] view, row stride 4 * 70: the decode loops' logits[:, -1]
    assert last.stride(0) == 280
    assert torch.equal(decode.greedy(last), last.argmax(-1))
    cols = lo[:, :, 5]  # stride(1) != 1: torch's argmax
    assert torch.equal(decode.greedy(cols), cols.argmax(-1))
    half = lo[:, 0].to(torch.float16)
    assert torch.equal(decode.greedy(half), half.argmax(-1))
    assert decode.greedy(torch.empty(0, 9)).shape == (0,)
    for bad in (torch.randn(5), torch.randn(2, 0), torch.randn(1, 2, 3)):
        with pytest.raises(ValueError, match="greedy"):
            decode.greedy(bad)


def test_greedy_without_kernels_is_torch_argmax(monkeypatch):
    monkeypatch.setattr(kernels, "get_library", lambda: None)
    x = torch.randn(2, 33)
    x[1, 7] = float("nan")
    assert torch.equal(decode.greedy(x), x.argmax(-1))
