"""llama.cpp helpers that need no llama.cpp binary: output parsers, the perplexity rule of
llama-perplexity in our scorer, the build cache's marker. (Running the tools is the benchmark's
job, benchmarks/bench_vs_llamacpp.py; CI never builds llama.cpp, it takes too long.)"""

import math

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.measure import llamacpp
from moorelab.measure.quality import perplexity_llamacpp_rule


def test_parse_perplexity_and_batched_bench_and_bench_json():
    log = ("perplexity: tokenizing the input ..\nperplexity: calculating perplexity over 9 chunks, n_ctx=512, "
           "batch_size=512\n[1]12.3,[2]13.1,\nFinal estimate: PPL = 12.8734 +/- 0.41234\n")
    assert llamacpp.parse_perplexity(log) == {"ppl": 12.8734, "ppl_err": 0.41234, "chunks": 9, "n_ctx": 512}
    with pytest.raises(Exception, match="Final estimate"):
        llamacpp.parse_perplexity("nothing")
    table = ("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n"
             "|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n"
             "|   128 |     32 |    4 |    640 |    1.000 |   512.00 |    0.500 |   256.00 |    1.500 |   426.67 |\n")
    assert llamacpp.parse_batched_bench(table) == [{"pp": 128, "tg": 32, "b": 4, "s_pp": 512.0, "s_tg": 256.0,
                                                    "s": 426.67}]
    rows = llamacpp.parse_bench_json('[{"n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": 550.5}]')
    assert rows[0]["avg_ts"] == 550.5


def test_binaries_need_the_ready_marker_of_this_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    assert llamacpp.binaries() is None and "not built" in llamacpp.status()
    b = tmp_path / "llama.cpp" / "build-bin"
    b.mkdir(parents=True)
    for t in llamacpp.TOOLS:
        (b / t).write_text("#!/bin/sh\n")
        (b / t).chmod(0o755)
    (b / "libggml.so").write_text("")
    llamacpp.install(b)
    assert set(llamacpp.binaries()) == set(llamacpp.TOOLS)
    assert (tmp_path / "llama.cpp" / "bin" / "libggml.so").is_file()
    (tmp_path / "llama.cpp" / "READY").write_text("1.0\n")
    assert llamacpp.binaries() is None
    # a build of this version made with other cmake options (an older moorelab's) is not this one
    (tmp_path / "llama.cpp" / "READY").write_text(llamacpp.VERSION + " -DGGML_NATIVE=OFF\n")
    assert llamacpp.binaries() is None
    (tmp_path / "llama.cpp" / "READY").write_text(llamacpp.marker() + "\n")
    assert set(llamacpp.binaries()) == set(llamacpp.TOOLS)


def test_an_avx2_build_has_its_own_marker_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    b = tmp_path / "build-bin"
    b.mkdir()
    for t in llamacpp.TOOLS:
        (b / t).write_text("#!/bin/sh\n")
        (b / t).chmod(0o755)
    llamacpp.install(b, isa="avx2")
    assert llamacpp.binaries() is None and "not built" in llamacpp.status()
    got = llamacpp.binaries("avx2")
    assert got == {t: tmp_path / "llama.cpp" / "bin-avx2" / t for t in llamacpp.TOOLS}
    assert (tmp_path / "llama.cpp" / "READY-avx2").read_text().strip() == llamacpp.marker("avx2")
    assert "-DGGML_NATIVE=OFF" in llamacpp.status("avx2") and "-DGGML_AVX512=OFF" in llamacpp.ISAS["avx2"]
    with pytest.raises(MoorelabError, match="isa 'avx512' is not one of"):
        llamacpp.binaries("avx512")


def test_the_native_build_leaves_out_llamacpps_amx_backend_on_a_cpu_with_amx():
    """Its AMX matmul crashed every Q8_0 run on an AMX Xeon (llama.cpp #20824); -mno-amx-* wins
    over -march=native in gcc, whatever the order; elsewhere the options stay as they were (gcc
    before 11 rejects -mno-amx-*)."""
    import platform

    from moorelab.kernels.build import cpu_flags

    opts = llamacpp.ISAS["native"]
    assert opts[0] == "-DGGML_NATIVE=ON"
    if platform.machine() == "x86_64" and "amx_tile" in cpu_flags():
        for var in ("C", "CXX"):
            assert f"-DCMAKE_{var}_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in opts
    else:
        assert opts == ["-DGGML_NATIVE=ON"]
    assert llamacpp.marker("native").split() == [llamacpp.VERSION, *" ".join(opts).split()]


def test_run_measured_reads_the_childs_cpu_share():
    r = llamacpp.run_measured(["python3", "-c", "s=0\nfor i in range(3_000_000): s+=i\nprint(s)"], threads=1)
    assert r.stdout.strip() == str(sum(range(3_000_000)))
    assert r.cpu_s > 0.05 and 0 < r.cpu_share <= 1
    with pytest.raises(Exception, match="exited 3"):
        llamacpp.run_measured(["python3", "-c", "import sys; sys.exit(3)"], threads=1)


def test_perplexity_rule_scores_the_second_half_of_non_overlapping_chunks():
    V = 7
    seen = []

    def logits_fn(x):  # uniform except a strong guess "next = current + 1 mod V"
        seen.append(x[0].tolist())
        out = torch.zeros(1, x.shape[1], V)
        out[0, torch.arange(x.shape[1]), (x[0] + 1) % V] = math.log(99.0)
        return out

    ids = [i % V for i in range(21)]  # 21 tokens, n_ctx 8: 2 chunks, 5 tail tokens dropped
    r = perplexity_llamacpp_rule(logits_fn, ids, 8, bos_token_id=6, decode=lambda t: "x" * len(t))
    assert r.chunks == 2 and r.tokens_scored == 2 * 3  # positions 4..6 predict tokens 5..7
    assert seen[0][0] == 6 and seen[1][0] == 6 and seen[1][1:] == ids[9:16]  # BOS replaces each chunk's first
    p = 99.0 / (99.0 + V - 1)
    assert r.perplexity == pytest.approx(1 / p)
    assert r.scored_bytes == 6 and r.bits_per_byte == pytest.approx(-math.log2(p), rel=1e-5)
    with pytest.raises(ValueError, match="2\\*n_ctx"):
        perplexity_llamacpp_rule(logits_fn, ids[:15], 8)
