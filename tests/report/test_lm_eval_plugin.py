"""The start-up hook that lets lm-eval's own ``lm_eval`` command find ``--model moorelab``
(moorelab.report.lm_eval_plugin): the finder registers a lazy placeholder only once
``lm_eval.models`` has run, lm-eval's own models still resolve, the adapter's import upgrades the
placeholder (also under ``python -m``), the ``.pth`` line works through :mod:`site` without importing
moorelab and is silent when anything fails; and the environment's real ``lm_eval`` console script
scores a local YAML task on an int8 variant with the same per-item log-likelihoods and acc as
moorelab's own scorer (moorelab.measure.choice).

Each check runs in a fresh interpreter: the hook acts at start-up and on the first import of
``lm_eval.models``, which this test process may have done already."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moorelab.report import lm_eval_plugin

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "measure"))  # lm_eval_helpers.py (importlib mode adds no path)

try:
    import lm_eval  # noqa: F401

    HAVE_LM_EVAL = None
except ImportError as exc:
    HAVE_LM_EVAL = f"lm-eval not installed ({exc}; make setup installs it: pip install 'lm-eval>=0.4.13')"

#: drops the hook the environment's .pth may have installed at start-up (without importing moorelab)
DROP_STARTUP_HOOK = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                     "if not getattr(f, 'moorelab_lm_eval_hook', False)]\n")


def need_lm_eval():
    if HAVE_LM_EVAL:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {HAVE_LM_EVAL}")
        pytest.skip(HAVE_LM_EVAL)


def env(**extra) -> dict:
    """This checkout first on the path (its moorelab, its plugin), hubs offline."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [e.get("PYTHONPATH")])])
    e.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return e


