"""Golden values for perplexity and bits per byte on hand-made distributions."""

import math

import pytest
import torch

from moorelab.measure.quality import plan_windows, score_text


def uniform_model(vocab: int):
    def fn(ids):
        return torch.zeros(ids.shape[0], ids.shape[1], vocab)

    return fn


def bigram_model(table: torch.Tensor):
    """Logits = log of a hand-made next-token table P[prev, next]."""

    def fn(ids):
        return torch.log(table)[ids]

    return fn


def test_uniform_distribution_gives_vocab_perplexity():
    ids = [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]  # 10 tokens
    r = score_text(uniform_model(4), ids, n_bytes=20, window=4, stride=4, bos_policy="first", bos_token_id=0)
    assert r.tokens_scored == 10
    assert r.perplexity == pytest.approx(4.0, rel=1e-6)
    # 10 tokens x 2 bits / 20 bytes = 1 bit per byte
    assert r.bits_per_byte == pytest.approx(1.0, rel=1e-6)


def test_bigram_golden_values_by_hand():
    # P(next | prev): from 0 -> 1 w.p. 0.5, from 1 -> 0 w.p. 0.25
    table = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    ids = [1, 0, 1]  # BOS=0 first: targets 1|0 (0.5), 0|1 (0.25), 1|0 (0.5)
    r = score_text(bigram_model(table), ids, n_bytes=3, window=8, bos_policy="first", bos_token_id=0)
    nll = -(math.log(0.5) + math.log(0.25) + math.log(0.5))  # = 4 ln 2
    assert r.nll_nats == pytest.approx(nll)
    assert r.perplexity == pytest.approx(2 ** (4 / 3))
    assert r.bits_per_byte == pytest.approx(4 / 3)


def test_no_bos_leaves_first_token_unscored():
    table = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    r = score_text(bigram_model(table), [1, 0, 1], n_bytes=3, window=8, bos_policy="none", unscored_bytes=1)
    assert r.tokens_scored == 2 and r.tokens_unscored == 1
    assert r.nll_nats == pytest.approx(-(math.log(0.25) + math.log(0.5)))
    # bits per byte over the 2 bytes of the scored span, not the 3 of the text
    assert (r.n_bytes, r.text_bytes) == (2, 3)
    assert r.bits_per_byte == pytest.approx(-(math.log(0.25) + math.log(0.5)) / math.log(2) / 2)


@pytest.mark.parametrize("window,stride", [(4, 4), (4, 2), (5, 3), (3, 1), (16, 16)])
def test_every_token_scored_once_any_stride(window, stride):
    # A bigram model's NLL does not depend on context length, so any windowing gives the same sum.
    g = torch.Generator().manual_seed(0)
    table = torch.softmax(torch.randn(7, 7, generator=g), dim=-1)
    ids = torch.randint(0, 7, (23,), generator=g).tolist()
    ref = -sum(math.log(table[a, b]) for a, b in zip([0] + ids[:-1], ids))
    r = score_text(bigram_model(table), ids, n_bytes=50, window=window, stride=stride, bos_policy="first", bos_token_id=0, batch_size=3)
    assert r.tokens_scored == 23
    assert r.nll_nats == pytest.approx(ref, rel=1e-6)  # float32 log-softmax


def test_window_plan_counts():
    plans = plan_windows(11, window=4, stride=2)  # 10 targets
    assert sum(n for _, _, n in plans) == 10
    assert plans[0] == (0, 4, 4)
    assert plans[1] == (2, 6, 2)  # 2 tokens of context, 2 new


def test_every_policy_prepends_bos_to_each_window():
    seen = []

    def fn(ids):
        seen.append(ids[:, 0].tolist())
        return torch.zeros(ids.shape[0], ids.shape[1], 5)

    r = score_text(fn, [1, 2, 3, 4, 1, 2, 3], n_bytes=7, window=4, stride=3, bos_policy="every", bos_token_id=0, batch_size=1)
    assert all(first == [0] for first in seen)
    assert r.tokens_scored == 7 and r.tokens_unscored == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        score_text(uniform_model(3), [1, 2], n_bytes=0, bos_policy="none")
    with pytest.raises(ValueError):
        score_text(uniform_model(3), [1, 2], n_bytes=2, bos_policy="first")
    with pytest.raises(ValueError):
        plan_windows(10, window=4, stride=5)


