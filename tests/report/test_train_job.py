"""`moorelab train`: a tiny model trained on real text, saved as a Hugging Face folder that
transformers and `moorelab run`'s loader read, TensorBoard logs read back, profile, budgets."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.report.train_job import TrainOptions, run_train_job, shakespeare_documents


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Four small documents: the first 12,000 characters of four plays."""
    d = tmp_path_factory.mktemp("texts")
    paths = []
    for doc in shakespeare_documents()[:4]:
        p = d / (Path(doc.name).stem + ".txt")
        p.write_text(doc.text[:12_000], encoding="utf-8")
        paths.append(p)
    return paths


def tiny(texts, out, **kw):
    base = dict(init="llama", d_model=32, n_layers=2, n_heads=2, context=32, text=list(texts), vocab_size=300,
                steps=4, batch=4, lr=3e-3, out=out, checkpoint_every=2, val_max_bytes=3000, val_fraction=0.25,
                threads=1)
    base.update(kw)
    return TrainOptions(**base)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_output_is_a_hf_folder_transformers_loads_with_equal_logits(texts, tmp_path, family):
    from transformers import AutoModelForCausalLM

    from moorelab.model.zoo import load_pretrained

    out = tmp_path / "run"
    result = run_train_job(tiny(texts, out, init=family))
    for f in ("config.json", "model.safetensors", "tokenizer.json", "train.json", "run.json"):
        assert (out / f).is_file(), f
    # moorelab run / improve load the folder with load_pretrained
    loaded = load_pretrained(str(out))
    assert loaded.config.family == family and loaded.config.vocab_size == 300
    assert loaded.tokenizer.token_to_id("<|endoftext|>") == 0 == loaded.config.bos_token_id
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([loaded.tokenizer.encode("Enter the king, with his train.").ids[:20]])
    with torch.no_grad():
        ours = loaded.model(ids)
        theirs = hf(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    # the model learnt something: loss falls below uniform over the vocabulary (ln 300 = 5.70)
    val = result["validation"]
    assert 0 < val["bits_per_byte"] < 8 and val["loss_nats_per_token"] < math.log(300)
    assert val["documents"] == 1 and val["bytes_scored"] <= 3000
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert result["tokens_trained"]["value"] == 4 * 4 * 32
    assert 0 < result["mfu"]["value"] < 1


def test_tensorboard_events_read_back(texts, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run_train_job(tiny(texts, out, steps=3))
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"):
        assert tag in tags, tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("val/loss")] == [3]
    assert [e.step for e in acc.Scalars("val/bits_per_byte")] == [3]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)