def run_py(code: str, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env(),
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_finder_registers_placeholder_after_lm_eval_models_and_keeps_lm_evals_models():
    need_lm_eval()
    code = DROP_STARTUP_HOOK + textwrap.dedent("""
        import json
        from moorelab.report import lm_eval_plugin as p
        assert "lm_eval.models" not in sys.modules and "lm_eval" not in sys.modules
        p.install(); p.install()
        out = {"hooks": sum(bool(getattr(f, "moorelab_lm_eval_hook", False)) for f in sys.meta_path)}
        from lm_eval.api.registry import get_model, model_registry
        out["before"] = len(model_registry)        # registry empty: get_model will import lm_eval.models
        dummy = get_model("dummy")
        out["placeholder"] = dict(model_registry.items()).get("moorelab")
        out["torch_loaded"] = "torch" in sys.modules or "moorelab.report.lm_eval_adapter" in sys.modules
        out["loader"] = type(sys.modules["lm_eval.models"].__loader__).__name__
        hf = get_model("hf")
        ours = get_model("moorelab")
        from lm_eval.api.model import LM
        out["names"] = [f"{c.__module__}:{c.__name__}" for c in (dummy, hf, ours)]
        out["is_lm"] = issubclass(ours, LM)
        out["after"] = dict(model_registry.items())["moorelab"] is ours
        out["n_builtin"] = len(__import__("lm_eval.models").models.MODEL_MAPPING)
        out["n"] = len(model_registry)
        print(json.dumps(out))
    """)
    out = last_json(run_py(code))
    assert out["hooks"] == 1  # install() is idempotent
    assert out["before"] == 0
    assert out["placeholder"] == "moorelab.report.lm_eval_adapter:MoorelabLM"  # lazy: a string
    assert out["torch_loaded"] is False  # nothing heavy until lm-eval asks for the model
    assert out["loader"] == "SourceFileLoader"  # the module keeps its real loader
    assert out["names"] == ["lm_eval.models.dummy:DummyLM", "lm_eval.models.huggingface:HFLM",
                            "moorelab.report.lm_eval_adapter:MoorelabLM"]
    assert out["is_lm"] and out["after"]  # the placeholder was upgraded to the class
    assert out["n"] == out["n_builtin"] + 1  # lm-eval's whole table, plus ours


def test_install_after_lm_eval_models_and_adapter_first():
    need_lm_eval()
    code = DROP_STARTUP_HOOK + textwrap.dedent("""
        import json
        import lm_eval.models
        from lm_eval.api.registry import model_registry
        from moorelab.report import lm_eval_plugin as p
        out = {"absent": "moorelab" not in model_registry}
        p.install()   # lm_eval.models already imported: registers now, no finder
        out["now"] = dict(model_registry.items()).get("moorelab")
        out["hooks"] = p.installed()
        out["again"] = p.register_placeholder()   # the name is taken: left alone
        import moorelab.report.lm_eval_adapter as a
        out["upgraded"] = dict(model_registry.items())["moorelab"] is a.MoorelabLM
        print(json.dumps(out))
    """)
    out = last_json(run_py(code))
    assert out == {"absent": True, "now": lm_eval_plugin.TARGET, "hooks": False, "again": False, "upgraded": True}
    # no hook at all: importing the adapter registers the class itself (the `moorelab lm-eval` route)
    code = DROP_STARTUP_HOOK + textwrap.dedent("""
        import moorelab.report.lm_eval_adapter as a
        from lm_eval.api.registry import get_model
        assert get_model("moorelab") is a.MoorelabLM and get_model("dummy").__name__ == "DummyLM"
        print("ok")
    """)
    assert run_py(code).stdout.strip().endswith("ok")


def test_python_m_adapter_with_the_hook_does_not_clash():
    """`python -m moorelab.report.lm_eval_adapter` runs the file as __main__ too: only the
    importable module's class may claim the name the hook's placeholder points at."""
    need_lm_eval()
    code = DROP_STARTUP_HOOK + textwrap.dedent("""
        import runpy
        from moorelab.report import lm_eval_plugin as p
        p.install()
        import lm_eval.models
        sys.argv = ["lm_eval_adapter", "--help"]
        try:
            runpy.run_module("moorelab.report.lm_eval_adapter", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            assert e.code in (0, None), e.code
        from lm_eval.api.registry import model_registry
        print("\\nREGISTERED", dict(model_registry.items())["moorelab"])
    """)
    out = run_py(code).stdout
    assert "--model_args" in out  # lm-eval's own help ran
    assert out.strip().splitlines()[-1] == "REGISTERED <class 'moorelab.report.lm_eval_adapter.MoorelabLM'>"


def test_pth_file_through_site_and_silent_failures(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    path, changed = lm_eval_plugin.register(site_dir)
    assert (path.name, changed) == ("moorelab-lm-eval.pth", True)
    assert path.read_text(encoding="utf-8") == lm_eval_plugin.pth_line()
    assert lm_eval_plugin.pth_line().startswith("import ") and lm_eval_plugin.pth_line().count("\n") == 1
    assert lm_eval_plugin.register(site_dir) == (path, False)  # idempotent

    # site processes the .pth (as at start-up): one shim, moorelab NOT imported (start-up must not
    # pin it to the start-up sys.path); on lm_eval.models the shim imports this checkout's plugin
    code = DROP_STARTUP_HOOK + textwrap.dedent(f"""
        import json, site
        site.addsitedir({str(site_dir)!r})
        site.addsitedir({str(site_dir)!r})   # a second .pth run adds no second shim
        hooks = [f for f in sys.meta_path if getattr(f, "moorelab_lm_eval_hook", False)]
        out = {{"hooks": len(hooks), "first": sys.meta_path[0] is hooks[0], "module": type(hooks[0]).__module__,
               "moorelab": "moorelab" in sys.modules}}
        import lm_eval.models
        from lm_eval.api.registry import model_registry
        out["placeholder"] = dict(model_registry.items()).get("moorelab")
        out["file"] = sys.modules["moorelab.report.lm_eval_plugin"].__file__
        print(json.dumps(out))
    """)
    proc = run_py(code)
    out = last_json(proc)
    assert out == {"hooks": 1, "first": True, "module": "_moorelab_lm_eval_startup", "moorelab": False,
                   "placeholder": lm_eval_plugin.TARGET, "file": str(REPO / "moorelab" / "report" / "lm_eval_plugin.py")}

    # nothing importable (-I -S: no site-packages, no PYTHONPATH): start-up is silent
    proc = run_py(f"import site; site.addsitedir({str(site_dir)!r}); print('started')", "-I", "-S")
    assert (proc.stdout.strip(), proc.stderr) == ("started", "")
    # moorelab broken, or without the plugin: lm-eval imports and works as if the shim were not there
    for name, files in {"broken": {"__init__.py": "raise RuntimeError('broken moorelab')\n"},
                        "old": {"__init__.py": "", "report/__init__.py": ""}}.items():
        for rel, text in files.items():
            (tmp_path / name / "moorelab" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "moorelab" / rel).write_text(text)
        code = DROP_STARTUP_HOOK + textwrap.dedent(f"""
            sys.path.insert(0, {str(tmp_path / name)!r})
            import site
            site.addsitedir({str(site_dir)!r})
            from lm_eval.api.registry import get_model
            print("moorelab" in dict(get_model.__globals__["model_registry"].items()), get_model("dummy").__name__)
        """)
        proc = run_py(code)
        assert proc.stdout.strip().splitlines()[-1] == "False DummyLM", name
        assert "Error processing line" not in proc.stderr and "broken moorelab" not in proc.stderr, name

    assert lm_eval_plugin.unregister(site_dir) == (path, True) and not path.exists()
    assert lm_eval_plugin.unregister(site_dir) == (path, False)


def test_register_errors_name_the_folder(tmp_path):
    from moorelab.errors import MoorelabError

    with pytest.raises(MoorelabError, match="site-packages folder not found"):
        lm_eval_plugin.register(tmp_path / "missing")


def test_cli_register_and_unregister(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from moorelab.cli import app

    monkeypatch.setattr(lm_eval_plugin, "site_packages", lambda: tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["lm-eval", "--register"])
    assert r.exit_code == 0 and "registered:" in r.output and (tmp_path / lm_eval_plugin.PTH_NAME).is_file()
    assert "already registered" in runner.invoke(app, ["lm-eval", "--register"]).output
    r = runner.invoke(app, ["lm-eval", "--register", "--tasks", "x"])
    assert r.exit_code != 0 and "takes no other argument (got --tasks x)" in str(r.exception)
    r = runner.invoke(app, ["lm-eval", "--unregister"])
    assert r.exit_code == 0 and "removed:" in r.output and not (tmp_path / lm_eval_plugin.PTH_NAME).exists()


@pytest.mark.slow
def test_real_lm_eval_console_script_equals_our_scorer(tmp_path):
    """`lm_eval run --model moorelab --model_args pretrained=<tiny Llama>,improve=int8` (the
    environment's own console script, registration by its .pth) on a local YAML task: per-item
    log-likelihoods and acc / acc_norm equal moorelab.measure.choice on the same int8 model."""
    need_lm_eval()
    pth = lm_eval_plugin.site_packages() / lm_eval_plugin.PTH_NAME
    script = Path(sys.executable).parent / "lm_eval"
    why = None
    if not script.is_file():
        why = f"{script}: lm-eval's console script not installed"
    elif not pth.is_file() or pth.read_text(encoding="utf-8") != lm_eval_plugin.pth_line():
        why = f"{pth}: not registered (or stale): run `moorelab lm-eval --register` (make setup does)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {why}")
        pytest.skip(why)
    from lm_eval_helpers import PARITY_DOCS, tiny_llama_folder, write_parity_task

    from moorelab.measure.choice import score_items
    from moorelab.measure.tasks import load_task
    from moorelab.report.lm_eval_adapter import MoorelabLM

    folder = tiny_llama_folder(tmp_path / "tiny", max_positions=64)
    yaml_path = write_parity_task(tmp_path / "task")
    limit = 4
    proc = subprocess.run(
        [str(script), "run", "--model", "moorelab", "--model_args", f"pretrained={folder},improve=int8,threads=1",
         "--tasks", "moorelab_parity", "--include_path", str(tmp_path / "task"), "--limit", str(limit),
         "--device", "cpu", "--batch_size", "1", "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=env(OMP_WAIT_POLICY="PASSIVE"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    (samples_file,) = (tmp_path / "out").rglob("samples_moorelab_parity_*.jsonl")
    res = json.loads(results_file.read_text())["results"]["moorelab_parity"]
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(limit))

    lm = MoorelabLM(pretrained=str(folder), improve="int8", threads=1)
    assert any(getattr(m, "scheme", None) for m in lm.model.modules())  # the int8 variant is what we score
    ours = score_items(lm.model, lm._encode, load_task(str(yaml_path)).items[:limit], max_length=lm.max_length,
                       prefix_token_id=lm.prefix_token_id)
    for s, mine, doc in zip(samples, ours.scores, PARITY_DOCS):
        assert s["doc"]["query"] == doc["query"]
        assert [float(r[0][0]) for r in s["resps"]] == pytest.approx(mine.loglikelihoods, abs=2e-4), s["doc_id"]
    for metric in ("acc", "acc_norm"):
        assert res[f"{metric},none"] == pytest.approx(getattr(ours, metric).value, abs=1e-12), metric
