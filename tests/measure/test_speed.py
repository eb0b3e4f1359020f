"""The speed protocol: ratios with intervals from hand-made rounds, its bookkeeping with scripted
CPU shares, and a real competing process that it must catch (assertions on the bookkeeping, never
on absolute speeds, so the test holds on a quiet and on a busy machine)."""

from __future__ import annotations

import copy
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from moorelab.measure import speed
from moorelab.measure.speed import (
    CPU_SHARE_MIN,
    CpuShareClock,
    SpeedVariant,
    invert_ratio,
    measure_interleaved,
    median_interval_rank,
    min_pairs,
    paired_ratio,
)
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import KVCache, Transformer


# --------------------------------------------------------------------------- ratio and interval
def test_order_statistic_interval_ranks_and_coverage():
    # coverage of [x_(k), x_(n+1-k)] is 1 - 2 P(Bin(n, 1/2) <= k-1)
    assert median_interval_rank(5, 0.90) == (1, pytest.approx(1 - 2 / 32))
    assert median_interval_rank(8, 0.90) == (2, pytest.approx(1 - 2 * 9 / 256))
    assert median_interval_rank(11, 0.90) == (3, pytest.approx(1 - 2 * 67 / 2048))
    assert median_interval_rank(4, 0.90) == (1, pytest.approx(0.875))  # falls short: n too small
    assert min_pairs(0.90) == 5 and min_pairs(0.95) == 6


def test_ratio_whose_interval_contains_one_is_no_measurable_difference():
    base = {i: 10.0 for i in range(5)}
    r = paired_ratio({0: 9.5, 1: 10.8, 2: 11.0, 3: 10.4, 4: 10.9}, base)
    assert r["value"] == pytest.approx(1.08) and r["ci"] == pytest.approx([0.95, 1.10])
    assert r["verdict"] == "no measurable difference" and r["pairs"] == 5
    assert r["confidence"] == pytest.approx(0.9375)


def test_measurable_ratio_pairs_rounds_and_inverts_for_cost():
    # the baseline's round 2 was lost: 6 variant rounds, 5 pairs; ratios 2.0, 2.2, 2.5, 2.4, 2.1
    var = {0: 20.0, 1: 22.0, 2: 99.0, 3: 25.0, 4: 24.0, 5: 21.0}
    base = {0: 10.0, 1: 10.0, 3: 10.0, 4: 10.0, 5: 10.0}
    r = paired_ratio(var, base)
    assert r["pairs"] == 5 and r["value"] == pytest.approx(2.2) and r["ci"] == pytest.approx([2.0, 2.5])
    assert r["verdict"] == "higher"
    cost = invert_ratio(r)
    assert cost["value"] == pytest.approx(1 / 2.2) and cost["ci"] == pytest.approx([1 / 2.5, 1 / 2.0])
    assert cost["verdict"] == "lower"
    slower = paired_ratio({i: 8.0 + 0.1 * i for i in range(5)}, {i: 10.0 for i in range(5)})
    assert slower["verdict"] == "lower" and slower["ci"][1] < 1


def test_too_few_pairs_claim_nothing():
    r = paired_ratio({i: 20.0 for i in range(4)}, {i: 10.0 for i in range(4)})
    assert r["value"] is None and r["ci"] is None and r["verdict"].startswith("not claimed")
    assert invert_ratio(r)["value"] is None


# --------------------------------------------------------------------------- bookkeeping, scripted shares
def _fake(name):
    return SpeedVariant(name, lambda ids: torch.zeros(1, ids.shape[1], 3),
                        lambda ids, cache: torch.zeros(1, ids.shape[1], 3), list)


def test_disturbed_measurements_are_excluded_remeasured_and_counted(monkeypatch):
    # shares by measurement (prefill, decode), in protocol order; variant "b" is disturbed in
    # its first two tries of round 0 and "c" in every try: "c" must be flagged, "b" not
    script = {"a": [], "b": [0.5, 0.97, 0.98, 0.6], "c": [0.4] * 100}
    current = {}

    class Clock:
        def __init__(self):
            self.last = None

        def start(self):
            pass

        def stop(self):
            seq = script[current["name"]]
            self.last = seq.pop(0) if seq else 0.99
            return self.last

    monkeypatch.setattr(speed, "CpuShareClock", Clock)
    variants = [_fake("a"), _fake("b"), _fake("c")]
    for v in variants:
        f = v.forward

        def fwd(ids, f=f, name=v.name):
            current["name"] = name
            return f(ids)
        v.forward = fwd
    seen = []
    res = measure_interleaved(variants, torch.zeros(1, 40, dtype=torch.long), prefill_tokens=8, decode_tokens=3,
                              rounds=5, max_tries=3, retry_pause_s=0.0, on_measurement=lambda n, rec: seen.append((n, rec)))
    a, b, c = res.variants
    assert (a.rounds_kept, a.measurements, a.remeasured, a.disturbed) == (5, 5, 0, False)
    # b, round 0, shares (prefill, decode): try 1 (0.5, 0.97) out, try 2 (0.98, 0.6) out, try 3 kept
    assert [(r["round"], r["try"], r["kept"]) for r in b.tries[:3]] == [(0, 1, False), (0, 2, False), (0, 3, True)]
    assert (b.rounds_kept, b.measurements, b.remeasured, b.disturbed_measurements, b.disturbed) == (5, 7, 2, 2, False)
    # c: 3 tries per round, none kept; the protocol's re-measurements are bounded
    assert c.rounds_kept == 0 and c.disturbed and c.figures_from.startswith("every try")
    assert c.measurements <= 5 * 3 and res.remeasured <= res.settings["max_remeasure"]
    assert all(not r["kept"] and min(r["prefill"]["cpu_share"], r["decode"]["cpu_share"]) < CPU_SHARE_MIN for r in c.tries)
    # figures come from kept rounds only; no ratio is claimed for the flagged variant
    assert b.decode_tokens_per_s == pytest.approx(statistics.median(r["decode"]["tokens_per_s"] for r in b.tries if r["kept"]))
    assert res.ratios["c"]["decode_tokens_per_s"]["value"] is None
    assert res.ratios["b"]["decode_tokens_per_s"]["pairs"] == 5
    assert len(seen) == a.measurements + b.measurements + c.measurements
    # the order rotates: round 1 starts with "b"
    assert [n for n, rec in seen if rec["round"] == 1 and rec["try"] == 1][0] == "b"


