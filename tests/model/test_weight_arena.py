"""The decode weight arena: weights moved into one block in reading order, same objects and values,
no alias broken, and the fused decode's numbers unchanged by it."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from moorelab import kernels
from moorelab.improve.api import ApplyContext, apply, parse_spec
from moorelab.model import decode
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import KVCache, Transformer
from moorelab.model.weight_arena import ALIGN, huge_page_bytes, huge_page_tensor, pack_decode_weights
from model_helpers import scramble

HUGE = 2 << 20


def _weights():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(100, 7, generator=g), torch.randint(-8, 8, (33,), dtype=torch.int8, generator=g),
            torch.nn.Parameter(torch.randn(5, generator=g)), torch.randn(3, 3, generator=g).half()]


def test_packs_in_order_aligned_with_the_same_objects_and_values():
    ts = _weights()
    before = [t.detach().clone() for t in ts]
    ids = [id(t) for t in ts]
    nbytes = pack_decode_weights([ts[0], ts[1], ts[2], ts[0], ts[3]])  # ts[0] twice: packed once
    # 2800, 33, 20 and 18 bytes, each rounded up to 64
    assert nbytes == 2816 + 64 + 64 + 64
    assert [id(t) for t in ts] == ids and type(ts[2]) is torch.nn.Parameter and ts[2].requires_grad
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(ts, before))
    assert ts[0].data_ptr() % HUGE == 0
    assert [t.data_ptr() - ts[0].data_ptr() for t in ts] == [0, 2816, 2880, 2944]
    assert all(t.data_ptr() % ALIGN == 0 for t in ts)
    assert pack_decode_weights(ts) == 0  # already in place
    # another order is packed again
    assert pack_decode_weights([ts[1], ts[0]]) == 64 + 2816 and ts[0].data_ptr() - ts[1].data_ptr() == 64


def test_a_tensor_someone_else_views_is_left_where_it_is():
    a, b = torch.randn(10, 4), torch.randn(6)
    row = a[3]  # an alias: moving a would cut it off
    ptr = a.data_ptr()
    assert pack_decode_weights([a, b]) == 64  # b alone (24 bytes, rounded up)
    assert a.data_ptr() == ptr and row.data_ptr() == ptr + 3 * 4 * 4
    a[3, 0] = 7.0
    assert row[0].item() == 7.0
    alias = b.data  # a .data alias holds the storage too
    assert pack_decode_weights([b, a]) == 0 and alias.data_ptr() == b.data_ptr()
    assert pack_decode_weights([torch.randn(4, 4).t()]) == 0  # not contiguous


def test_packed_tensors_save_copy_and_train_as_independent_tensors(tmp_path):
    ts = _weights()
    with torch.inference_mode():  # as the fused decode runs: the copies must not be inference tensors
        pack_decode_weights(ts)
    assert not any(t.is_inference() for t in ts)
    # safetensors refuses tensors that share a storage: each packed tensor has its own
    save_file({f"t{i}": t.detach() for i, t in enumerate(ts)}, str(tmp_path / "w.safetensors"))
    back = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(back[f"t{i}"], t) for i, t in enumerate(ts))
    p = ts[2]
    q = copy.deepcopy(p)
    assert q.data_ptr() != p.data_ptr() and torch.equal(q, p)
    (p * 2).sum().backward()
    assert torch.equal(p.grad, torch.full_like(p, 2.0))


def tiny() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(family="llama", vocab_size=61, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
                                      head_dim=16, d_ff=96, max_position_embeddings=128, rope_theta=100.0)).eval()
    scramble(m, std=0.25)
    return m


def _decode(m, steps=(3, 9, 27, 4, 50, 1)):
    cache, outs = KVCache(), []
    with torch.inference_mode():
        m(torch.tensor([[5, 7, 11]]), cache=cache)
        for t in steps:
            outs.append(decode.forward(m, torch.tensor([[t]]), cache=cache)[0, -1])
            assert m.last_decode_path == "fused"
    return torch.stack(outs)


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
@pytest.mark.parametrize("spec", [None, "int8-dynamic:activation_block=32", "int4:group_size=32,activation_bits=8"])
def test_fused_decode_packs_the_weights_it_reads_and_gives_the_same_logits(spec, tmp_path):
    m = tiny()
    if spec:
        apply(m, parse_spec(spec), ApplyContext())
    ref = copy.deepcopy(m)
    ptrs = {n: t.data_ptr() for n, t in ref.state_dict().items()}
    want = _decode(ref)
    assert {n: t.data_ptr() for n, t in ref.state_dict().items()} == ptrs  # off by default: nothing moved
    m.decode_weight_arena = True  # the first fused step packs
    got = _decode(m)
    assert torch.equal(got, want)  # same values, same kernels, same thread split: bit for bit
    # the q/k/v group's weights lie one after the other, then their scales; the layers follow in order
    b0, b1 = m.blocks[0], m.blocks[1]
    w = "weight" if spec is None else "qweight"
    q, k, v = (getattr(getattr(b0.attn, n), w) for n in ("q_proj", "k_proj", "v_proj"))
    aligned = lambda t: -(-t.numel() * t.element_size() // ALIGN) * ALIGN  # noqa: E731
    assert k.data_ptr() == q.data_ptr() + aligned(q) and v.data_ptr() == k.data_ptr() + aligned(k)
    assert b0.attn_norm.weight.data_ptr() + aligned(b0.attn_norm.weight) == q.data_ptr()
    assert b0.attn_norm.weight.data_ptr() < b1.attn_norm.weight.data_ptr() < m.final_norm.weight.data_ptr()
    # the Python path reads the moved weights too (quantized layers cache their buffers' addresses:
    # the fused decode tells them the buffers moved), at decode and at prefill sizes
    long = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        for ids in (long[:, :3], long):
            assert torch.equal(m(ids), ref(ids))
    # a second generation (a new cache, a new plan) finds them in place and copies nothing
    before = {n: t.data_ptr() for n, t in m.state_dict().items()}
    assert torch.equal(_decode(m), want)
    assert {n: t.data_ptr() for n, t in m.state_dict().items()} == before
    # the packed model saves through safetensors as any other
    save_model(m, str(tmp_path / "m.safetensors"))
    fresh = copy.deepcopy(ref)
    for t in fresh.state_dict().values():
        t.zero_()
    load_model(fresh, str(tmp_path / "m.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ref.state_dict().values()))


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_prepare_decode_packs_ahead_of_the_first_step_and_only_for_the_fused_path():
    from moorelab.model.fused_decode import prepare_decode

    m = tiny()
    m.fused_decode = False
    ptrs = [p.data_ptr() for p in m.parameters()]
    assert prepare_decode(m) == "model.fused_decode is False"
    assert [p.data_ptr() for p in m.parameters()] == ptrs
    m.fused_decode = True
    assert prepare_decode(m) is None
    assert m.blocks[0].attn_norm.weight.data_ptr() % HUGE == 0  # the first weight a step reads
    packed = [p.data_ptr() for p in m.parameters()]
    assert packed != ptrs
    assert m.decode_weight_arena
    ref = copy.deepcopy(m)
    ref.decode_weight_arena = False
    assert torch.equal(_decode(m), _decode(ref))
    assert [p.data_ptr() for p in m.parameters()] == packed  # the steps found them in place


def test_a_tensor_left_out_of_a_new_pack_does_not_keep_the_old_block_mapped():
    import gc

    from moorelab.model import weight_arena

    a, b, c = torch.randn(1000), torch.randn(1000), torch.randn(10)
    want = [t.clone() for t in (a, b, c)]
    pack_decode_weights([a, b, c])
    first = weight_arena._ARENAS[-1][2]
    assert first() is not None and c.data_ptr() % HUGE != 0
    new = torch.randn(50)
    pack_decode_weights([a, new], others=[a, b, c, new])  # b and c are no longer read
    gc.collect()
    assert first() is None  # b and c went back to the heap, a to the new block: the old one is unmapped
    assert all(torch.equal(t, w) for t, w in zip((a, b, c), want))
    assert new.data_ptr() == a.data_ptr() + 4032  # 4,000 bytes rounded up to 64


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_quantizing_a_packed_tied_model_frees_the_float_block():
    import gc

    from moorelab.model import weight_arena
    from moorelab.model.fused_decode import prepare_decode

    m = tiny()
    assert m.lm_head.weight is m.embed.weight  # tied: the head is read from the embedding's block
    prepare_decode(m)
    first = weight_arena._ARENAS[-1][2]
    ref = copy.deepcopy(m)
    for mm in (m, ref):
        apply(mm, parse_spec("int8"), ApplyContext())  # the head becomes a quantized copy
    assert type(m.lm_head) is not torch.nn.Linear
    assert torch.equal(_decode(m), _decode(ref))  # the first step re-packs
    gc.collect()
    assert first() is None  # the embedding, no longer read by a step, left the old block


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
@pytest.mark.parametrize("how", ["mmap fails", "less available than the block"])
def test_no_memory_for_the_block_decodes_from_where_the_weights_are(monkeypatch, how):
    from moorelab.model import weight_arena
    from moorelab.model.fused_decode import prepare_decode

    def no_map(*a, **k):
        raise OSError(12, "Cannot allocate memory")

    with pytest.raises(OSError, match="to pack"):
        monkeypatch.setattr(weight_arena, "_available_bytes", lambda: 1000)
        pack_decode_weights([torch.randn(1000)])
    monkeypatch.undo()

    m = tiny()
    apply(m, parse_spec("int4:group_size=32"), ApplyContext())
    ref = copy.deepcopy(m)
    ptrs = [t.data_ptr() for t in m.state_dict().values()]
    if how == "mmap fails":
        monkeypatch.setattr(weight_arena.mmap, "mmap", no_map)
    else:
        monkeypatch.setattr(weight_arena, "_available_bytes", lambda: 4096)
    assert prepare_decode(m) is None
    assert [t.data_ptr() for t in m.state_dict().values()] == ptrs
    assert torch.equal(_decode(m), _decode(ref))



_FAULTS = """
import ctypes, sys, resource
# 4 KB pages for this process (PR_SET_THP_DISABLE): page counts independent of the host's THP setting
if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
    raise SystemExit("prctl(PR_SET_THP_DISABLE) failed, errno %d" % ctypes.get_errno())
