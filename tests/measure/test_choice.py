"""The multiple-choice protocol (moorelab.measure.choice): golden values by hand on a bigram model,
the KV-cache path against one full pass per choice, and lm-eval's left truncation."""

import math

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.measure.choice import (ChoiceItem, accuracy, encode_pair, proportion, score_continuations, score_item,
                                     score_items)
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer

LN = math.log


def bigram_model() -> Transformer:
    """A 3-token model ('a','b','c' = 0,1,2) whose logits depend only on the current token:
    attention and FFN weights are zero, so the residual stream is the embedding E[i] = e_i (d = 4);
    RMSNorm turns e_i into 2 e_i (rms 1/2), the final norm's weight 1/2 undoes that, and the
    untied output layer W gives logits W[:, i]: a bigram table
    P(· | a) = (1/4, 1/2, 1/4), P(· | b) = (1/4, 1/4, 1/2), P(· | c) = (1/2, 1/4, 1/4)."""
    cfg = TransformerConfig(family="llama", vocab_size=3, d_model=4, n_layers=1, n_heads=1, d_ff=4,
                            max_position_embeddings=64, tie_word_embeddings=False, norm_eps=0.0)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.blocks.parameters():
            p.zero_()
        for name, p in m.blocks.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        m.embed.weight.copy_(torch.eye(3, 4))
        m.final_norm.weight.fill_(0.5)
        probs = torch.tensor([[1, 2, 1], [1, 1, 2], [2, 1, 1]], dtype=torch.float64) / 4  # [cur, next]
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, :3] = probs.log().T.float()  # logits[next] = W[next, cur]
    return m


def enc(text: str) -> list[int]:
    return [ord(ch) - ord("a") for ch in text]


def test_golden_values_by_hand():
    m = bigram_model()
    # item 1: after "ab", X = "a": P(a|b) = 1/4; Y = "cab": P(c|b) P(a|c) P(b|a) = 1/2^3
    one = ChoiceItem("ab", ("a", "cab"), gold=1, target_delimiter="")
    s = score_item(m, enc, one, max_length=64)
    assert s.loglikelihoods == pytest.approx([LN(1 / 4), LN(1 / 8)], abs=1e-5)
    assert s.n_tokens == [1, 3]
    assert s.is_greedy == [False, True]  # greedy after b is c; c -> a -> b are each the argmax
    assert s.pred == 0  # sum: -1.386 > -2.079
    assert s.pred_norm == 1  # per character: -1.386 < -0.693
    # item 2: after "c", "a" has 1/2, "b" 1/4
    two = ChoiceItem("c", ("a", "b"), gold=0, target_delimiter="")
    acc = score_items(m, enc, [one, two], max_length=64)
    assert acc.acc.value == 0.5 and acc.acc_norm.value == 1.0
    assert acc.acc.stderr == pytest.approx(0.5)  # sample sd of (0, 1) = 1/sqrt(2), / sqrt(2)
    assert acc.acc_norm.stderr == 0.0
    z, n, p = 1.959963984540054, 2, 0.5  # Wilson: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    centre = p + z * z / (2 * n)
    assert acc.acc.ci95 == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))


def test_acc_bytes_differs_from_acc_norm_on_non_ascii():
    # lm-eval's acc_norm divides by characters, acc_bytes by UTF-8 bytes: "é" is 1 character, 2 bytes
    from moorelab.measure.choice import make_score

    s = make_score([-2.4, -3.0], [False, False], [1, 1], ["éé", "abc"], gold=1)
    assert s.pred == 0  # -2.4 > -3.0
    assert s.pred_norm == 1  # per character: -1.2 < -1.0
    assert s.pred_bytes == 0  # per byte: -0.6 > -1.0


def test_encode_pair_moves_trailing_space_and_handles_empty_context():
    words = {"x": 1, " y": 2, "\n": 3, "\ny": 4, "y": 5}

    def e(t):  # greedy longest match over a toy vocabulary
        out, i = [], 0
        while i < len(t):
            for k in sorted(words, key=len, reverse=True):
                if t.startswith(k, i):
                    out.append(words[k])
                    i += len(k)
                    break
            else:
                raise AssertionError(t)
        return out

    assert encode_pair(e, "x\n", "y", None) == ([1], [4])  # "\n" moved into the continuation
    assert encode_pair(e, "", "x", prefix_token_id=9) == ([9], [1])
    assert encode_pair(e, "", "x", prefix_token_id=1) == ([1], [])  # continuation starts with the prefix
    with pytest.raises(MoorelabError):
        encode_pair(e, "", "x", prefix_token_id=None)


def tiny_llama(seed=0, max_pos=32) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(family="llama", vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                            max_position_embeddings=max_pos)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@torch.no_grad()
def full_pass(m, ctx, cont, max_length):
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    logp = torch.log_softmax(m(torch.tensor([inp]))[0, -len(cont):], -1)
    return float(logp.gather(1, torch.tensor(cont)[:, None]).sum())


def test_cache_path_equals_one_full_pass_per_choice():
    m = tiny_llama()
    ctx = [3, 9, 4, 1, 7, 7, 2]
    conts = [[5], [6, 1, 2], [8, 8], [10, 11, 12, 13, 14]]
    lls, greedy, trunc = score_continuations(m, ctx, conts, max_length=32)
    assert trunc == 0
    assert lls == pytest.approx([full_pass(m, ctx, c, 32) for c in conts], abs=2e-5)
    assert all(v < 0 for v in lls)


def test_prompt_longer_than_context_is_truncated_from_the_left_and_counted():
    m = tiny_llama(max_pos=16)
    ctx = list(range(1, 21))  # 20 tokens, context 16
    conts = [[5, 6], [7]]
    lls, _, trunc = score_continuations(m, ctx, conts, max_length=16)
    assert trunc == 22 - 17  # the longest ctx + cont (22) beyond max_length + 1
    assert lls == pytest.approx([full_pass(m, ctx, c, 16) for c in conts], abs=2e-5)
    with pytest.raises(MoorelabError, match="longer than the model's context"):
        score_continuations(m, [1], [list(range(17))], max_length=16)


def test_proportion_needs_items():
    with pytest.raises(MoorelabError):
        proportion([])
    with pytest.raises(MoorelabError):
        accuracy([])