def test_disturbed_baseline_claims_no_ratio(monkeypatch):
    class Clock:
        last = 0.3

        def start(self):
            pass

        def stop(self):
            return 0.3

    monkeypatch.setattr(speed, "CpuShareClock", Clock)
    res = measure_interleaved([_fake("base"), _fake("x")], torch.zeros(1, 40, dtype=torch.long), prefill_tokens=8,
                              decode_tokens=2, rounds=5, max_tries=2, retry_pause_s=0.0)
    assert all(v.disturbed for v in res.variants)
    assert res.ratios["x"]["decode_tokens_per_s"]["verdict"].startswith("not claimed: the baseline")


# --------------------------------------------------------------------------- a real competitor
LLAMA = dict(family="llama", vocab_size=256, d_model=192, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=48, d_ff=512,
             max_position_embeddings=256, rope_theta=100.0)
SPIN = "while True: pass"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_protocol_catches_a_competing_process():
    """Two spinning processes share one CPU with the measuring thread for the first measurements,
    then stop. The protocol must catch what they disturbed: excluded, re-measured, counted; the
    figures must come from undisturbed rounds only (or the variant be flagged). The CPU is pinned,
    so the disturbance is the same on a machine with 2 cores or 64."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**LLAMA)).eval()
    twin = copy.deepcopy(model)
    from moorelab.model import decode

    variants = [SpeedVariant(n, lambda ids, m=m: m(ids), lambda ids, cache, m=m: decode.forward(m, ids, cache=cache), KVCache)
                for n, m in (("model", model), ("twin", twin))]
    prompt = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    threads, affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    cpu = min(affinity)
    spinners = []
    done = []

    def stop_spinners():
        for p in spinners:
            p.kill()
            p.wait()
        spinners.clear()

    def on_measurement(name, rec):
        done.append((name, rec))
        if len(done) == 3:
            stop_spinners()

    try:
        torch.set_num_threads(1)
        os.sched_setaffinity(0, {cpu})
        # warm up outside the protocol so that the spinners overlap its first timed measurements
        measure_interleaved(variants, prompt, prefill_tokens=64, decode_tokens=4, rounds=1, max_tries=1)
        for _ in range(2):
            spinners.append(subprocess.Popen([sys.executable, "-c", SPIN]))
            os.sched_setaffinity(spinners[-1].pid, {cpu})
        time.sleep(0.5)  # the interpreters are up and spinning
        res = measure_interleaved(variants, prompt, prefill_tokens=64, decode_tokens=48, rounds=5, max_tries=3,
                                  retry_pause_s=0.05, on_measurement=on_measurement)
    finally:
        stop_spinners()
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    excluded = [rec for _, rec in done if not rec["kept"]]
    assert excluded, "the competing processes were not detected"
    for v in res.variants:
        assert v.measurements == len(v.tries) == v.rounds_kept + v.disturbed_measurements
        assert v.remeasured == sum(1 for r in v.tries if r["try"] > 1)
        for r in v.tries:
            low = min(r["prefill"]["cpu_share"], r["decode"]["cpu_share"]) < CPU_SHARE_MIN
            assert r["kept"] != low
        if v.disturbed:
            assert v.rounds_kept < min_pairs(0.90)
        else:
            kept = [r["decode"]["tokens_per_s"] for r in v.tries if r["kept"]]
            assert v.decode_tokens_per_s == pytest.approx(statistics.median(kept))
            assert v.cpu_share >= CPU_SHARE_MIN
    assert res.remeasured == sum(v.remeasured for v in res.variants) >= 1


def test_cpu_share_clock_reads_about_one_for_a_busy_thread():
    clock = CpuShareClock()
    clock.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        pass
    share = clock.stop()
    assert 0 < share <= 1.05 and clock.last == share


def test_decode_runs_inside_the_variants_steady_block():
    import contextlib

    events = []

    @contextlib.contextmanager
    def block():
        events.append("enter")
        yield
        events.append("exit")

    def step(ids, cache):
        events.append(f"step{ids.shape[1]}")
        return torch.zeros(1, ids.shape[1], 5)

    times = speed.measure_decode(step, lambda: None, torch.zeros(1, 3, dtype=torch.long), 2, steady=block)
    assert len(times) == 2
    assert events == ["enter", "step3", "step1", "step1", "exit"]  # the prompt and every step inside
    events.clear()
    speed.measure_decode(step, lambda: None, torch.zeros(1, 3, dtype=torch.long), 1)
    assert events == ["step3", "step1"]
