"""Helpers shared by the pruning tests: a tiny Transformer with weights large enough that
units matter, and fixed input and calibration token ids."""

import torch

from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer


def tiny(seed=0, n_heads=6, n_kv_heads=2, family="llama"):
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = TransformerConfig(family="gpt2", vocab_size=40, d_model=24, n_layers=2, n_heads=n_heads, head_dim=4,
                                d_ff=32, max_position_embeddings=64, norm="layernorm", activation="gelu_tanh",
                                position="learned", attn_bias=True, mlp_bias=True)
    else:
        cfg = TransformerConfig(vocab_size=40, d_model=24, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                head_dim=4, d_ff=32, max_position_embeddings=64)
    m = Transformer(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so units matter
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


X = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(5))


CAL = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(6))
