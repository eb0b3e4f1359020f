"""FLOP counting, the matmul peak, the split by document, the BPE tokenizer, sharded windows."""

import pytest
import torch

from moorelab.errors import DataError
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.train import TokenWindows
from moorelab.train.corpus import Document, document_stream, split_documents, train_bpe_tokenizer
from moorelab.train.flops import measure_matmul_peak, mfu, non_embedding_parameters, training_flop_per_token


def test_flop_per_token_is_6n_plus_attention():
    cfg = TransformerConfig(family="llama", vocab_size=100, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                            d_ff=24, max_position_embeddings=64, tie_word_embeddings=False)
    m = Transformer(cfg)
    # per layer: q 16x16, k 16x8, v 16x8, o 16x16, gate/up 16x24 x2, down 24x16, two norms of 16
    per_layer = 256 + 128 + 128 + 256 + 3 * 384 + 32
    n = 2 * per_layer + 16  # + final norm; embedding and (untied) output layer excluded
    assert non_embedding_parameters(m) == n
    assert training_flop_per_token(m, 32) == 6 * n + 6 * 2 * 32 * 16
    assert mfu(1e6, 100.0, 1e9, processes=2) == pytest.approx(0.05)


def test_matmul_peak_is_measured():
    p = measure_matmul_peak(n=64, repeats=3, min_seconds=0.0)
    assert p.flop_per_s > 1e6 and p.n == 64 and p.repeats == 3 and p.threads == torch.get_num_threads()
    assert "torch.mm 64x64" in p.describe()


def test_split_by_document_is_disjoint_and_seeded():
    docs = [Document(f"d{i}", f"text {i}\n" * 10) for i in range(20)]
    s = split_documents(docs, 0.1, seed=3)
    assert len(s.validation) == 2 and len(s.train) == 18
    assert not {d.name for d in s.train} & {d.name for d in s.validation}
    assert split_documents(docs, 0.1, seed=3) == s
    assert split_documents(docs, 0.1, seed=4).validation != s.validation
    assert "validation 2 documents" in s.describe()
    with pytest.raises(DataError, match="at least 2"):
        split_documents(docs[:1])


def test_bpe_tokenizer_round_trips_and_separates_documents():
    tok = train_bpe_tokenizer(["to be or not to be, that is the question\n" * 50], 300)
    assert 257 < tok.get_vocab_size() <= 300 and tok.token_to_id("<|endoftext|>") == 0  # a short text runs out of merges
    ids = tok.encode("to be, or not").ids
    assert tok.decode(ids) == "to be, or not"
    stream = document_stream(tok, [Document("a", "to be"), Document("b", "not")], 0)
    assert stream[0] == 0 and stream.count(0) == 2
    with pytest.raises(DataError):
        train_bpe_tokenizer(["x"], 100)


def test_sharded_windows_are_disjoint_parts_of_the_global_batch():
    ids = list(range(1000))
    full = TokenWindows(ids, 9, batch_size=4, seed=1)(5, 0)
    parts = [TokenWindows(ids, 9, batch_size=4, seed=1, shard=(r, 2))(5, 0) for r in range(2)]
    assert torch.equal(torch.cat(parts), full)
    with pytest.raises(DataError, match="multiple of 3"):
        TokenWindows(ids, 9, batch_size=4, shard=(0, 3))
