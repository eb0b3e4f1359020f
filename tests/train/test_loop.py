"""Training loop: decay groups, step-counted schedule, token-normalised accumulation, exact resume."""

import math

import pytest
import torch
from torch import nn

from moorelab.errors import MoorelabError
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.train import (
    TokenWindows,
    TrainConfig,
    calibration_batches,
    load_checkpoint,
    lr_at,
    next_token_loss,
    param_groups,
    train,
)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: one thread avoids oversubscription on the shared 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny(tie=True, seed=0, bias=False):
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=50, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24,
        max_position_embeddings=64, tie_word_embeddings=tie, attn_bias=bias, mlp_bias=bias,
    )
    return Transformer(cfg)


def test_lr_schedule_golden_values():
    c = TrainConfig(steps=10, lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    # warmup counted in optimizer steps: (s+1)/warmup
    assert [lr_at(s, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine from 1.0 to 0.1 over the remaining 6 steps: step 4 is the peak, step 7 the midpoint
    assert lr_at(4, c) == pytest.approx(1.0)
    assert lr_at(7, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(7, c) == pytest.approx(0.55)
    assert lr_at(10, c) == pytest.approx(0.1)
    # grad_accum does not change the schedule (it is per optimizer step, not per micro-batch)
    c2 = TrainConfig(steps=10, lr=1.0, warmup_steps=4, min_lr_ratio=0.1, grad_accum=4)
    assert [lr_at(s, c2) for s in range(10)] == [lr_at(s, c) for s in range(10)]


def test_no_weight_decay_on_norms_biases_embeddings():
    m = tiny(tie=True, bias=True)
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("_proj.weight") for n in decay["names"])
    assert len(decay["names"]) == 2 * 7  # q,k,v,o,gate,up,down per block
    assert "embed.weight" in no_decay["names"]
    assert any(n.endswith("norm.weight") for n in no_decay["names"])
    assert any(n.endswith(".bias") for n in no_decay["names"])
    # tied lm_head is the embedding: listed once, no decay
    assert "lm_head.weight" not in decay["names"] + no_decay["names"]
    untied = tiny(tie=False)
    d2, _ = param_groups(untied, 0.1)
    assert "lm_head.weight" in d2["names"]  # an untied output head is a Linear matrix


def test_accumulation_is_normalised_by_tokens():
    """Two micro-batches of 3 and 7 loss tokens give the gradient of one batch of 10 tokens."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 1, bias=False)
    x = torch.randn(10, 3)
    y = torch.randn(10, 1)

    def loss_fn(model, batch):
        xb, yb = batch
        return ((model(xb) - yb) ** 2).sum()

    parts = [(x[:3], y[:3]), (x[3:], y[3:])]
    grads = []

    # reference: full-batch mean gradient
    ref = lin.weight.detach().clone().requires_grad_(True)
    ((x @ ref.T - y) ** 2).mean().backward()
    # the loop with accumulation: capture the gradient of each micro-batch backward
    lin.weight.register_hook(lambda g: grads.append(g.clone()))
    cfg = TrainConfig(steps=1, lr=1e-3, grad_accum=2, grad_clip=None)
    train(lin, loss_fn, lambda s, mi: parts[mi], cfg, count_tokens=lambda b: b[0].shape[0])
    total = grads[0] + grads[1]
    assert torch.allclose(total, ref.grad, atol=1e-6)


def test_exact_resume_bitwise(tmp_path):
    ids = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(1)).tolist()
    data = TokenWindows(ids, 12, batch_size=2, seed=3)

    def cfg(steps, ck=None):
        return TrainConfig(steps=steps, lr=5e-3, warmup_steps=2, grad_accum=2, weight_decay=0.1, checkpoint_dir=ck,
                           log_dir=str(tmp_path / "tb"))

    m_full = tiny()
    r_full = train(m_full, next_token_loss, data, TrainConfig(steps=6, lr=5e-3, warmup_steps=2, grad_accum=2, weight_decay=0.1))
    m_a = tiny()
    c_a = cfg(6, str(tmp_path / "ck"))
    c_a.checkpoint_every = 3
    train(m_a, next_token_loss, data, c_a)
    assert all(torch.equal(a, b) for a, b in zip(m_full.state_dict().values(), m_a.state_dict().values()))
    # resume from step 3 into a differently initialised model
    m_b = tiny(seed=99)
    r_b = train(m_b, next_token_loss, data, cfg(6), resume_from=tmp_path / "ck" / "step_000003")
    assert r_b.start_step == 3 and r_b.end_step == 6
    assert r_b.losses == r_full.losses[3:]
    for (n, a), b in zip(m_full.state_dict().items(), m_b.state_dict().values()):
        assert torch.equal(a, b), n
    # no pickle anywhere in a checkpoint
    files = sorted(p.name for p in (tmp_path / "ck" / "step_000003").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    # TensorBoard event file written
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_resume_in_the_same_second_purges_the_killed_runs_tensorboard_steps(tmp_path):
    # TensorBoard reads a folder's event files in name order (stamp in whole seconds, host, pid) and
    # applies the resumed writer's purge_step only to events read before it. The killed run's file
    # is renamed to a stamp no earlier than the resume and a pid that sorts last: the resume must
    # still come after it, or steps 4..6 show twice (CI saw this when kill and resume fell in one second).
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ids = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(1)).tolist()
    data = TokenWindows(ids, 12, batch_size=2, seed=3)
    tb = tmp_path / "tb"
    cfg = TrainConfig(steps=6, lr=5e-3, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3, log_dir=str(tb))
    train(tiny(), next_token_loss, data, cfg)
    (killed,) = tb.glob("events.out.tfevents.*")
    parts = killed.name.split(".")
    parts[3], parts[-2] = f"{int(time.time()) + 1:010d}", "99999999"
    killed.rename(tb / ".".join(parts))
    train(tiny(), next_token_loss, data, cfg, resume_from=tmp_path / "ck" / "step_000003")
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_mismatch_is_a_clear_error(tmp_path):
    m = tiny()
    train(m, next_token_loss, TokenWindows(list(range(50)) * 4, 8), TrainConfig(steps=1, checkpoint_dir=str(tmp_path)))
    other = Transformer(TransformerConfig(vocab_size=50, d_model=8, n_layers=1, n_heads=2, d_ff=8))
    with pytest.raises(MoorelabError, match="model.safetensors"):
        load_checkpoint(tmp_path, other)
    with pytest.raises(MoorelabError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing", m)


def test_config_and_data_errors():
    with pytest.raises(MoorelabError, match="warmup_steps"):
        TrainConfig(steps=3, warmup_steps=5)
    with pytest.raises(MoorelabError, match="grad_accum"):
        TrainConfig(steps=3, grad_accum=0)
    with pytest.raises(MoorelabError, match="seq_len"):
        TokenWindows([1, 2, 3], seq_len=8)
    with pytest.raises(MoorelabError, match="needs 20"):
        calibration_batches(list(range(10)), 10, 20)
    assert calibration_batches(list(range(25)), 10, 20).tolist() == [list(range(10)), list(range(10, 20))]
    w = TokenWindows(list(range(100)), 5, batch_size=3, seed=7)
    assert torch.equal(w(4, 1), w(4, 1)) and not torch.equal(w(4, 1), w(5, 1))
    assert (w(0, 0)[:, 1:] - w(0, 0)[:, :-1] == 1).all()  # consecutive tokens


def test_training_reduces_loss_and_seeds_repeat():
    ids = [i % 7 for i in range(300)]  # a periodic text is learnable
    data = TokenWindows(ids, 16, batch_size=4)
    m1, m2 = tiny(), tiny()
    c = TrainConfig(steps=25, lr=1e-2, warmup_steps=3)
    r1 = train(m1, next_token_loss, data, c)
    r2 = train(m2, next_token_loss, data, c)
    assert r1.losses == r2.losses
    assert r1.losses[-1] < 0.5 * r1.losses[0]
    assert r1.tokens == 25 * 4 * 15


def test_half_written_checkpoints_are_never_picked(tmp_path):
    from moorelab.train.checkpoint import latest_checkpoint, read_trainer_json

    m = tiny()
    cfg = TrainConfig(steps=2, lr=1e-3, checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(m, next_token_loss, TokenWindows(list(range(50)) * 4, 9, 2), cfg)
    # a kill during save leaves only a temporary folder, or a step folder without its record
    (tmp_path / ".tmp_abc").mkdir()
    (tmp_path / ".tmp_abc" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "step_000009").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    (tmp_path / "step_000002" / "trainer.json").write_text('{"format": 1, "st')
    with pytest.raises(MoorelabError, match="corrupted checkpoint"):
        read_trainer_json(latest_checkpoint(tmp_path))