def test_profile_writes_a_chrome_trace_and_prints_the_top_operators(texts, tmp_path, capsys):
    from rich.console import Console

    out = tmp_path / "run"
    console = Console(width=250, force_terminal=False)
    run_train_job(tiny(texts, out, steps=3, profile=2), console=console)
    trace = json.loads((out / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert any("mm" in str(n) for n in names)  # the matmuls are in it
    printed = capsys.readouterr().out
    assert "profile of 2 step(s)" in printed and "Self CPU" in printed


def test_budget_in_tokens_and_flops(texts, tmp_path):
    from moorelab.train.corpus import steps_for_budget

    # 4 sequences x 32 tokens = 128 tokens per step
    r = run_train_job(tiny(texts, tmp_path / "a", steps=None, tokens=128 * 3 + 100))
    assert r["steps"] == {"start": 0, "end": 3}
    assert steps_for_budget(steps=None, tokens=None, flops=1e9, tokens_per_step=100, flop_per_token=1e6) == 10
    assert steps_for_budget(steps=None, tokens=None, flops=1.99e8, tokens_per_step=100, flop_per_token=1e6) == 1
    with pytest.raises(MoorelabError, match="smaller than one step"):
        steps_for_budget(steps=None, tokens=None, flops=9e7, tokens_per_step=100, flop_per_token=1e6)
    with pytest.raises(MoorelabError, match="exactly one budget"):
        steps_for_budget(steps=3, tokens=10, flops=None, tokens_per_step=100, flop_per_token=1e6)


def _cli_args(texts, out, steps, every):
    args = ["train", "--init", "llama", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--context", "32",
            "--vocab-size", "300", "--steps", str(steps), "--batch", "4", "--lr", "3e-3", "--out", str(out),
            "--checkpoint-every", str(every), "--val-max-bytes", "3000", "--val-fraction", "0.25", "--threads", "1"]
    for t in texts:
        args += ["--text", str(t)]
    return args


def _env():
    import os

    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1",
                OMP_WAIT_POLICY="PASSIVE")


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run_bit_for_bit(texts, tmp_path):
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    steps, every = 200, 5
    ref = tmp_path / "ref"
    run_train_job(tiny(texts, ref, steps=steps, checkpoint_every=every))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "moorelab", *_cli_args(texts, out, steps, every)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any(int(p.name[5:]) >= 2 * every for p in (out / "checkpoints").glob("step_*")):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed in the middle"
    done_before = len((out / "metrics.jsonl").read_text().splitlines())
    assert 2 * every <= done_before < steps and not (out / "model.safetensors").exists()

    result = run_train_job(tiny(texts, out, steps=steps, checkpoint_every=every, resume=True))
    assert 2 * every <= result["steps"]["start"] < steps and result["steps"]["end"] == steps
    a = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in b] == list(range(1, steps + 1))
    assert [m["loss"] for m in b] == [m["loss"] for m in a]  # bit for bit (JSON floats round-trip exactly)
    assert [m["grad_norm"] for m in b] == [m["grad_norm"] for m in a]
    wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # TensorBoard: the resumed run's steps replace the killed run's, none twice
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, steps + 1))
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([m["loss"] for m in a], rel=1e-6)


