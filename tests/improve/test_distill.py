"""Knowledge distillation: the T²-scaled KL by hand, FLOP accounting, recovery of a pruned student."""

import copy
import math

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve.distill import DistillConfig, distill, kd_loss, matmul_parameters
from moorelab.improve.prune import FFNChannelPruneConfig, prune_
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.train import TokenWindows, TrainConfig, next_token_loss, train


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_kd_loss_golden_values():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p = (3/4, 1/4), q = (1/2, 1/2)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(kl1, rel=1e-6)
    # T = 2: p ∝ (√3, 1), q = (1/2, 1/2), times T² = 4
    p0 = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(4 * kl2, rel=1e-6)
    # a sum over positions, zero when the distributions agree
    two = kd_loss(torch.cat([s, s]), torch.cat([t, t]), 2.0)
    assert float(two) == pytest.approx(8 * kl2, rel=1e-6)
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)


def tiny(seed=0, d_ff=32):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=d_ff,
                            max_position_embeddings=64)
    return Transformer(cfg)


def test_matmul_parameters_counts_tied_head():
    m = tiny()
    per_block = 16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 32
    assert matmul_parameters(m) == 2 * per_block + 30 * 16  # lm_head counted although tied


def held_out_kl(student, teacher, batch, T=1.0):
    with torch.no_grad():
        return float(kd_loss(student(batch), teacher(batch), T)) / batch.numel()


def test_distillation_recovers_a_pruned_student():
    # a teacher that knows something: trained on a repetitive text
    text = [(i * 7 + (i // 5)) % 30 for i in range(600)]
    teacher = tiny()
    train(teacher, next_token_loss, TokenWindows(text, 16, batch_size=4), TrainConfig(steps=60, lr=1e-2, warmup_steps=5))
    teacher.eval()
    teacher_state = copy.deepcopy(teacher.state_dict())
    student = copy.deepcopy(teacher)
    prune_(student, FFNChannelPruneConfig(0.5, importance="weight"))
    held = TokenWindows(text, 16, batch_size=8, seed=123)(0, 0)
    kl_before = held_out_kl(student, teacher, held)

    cfg = DistillConfig(temperature=2.0, steps=40, lr=5e-3, warmup_steps=4, seed=0)
    rep = distill(student, teacher, TokenWindows(text, 16, batch_size=2, seed=1), cfg)
    kl_after = held_out_kl(student, teacher, held)
    assert kl_after < 0.7 * kl_before
    assert rep.losses[-1] < rep.losses[0]
    # teacher untouched, student trained
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    # compute: 6·N_s·tokens + 2·N_t·tokens, tokens = steps · batch · seq_len
    assert rep.tokens == 40 * 2 * 16
    n_s = 2 * (16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 16) + 30 * 16
    n_t = 2 * (16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 32) + 30 * 16
    assert (rep.n_student, rep.n_teacher) == (n_s, n_t)
    assert rep.flops == 6 * n_s * rep.tokens + 2 * n_t * rep.tokens
    assert rep.seconds > 0 and "6 * N_student" in rep.flop_formula


def test_distill_with_evaluate_and_pool_of_batches():
    teacher, student = tiny(0), tiny(1)
    pool = torch.randint(0, 30, (3, 10), generator=torch.Generator().manual_seed(0))
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return held_out_kl(model, teacher, pool)

    rep = distill(student, teacher, pool, DistillConfig(steps=3, lr=1e-3, warmup_steps=1), evaluate=evaluate)
    assert calls == [False, False]  # evaluated in eval mode, before and after
    assert rep.bits_per_byte_before is not None and rep.bits_per_byte_after is not None
    assert rep.tokens == 3 * 10


def test_distill_errors():
    with pytest.raises(MoorelabError, match="temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(MoorelabError, match="steps"):
        DistillConfig(steps=0)
    other = Transformer(TransformerConfig(vocab_size=31, d_model=16, n_layers=1, n_heads=4, d_ff=16))
    with pytest.raises(MoorelabError, match="vocab_size"):
        distill(tiny(), other, torch.zeros(1, 4, dtype=torch.long), DistillConfig(steps=1, warmup_steps=0))


@pytest.mark.parametrize("mode", ["parametrize", "buffer"])
def test_distilling_a_sparse_student_keeps_its_masks(mode):
    from moorelab.improve.prune import MagnitudePruneConfig, prunable_linears, reapply_masks_, sparsity_report

    teacher, student = tiny(0), tiny(0)
    prune_(student, MagnitudePruneConfig(0.5, mask_mode=mode))
    pool = torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    distill(student, teacher, pool, DistillConfig(steps=3, lr=1e-2, warmup_steps=0),
            after_step=reapply_masks_ if mode == "buffer" else None)
    total, masked, _ = sparsity_report(student)
    zeros = sum(int((l.weight == 0).sum()) for _, l in prunable_linears(student))
    assert masked == zeros == round(0.5 * total)