if sys.argv[1] == "prepared":
    import torch
    from moorelab.model.fused_decode import prepare_decode
    from moorelab.model.transformer import Transformer
    from moorelab.model.config import TransformerConfig
    prepare_decode(Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                                 max_position_embeddings=16, family="llama")).eval())
if sys.argv[1] == "held":
    from moorelab.model.weight_arena import hold_freed_heap
    if not hold_freed_heap():
        print("no-mallopt")
        raise SystemExit
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = []
for _ in range(3):  # a 12 MiB block (an activation's size) made, written and freed, three times
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(12 << 20)
    libc.memset(p, 1, 12 << 20)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(" ".join(map(str, faults)))
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc only")
def test_after_prepare_decode_later_passes_reuse_the_first_ones_memory():
    # a fresh interpreter each, so no earlier test has moved malloc's thresholds. The mechanism, at
    # glibc's level: a 12 MiB block malloc'd, written and freed three times. Under glibc's defaults
    # the first is its own mapping (unmapped on free, which raises the dynamic threshold) and the
    # second comes from the heap, faulted in again (~2,300 pages; 2026-12-02); with the thresholds
    # held (hold_freed_heap, alone or as prepare_decode sets it) the second reuses the first's pages.
    # (A tiny model's forward passes were counted here before: glibc's dynamic threshold made their
    # later-pass faults vary from 0 to thousands in the plain case, 1 run in 5 failing.)
    import subprocess
    import sys

    out = {how: subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True, text=True,
                               check=True).stdout.split("\n")[-2] for how in ("plain", "held", "prepared")}
    if out["held"] == "no-mallopt":
        pytest.skip("this C library has no glibc mallopt: hold_freed_heap changes nothing here")
    second = {k: int(v.split()[1]) for k, v in out.items()}
    assert second["plain"] >= 1024, out  # the test can tell them apart (glibc malloc, 4 KB pages)
    assert second["held"] <= 16, out  # the malloc setting alone
    assert second["prepared"] <= 16, out  # and as prepare_decode sets it



