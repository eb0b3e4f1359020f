"""The textbook worked examples, pinned to values derived by hand."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from moorelab.model.explain import attention_heatmap, explain_attention, explain_ffn

# By hand: rows r1=[.1,.2,.3], r2=[.4,.5,.6], r3=[.7,.8,.9];
# r1·r1=.14, r1·r2=.32, r1·r3=.50, r2·r2=.77, r2·r3=1.22, r3·r3=1.94.
QK = [[0.14, 0.32, 0.50], [0.32, 0.77, 1.22], [0.50, 1.22, 1.94]]
# divided by √3 = 1.7320508; softmax row 1: exp(.0808290)=1.084186, exp(.1847521)=1.202928,
# exp(.2886751)=1.334677, sum 3.621791 -> .299353, .332137, .368511 (and likewise rows 2, 3).
WEIGHTS = [[0.299353, 0.332137, 0.368511], [0.251379, 0.325958, 0.422663], [0.207817, 0.314931, 0.477252]]
# output row 1 = .299353·r1 + .332137·r2 + .368511·r3 = [.420747, .520747, .620747]
OUTPUT = [[0.420747, 0.520747, 0.620747], [0.451385, 0.551385, 0.651385], [0.480830, 0.580830, 0.680830]]


def test_attention_textbook_values():
    s = explain_attention()
    assert torch.allclose(s.qk, torch.tensor(QK, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(s.scores, torch.tensor(QK, dtype=torch.float64) / math.sqrt(3), atol=1e-12)
    assert torch.allclose(s.weights, torch.tensor(WEIGHTS, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(s.output, torch.tensor(OUTPUT, dtype=torch.float64), atol=1e-6)
    # The widely copied claim "the output equals V" is wrong:
    assert (s.output - s.x).abs().max() > 0.3


def test_ffn_textbook_values():
    s = explain_ffn()
    assert s.W1x.tolist() == [14, 32, 50]  # 1+4+9, 4+10+18, 7+16+27 (not [10, 19, 28])
    assert s.W1x_b1.tolist() == [15, 33, 51]
    assert s.hidden.tolist() == [15, 33, 51]
    assert s.W2h.tolist() == [66, 33, 99]  # 15+51, 33, 15+33+51
    assert s.W2h_b2.tolist() == [67, 33, 100]
    assert s.output.tolist() == [67, 33, 100]


def test_ffn_relu_clips_negatives():
    s = explain_ffn(x=[1.0, -2.0, 0.0], W1=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], b1=[0, 0, 0],
                    W2=[[-1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], b2=[0, 0, 0])
    assert s.hidden.tolist() == [1, 0, 0] and s.W2h_b2.tolist() == [-1, 0, 0] and s.output.tolist() == [0, 0, 0]


def test_cli_prints_the_steps():
    from moorelab.cli import app

    r = CliRunner().invoke(app, ["explain", "ffn"])
    assert r.exit_code == 0, r.output
    assert "[14, 32, 50]" in r.output and "[67, 33, 100]" in r.output
    r = CliRunner().invoke(app, ["explain", "attention"])
    assert r.exit_code == 0, r.output
    assert "0.2994, 0.3321, 0.3685" in r.output and "0.4207, 0.5207, 0.6207" in r.output


@pytest.mark.slow
def test_heatmap_png_of_real_attention(smollm2, tmp_path):
    w, tokens, path = attention_heatmap(smollm2, "The cat sat on the mat.", layer=2, head=1, out=tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert w.shape == (len(tokens), len(tokens))
    assert torch.allclose(w.sum(-1), torch.ones(len(tokens)), atol=1e-5)
    assert torch.equal(w.triu(1), torch.zeros_like(w))  # causal: no weight on future tokens
    assert smollm2.model.blocks[2].attn.record is None  # recording switched off again