# ----------------------------------------------------------------------------- data parallel
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def ddp_two(texts, tmp_path_factory):
    """5 steps of 2 processes on this machine (`--nproc 2`), global batch 4 = 2 per process."""
    import subprocess

    out = tmp_path_factory.mktemp("ddp") / "two"
    r = subprocess.run([sys.executable, "-m", "moorelab", *_cli_args(texts, out, 5, 3), "--nproc", "2"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data parallel: 2 processes (DDP, gloo), 2 sequences each" in r.stdout
    return out


def test_two_processes_with_half_batches_equal_one_process_with_the_whole_batch(texts, tmp_path, ddp_two):
    one = tmp_path / "one"
    run_train_job(tiny(texts, one, steps=5, checkpoint_every=3))
    a, b = _weights(one), _weights(ddp_two)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    la = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (ddp_two / "metrics.jsonl").read_text().splitlines()]
    assert lb == pytest.approx(la, rel=1e-6)  # the logged loss is over the global batch
    assert json.loads((ddp_two / "train.json").read_text())["processes"] == 2


def test_two_single_process_nodes_equal_two_processes_on_one_node(texts, tmp_path, ddp_two):
    import subprocess

    out = tmp_path / "nodes"
    port = _free_port()
    procs = [
        # static rendezvous (fixed node count, node 0 hosts the store): with the elastic c10d
        # backend the agent whose node finished first could shut the store down while the other
        # still polled it (RendezvousConnectionError in num_nodes_waiting, a clean-clone run of
        # 2026-12-02; pytorch/pytorch#69197, torchtune#2676)
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                          "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                          "-m", "moorelab", *_cli_args(texts, out, 5, 3)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-2000:] for x in logs)
    a, b = _weights(ddp_two), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_ddp(texts, tmp_path, ddp_two):
    import shutil
    import subprocess

    out = tmp_path / "resumed"
    shutil.copytree(ddp_two, out)
    # back to the state after step 3: its checkpoint, nothing written after it
    shutil.rmtree(out / "checkpoints" / "step_000005")
    for f in ("model.safetensors", "config.json", "train.json"):
        (out / f).unlink()
    r = subprocess.run([sys.executable, "-m", "moorelab", *_cli_args(texts, out, 5, 3), "--nproc", "2", "--resume"],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step_000003 (step 3)" in r.stdout.replace("\n", "")
    a, b = _weights(ddp_two), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad input
def _cli_error(monkeypatch, capsys, args):
    from moorelab import cli

    monkeypatch.setattr(sys, "argv", ["moorelab", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    run_train_job(tiny(texts, out, steps=3, checkpoint_every=3))
    return out


def test_text_too_short_for_one_batch(monkeypatch, capsys, tmp_path):
    files = []
    for i in range(3):
        files += ["--text", str(tmp_path / f"t{i}.txt")]
        (tmp_path / f"t{i}.txt").write_text(f"A line of play number {i}.\n")
    out = tmp_path / "out"
    err = _cli_error(monkeypatch, capsys, ["train", "--context", "256", "--steps", "2", "--vocab-size", "260",
                                           "--out", str(out), *files])
    assert "fewer than one window of --context 256" in err
    assert not out.exists()


def test_budget_smaller_than_one_step(monkeypatch, capsys, texts, tmp_path):
    out = tmp_path / "out"
    args = _cli_args(texts, out, 1, 1)
    args[args.index("--steps"):args.index("--steps") + 2] = ["--tokens", "100"]
    err = _cli_error(monkeypatch, capsys, args)
    assert "--tokens 100 is smaller than one step (128 tokens)" in err
    assert not out.exists()


def test_context_longer_than_the_models(monkeypatch, capsys, texts, tmp_path, finished):
    args = _cli_args(texts, tmp_path / "out", 2, 1)
    args[args.index("--init") + 1] = str(finished)
    args[args.index("--context") + 1] = "64"
    err = _cli_error(monkeypatch, capsys, args)
    assert "--context 64 is longer than the model's 32 positions" in err


def test_resume_of_a_folder_from_another_configuration_loses_nothing(monkeypatch, capsys, texts, finished):
    before = _snapshot(finished)
    args = _cli_args(texts, finished, 3, 3) + ["--resume"]
    args[args.index("--lr") + 1] = "1e-3"
    err = _cli_error(monkeypatch, capsys, args)
    assert "trained with another configuration (train.lr: 0.003 in the folder, 0.001 now)" in err
    assert _snapshot(finished) == before
    # and a fresh run into it is refused, not overwritten
    err = _cli_error(monkeypatch, capsys, _cli_args(texts, finished, 3, 3))
    assert "already holds a training run" in err
    assert _snapshot(finished) == before


def test_nproc_larger_than_the_cores(monkeypatch, capsys, texts, tmp_path):
    err = _cli_error(monkeypatch, capsys, _cli_args(texts, tmp_path / "out", 2, 1) + ["--nproc", "999"])
    assert "--nproc 999: this machine has" in err
    assert not (tmp_path / "out").exists()


def test_corrupted_checkpoint(monkeypatch, capsys, texts, tmp_path, finished):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    weights = out / "checkpoints" / "step_000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = _snapshot(out)
    err = _cli_error(monkeypatch, capsys, _cli_args(texts, out, 3, 3) + ["--resume"])
    assert "step_000003/model.safetensors: corrupted checkpoint" in err
    assert _snapshot(out) == before


def test_fine_tune_a_saved_folder_keeps_its_tokenizer_and_continues_from_its_weights(texts, tmp_path, finished):
    out = tmp_path / "ft"
    r = run_train_job(tiny(texts, out, init=str(finished), steps=2, lr=1e-3))
    assert (out / "tokenizer.json").read_text() == (finished / "tokenizer.json").read_text()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    last_of_finished = [json.loads(x)["loss"] for x in (finished / "metrics.jsonl").read_text().splitlines()][-1]
    assert first < math.log(300) - 0.05  # starts from trained weights, not from a uniform guess
    assert abs(first - last_of_finished) < 0.3
    assert r["model"].startswith("run (")