def test_huge_page_bytes_counts_the_mappings_over_the_tensor_clipped_to_it(tmp_path):
    t = torch.zeros(1024)  # 4,096 bytes; the smaps below are written around its address
    lo = t.data_ptr()
    hi = lo + 4096
    smaps = tmp_path / "smaps"
    smaps.write_text(
        f"{lo - 8192:x}-{lo - 4096:x} rw-p 00000000 00:00 0\nAnonHugePages:      4 kB\n"  # before it: not counted
        f"{lo - 4096:x}-{lo + 2048:x} rw-p 00000000 00:00 0\nRss: 8 kB\nAnonHugePages:      4 kB\n"  # 2,048 bytes of it
        f"{lo + 2048:x}-{hi + 4096:x} rw-p 00000000 00:00 0\nAnonHugePages:      0 kB\n"
    )
    # the first overlapping mapping's 4,096 huge-page bytes clipped to its 2,048-byte overlap
    assert huge_page_bytes(t, smaps=str(smaps)) == 2048
    assert huge_page_bytes(t, smaps=str(tmp_path / "absent")) is None


def test_huge_page_tensor_is_zeroed_aligned_and_refuses_nothing():
    t = huge_page_tensor(3 << 20, dtype=torch.int8)
    assert t.dtype is torch.int8 and t.numel() == 3 << 20 and t.data_ptr() % (2 << 20) == 0
    assert int(t.abs().sum()) == 0
    with pytest.raises(ValueError, match="numel"):
        huge_page_tensor(0)


