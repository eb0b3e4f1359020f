"""The ladder's schedules (inverse square root, warmup-stable-decay) and the Muon + AdamW optimizer."""

import math

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.train import TokenWindows, TrainConfig, lr_at, next_token_loss, train
from moorelab.train.loop import MuonAdamW, make_optimizer


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(tie=False):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=4, d_ff=32,
                                         max_position_embeddings=32, tie_word_embeddings=tie, qk_norm=True))


def test_inverse_sqrt_golden_values():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=4, schedule="inverse_sqrt")
    assert [lr_at(s, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # lr·sqrt(warmup/(s+1)): step 15 -> sqrt(4/16) = 0.5, step 99 -> sqrt(4/100) = 0.2
    assert lr_at(15, c) == pytest.approx(0.5)
    assert lr_at(99, c) == pytest.approx(0.2)


def test_wsd_golden_values():
    c = TrainConfig(steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.4)
    # warmup 0.5, 1; stable at 1 up to step 5; 4 decay steps 6..9 linear to 0 at the last step
    got = [lr_at(s, c) for s in range(10)]
    assert got == pytest.approx([0.5, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0.0])


def test_bad_schedule_or_optimizer_is_named():
    with pytest.raises(MoorelabError, match="schedule"):
        TrainConfig(steps=3, schedule="linear")
    with pytest.raises(MoorelabError, match="optimizer"):
        TrainConfig(steps=3, optimizer="sgd")


def test_muon_takes_hidden_matrices_adamw_the_rest():
    m = tiny()
    opt = make_optimizer(m, TrainConfig(steps=3, optimizer="muon", weight_decay=0.1))
    assert isinstance(opt, MuonAdamW)
    muon_names = set(opt.muon.param_groups[0]["names"])
    # 2 layers x (q, k, v, o, gate, up, down) = 14 matrices; never the embedding or the output layer
    assert len(muon_names) == 14
    assert all(n.startswith("blocks.") and n.endswith("_proj.weight") for n in muon_names)
    adam_names = {n for g in opt.adamw.param_groups for n in g["names"]}
    assert "embed.weight" in adam_names and "lm_head.weight" in adam_names
    assert "blocks.0.attn.q_norm.weight" in adam_names
    n_params = len({id(p) for p in m.parameters()})
    assert len(muon_names) + len(adam_names) == n_params
    decays = {n: g["weight_decay"] for g in opt.adamw.param_groups for n in g["names"]}
    assert decays["lm_head.weight"] == 0.1 and decays["embed.weight"] == 0.0


def test_muon_trains_and_refuses_checkpoints(tmp_path):
    m = tiny()
    ids = list(torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(0)).tolist())
    windows = TokenWindows(ids * 3, 17, 4, seed=0)
    cfg = TrainConfig(steps=30, lr=3e-2, warmup_steps=3, optimizer="muon", schedule="wsd", weight_decay=0.0)
    rep = train(m, next_token_loss, windows, cfg)
    assert rep.losses[-1] < rep.losses[0] - 0.3  # ln(40) = 3.69 at the start
    assert rep.losses[0] == pytest.approx(math.log(40), abs=0.1)
    with pytest.raises(MoorelabError, match="muon"):
        train(tiny(), next_token_loss, windows, TrainConfig(steps=2, optimizer="muon", checkpoint_dir=str(tmp_path)))


@pytest.mark.parametrize("shape", [(24, 8), (8, 24)])
def test_float32_muon_is_torch_muon_with_float32_newton_schulz(shape):
    from moorelab.train.loop import Float32Muon

    torch.manual_seed(0)
    w0 = torch.randn(shape)
    grads = [torch.randn(shape) for _ in range(3)]

    def run(cls, dtype=None):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        if dtype is not None:
            opt.ns_dtype = dtype
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.detach()

    ref = run(torch.optim.Muon)
    torch.testing.assert_close(run(Float32Muon, torch.bfloat16), ref, atol=1e-6, rtol=0)  # torch's numbers
    ours = run(Float32Muon)
    # float32 Newton-Schulz differs from bfloat16 by bfloat16 rounding only (3 steps of lr·r ~ 0.02)
    assert (ours - ref).abs().max() < 2e-3
    assert (ours - w0).abs().max() > 0.02