# ----------------------------------------------------------------------------- issue 11.5 / 11.4
def recording_bigram(table):
    """A bigram model that also records every input window it is given."""
    seen = []

    def fn(ids):
        seen.extend(ids.tolist())
        return torch.log(table)[ids]

    return fn, seen


# P(next | prev) over a 4-token vocabulary (0 = BOS); all distinct, so a wrong pair changes the sum
TABLE = torch.tensor([[0.1, 0.2, 0.3, 0.4],
                      [0.4, 0.1, 0.3, 0.2],
                      [0.25, 0.25, 0.1, 0.4],
                      [0.3, 0.45, 0.15, 0.1]])


def _nll(pairs):
    return -sum(math.log(TABLE[a, b].item()) for a, b in pairs)


def test_every_scores_the_first_text_token_after_its_bos():
    ids = [1, 2, 3, 1, 2, 3, 1]
    fn, seen = recording_bigram(TABLE)
    r = score_text(fn, ids, n_bytes=14, window=4, stride=3, bos_policy="every", bos_token_id=0, batch_size=1)
    # by hand: windows [BOS 1 2] (the text's own BOS), [BOS 3 1 2], [BOS 3]; scored pairs are
    # BOS->1, 1->2, 2->3 | 3->1, 1->2, 2->3 | 3->1: every text token once, the first from BOS
    assert sorted(seen, key=len) == sorted([[0, 1, 2], [0, 3, 1, 2], [0, 3]], key=len)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 1), (1, 2), (2, 3), (3, 1)]
    assert r.tokens_scored == 7 and r.tokens_unscored == 0
    assert r.nll_nats == pytest.approx(_nll(pairs), rel=1e-6)
    assert r.n_bytes == r.text_bytes == 14
    assert r.bits_per_byte == pytest.approx(_nll(pairs) / math.log(2) / 14, rel=1e-6)


def test_first_scores_every_text_token_over_all_bytes():
    ids = [2, 2, 1, 3]
    fn, seen = recording_bigram(TABLE)
    r = score_text(fn, ids, n_bytes=9, window=8, bos_policy="first", bos_token_id=0)
    assert seen == [[0, 2, 2, 1]]
    pairs = [(0, 2), (2, 2), (2, 1), (1, 3)]
    assert (r.tokens_scored, r.tokens_unscored, r.n_bytes) == (4, 0, 9)
    assert r.bits_per_byte == pytest.approx(_nll(pairs) / math.log(2) / 9, rel=1e-6)


def test_none_divides_by_the_bytes_of_the_scored_span():
    ids = [2, 2, 1, 3]
    fn, seen = recording_bigram(TABLE)
    r = score_text(fn, ids, n_bytes=9, window=8, bos_policy="none", unscored_bytes=4)
    assert seen == [[2, 2, 1]]
    pairs = [(2, 2), (2, 1), (1, 3)]
    assert (r.tokens_scored, r.tokens_unscored, r.n_bytes, r.text_bytes) == (3, 1, 5, 9)
    assert r.bits_per_byte == pytest.approx(_nll(pairs) / math.log(2) / 5, rel=1e-6)
    with pytest.raises(ValueError, match="pass unscored_bytes"):
        score_text(fn, ids, n_bytes=9, window=8, bos_policy="none")


def test_window_capped_at_the_model_context_and_said():
    ids = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    fn, seen = recording_bigram(TABLE)
    r = score_text(fn, ids, n_bytes=10, window=8, stride=8, bos_policy="first", bos_token_id=0, context=4)
    assert max(len(w) for w in seen) == 4
    assert (r.window, r.stride, r.window_requested) == (4, 4, 8)
    assert r.tokens_scored == 10
    assert r.nll_nats == pytest.approx(_nll(zip([0] + ids[:-1], ids)), rel=1e-6)
    assert score_text(fn, ids, n_bytes=10, window=4, bos_policy="first", bos_token_id=0, context=4).window_requested is None
