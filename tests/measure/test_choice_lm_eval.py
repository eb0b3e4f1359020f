"""Our multiple-choice scores equal lm-evaluation-harness's own (its `hf` backend) on the same
tiny model folder and the same local YAML task: per-item log-likelihoods, acc, acc_norm,
acc_bytes and their standard errors."""

import pytest

pytest.importorskip("lm_eval", reason="lm-eval not installed (make setup installs it)")

from tests.measure.lm_eval_helpers import PARITY_DOCS, run_lm_eval, tiny_llama_folder, write_parity_task  # noqa: E402


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    from moorelab.measure.choice import score_items
    from moorelab.measure.tasks import load_task
    from moorelab.model.tokenize import encode_text
    from moorelab.model.zoo import load_pretrained

    root = tmp_path_factory.mktemp("parity")
    folder = tiny_llama_folder(root / "tiny", max_positions=64)
    yaml_path = write_parity_task(root / "task")
    ref = run_lm_eval("hf", {"pretrained": str(folder), "dtype": "float32"}, root / "task", "moorelab_parity")
    loaded = load_pretrained(str(folder))
    task = load_task(str(yaml_path))
    ours = score_items(loaded.model, lambda t: encode_text(loaded.tokenizer, t), task.items,
                       max_length=loaded.config.max_position_embeddings, prefix_token_id=loaded.bos_token_id)
    return ref, ours


def test_per_item_loglikelihoods_equal_lm_eval(parity):
    ref, ours = parity
    samples = sorted(ref["samples"]["moorelab_parity"], key=lambda s: s["doc_id"])
    assert len(samples) == len(PARITY_DOCS) == len(ours.scores)
    for s, mine in zip(samples, ours.scores):
        theirs = [float(r[0][0]) for r in s["resps"]]
        greedy = [bool(r[0][1]) for r in s["resps"]]
        assert mine.loglikelihoods == pytest.approx(theirs, abs=2e-4), s["doc_id"]
        assert mine.is_greedy == greedy
    # the long prompt (item 7) was truncated from the left, as lm-eval does
    assert ours.scores[6].truncated_tokens > 0 and ours.n_truncated == 1


def test_accuracies_and_stderr_equal_lm_eval(parity):
    ref, ours = parity
    r = ref["results"]["moorelab_parity"]
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert getattr(ours, metric).value == pytest.approx(r[f"{metric},none"], abs=1e-12), metric
        assert getattr(ours, metric).stderr == pytest.approx(r[f"{metric}_stderr,none"], abs=1e-9), metric