def test_huge_page_bytes_of_several_tensors_counts_each_mapping_once(tmp_path):
    a, b = torch.zeros(1024), torch.zeros(1024)
    smaps = tmp_path / "smaps"
    lines = ""
    for t in (a, b):
        lo = t.data_ptr()
        lines += f"{lo:x}-{lo + 4096:x} rw-p 00000000 00:00 0\nAnonHugePages:      8 kB\n"
    smaps.write_text(lines)
    assert huge_page_bytes([a, b, a], smaps=str(smaps)) == 8192  # each clipped to its 4,096; a once


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_decode_weights_are_what_prepare_decode_packs_in_reading_order():
    from moorelab.model.fused_decode import decode_weights, prepare_decode

    m = tiny()
    apply(m, parse_spec("int4:group_size=32"), ApplyContext())
    ws = decode_weights(m)
    assert len({id(t) for t in ws}) == len(ws)  # each once
    b0 = m.blocks[0]
    assert ws[0] is b0.attn_norm.weight and ws[1] is b0.attn.q_proj.qweight  # the order a step reads
    assert any(t is m.blocks[-1].ffn.down_proj.qweight for t in ws)
    assert any(t is m.lm_head.qweight for t in ws[-4:])  # the output layer last
    assert prepare_decode(m) is None
    ptrs = [t.data_ptr() for t in ws]
    assert ptrs == sorted(ptrs) and ptrs[0] % HUGE == 0  # packed one after the other from a 2 MiB boundary
    m.fused_decode = False
    assert decode_weights(m) == []


def test_tensor_spans_merge_shared_and_touching_bytes_and_skip_empty_tensors():
    from moorelab.model.weight_arena import tensor_spans

    t = torch.zeros(1024)  # 4,096 bytes
    lo = t.data_ptr()
    assert tensor_spans(t) == [(lo, lo + 4096)]
    # a view inside it, the two halves touching, the tensor twice: one span; an empty tensor: none
    assert tensor_spans([t[512:], t[:512], t, t[100:200], torch.zeros(0)]) == [(lo, lo + 4096)]
    u = torch.zeros(16)
    assert sorted(tensor_spans([u, t])) == tensor_spans([u, t]) and len(tensor_spans([u, t])) == 2


def test_smaps_mappings_reads_each_mapping_with_its_fields(tmp_path):
    from moorelab.model.weight_arena import smaps_mappings

    f = tmp_path / "smaps"
    f.write_text("1000-3000 rw-p 00000000 00:00 0 \n"
                 "Size:                  8 kB\nAnonHugePages:         4 kB\nVmFlags: rd wr hg\n\n"
                 "7f00-8000 r--p 00000000 08:01 42 /lib/x.so\nAnonHugePages:         0 kB\n")
    got = list(smaps_mappings(str(f)))
    assert [(a, b) for a, b, _ in got] == [(0x1000, 0x3000), (0x7F00, 0x8000)]
    assert got[0][2]["AnonHugePages:"] == "4 kB" and got[0][2]["VmFlags:"].split() == ["rd", "wr", "hg"]
    assert got[1][2] == {"AnonHugePages:": "0 kB"}
    f.write_text("zz-10 rw-p\n")
    with pytest.raises(ValueError):
        list(smaps_mappings(str(f)))
