"""Start-up hook that lets lm-evaluation-harness's own ``lm_eval`` command find ``--model moorelab``.

lm-eval 0.4.13 reads no plugin entry points: its model registry
(``lm_eval.api.registry.model_registry``) is filled by ``lm_eval/models/__init__.py`` with a fixed
table of lazy placeholders (``"name" -> "package.module:Class"``), and ``get_model()`` imports
``lm_eval.models`` only while the registry is empty, so a model registered *before* that import would
hide all of lm-eval's own models. This module therefore waits for that import to finish, then adds
one more lazy placeholder, ``moorelab -> moorelab.report.lm_eval_adapter:MoorelabLM``: nothing heavy
(torch, the adapter) is imported until lm-eval asks for the model. When the adapter module is then
imported, its own registration upgrades the placeholder to the class (lm-eval's ``Registry`` allows
exactly this placeholder -> class upgrade).

How it runs in every process: ``moorelab lm-eval --register`` (called by ``make setup``) writes
``moorelab-lm-eval.pth`` into the environment's site-packages (``sysconfig`` purelib), one line that
Python's :mod:`site` executes at start-up -- the technique of coverage.py's ``process_startup`` and
setuptools' ``distutils-precedence.pth``. The line (:func:`pth_line`) imports nothing and looks
nothing up: it puts a ten-line shim finder first on :data:`sys.meta_path`, which answers ``None``
at once for every module but ``lm_eval.models``. On that import -- ``sys.path`` complete by then --
it imports this module the ordinary way and hands over to :class:`LmEvalModelsFinder`, which runs
lm-eval's module and registers the placeholder right after. (Importing moorelab at start-up instead
would pin it to the start-up ``sys.path``: ``python -m moorelab`` from a checkout would then run the
installed copy.) Every failure is silent -- moorelab uninstalled or broken, this file missing --
so the line can never break Python start-up nor lm-eval's import. Wheels built from
``pyproject.toml`` alone cannot ship a top-level ``.pth`` for both normal and editable installs,
hence the explicit, idempotent registration step (``--unregister`` removes the file).

This file imports only ``sys`` at import time (it is imported in the middle of lm-eval's own import
of ``lm_eval.models``), ``moorelab.errors`` in :func:`register` / :func:`unregister`, nothing else.
"""

from __future__ import annotations

import sys

#: the name lm-eval knows the model by (``lm_eval --model moorelab``)
MODEL_NAME = "moorelab"
#: lm-eval's lazy placeholder for the adapter class ("module:attribute", resolved on first use)
TARGET = "moorelab.report.lm_eval_adapter:MoorelabLM"
#: the lm-eval module whose import fills the model registry
HOOKED_MODULE = "lm_eval.models"
#: the start-up file written into site-packages
PTH_NAME = "moorelab-lm-eval.pth"
#: attribute marking our finders (several copies of this module may run: start-up and tests)
_MARK = "moorelab_lm_eval_hook"


def register_placeholder() -> bool:
    """Register :data:`TARGET` under :data:`MODEL_NAME` in lm-eval's model registry as a lazy
    placeholder, unless the name is already there (the adapter imported first, or a second call).

    Returns:
        True when registered by this call.

    Raises:
        ImportError: lm-eval is not installed. ValueError: lm-eval's registry refused the name.
    """
    from lm_eval.api.registry import model_registry

    if MODEL_NAME in model_registry:
        return False
    model_registry.register(MODEL_NAME, target=TARGET)
    return True


def _after_lm_eval_models() -> None:
    """Called once ``lm_eval.models`` has run: register, never breaking lm-eval's import."""
    try:
        register_placeholder()
    except Exception as exc:  # noqa: BLE001 - lm-eval must keep working without us
        try:  # a warning, never an error: under -W error it would raise out of lm-eval's import
            import warnings

            warnings.warn(f"moorelab: could not register the lm-eval model {MODEL_NAME!r} ({exc}); "
                          "`moorelab lm-eval ARGS` registers it itself", RuntimeWarning, stacklevel=2)
        except Exception:  # noqa: BLE001
            pass


class _RegisteringLoader:
    """Wraps the real loader of ``lm_eval.models``: runs the module, then registers the placeholder."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # hand the module its real loader first: nothing after the import sees this wrapper
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _after_lm_eval_models()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class LmEvalModelsFinder:
    """A :data:`sys.meta_path` finder that answers for ``lm_eval.models`` only: it asks the finders
    behind it for the real spec and wraps its loader so the placeholder is registered right after
    the module has run (PEP 451 finder/loader protocol). Every other name: ``None`` at once."""

    moorelab_lm_eval_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != HOOKED_MODULE:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is None or getattr(finder, _MARK, False):
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        pass


def installed() -> bool:
    """Whether a finder of this module (any copy) is on :data:`sys.meta_path`."""
    return any(getattr(f, _MARK, False) for f in sys.meta_path)


def install() -> None:
    """Make lm-eval know ``moorelab`` in this process; idempotent, imports nothing.

    If ``lm_eval.models`` is already imported, registers the placeholder now; otherwise puts a
    :class:`LmEvalModelsFinder` first on :data:`sys.meta_path` (once, whichever copy of this module
    asks), which registers it when that import finishes.
    """
    if HOOKED_MODULE in sys.modules:
        _after_lm_eval_models()
        return
    if not installed():
        sys.meta_path.insert(0, LmEvalModelsFinder())


def uninstall() -> None:
    """Remove every finder of this module from :data:`sys.meta_path` (a registered name stays)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, _MARK, False)]


#: the start-up shim the ``.pth`` line defines and installs (in its own namespace): a finder that
#: does nothing for every name but ``lm_eval.models``; on that one it imports this module the
#: ordinary way (``sys.path`` is complete by then) and hands over to :class:`LmEvalModelsFinder`.
#: Nothing is imported or looked up at start-up; moorelab missing or broken: lm-eval imports as if
#: the shim were not there.
_STARTUP_CODE = """\
import sys
class LmEvalModelsShim:
    moorelab_lm_eval_hook = True
    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'lm_eval.models':
            return None
        try:
            from moorelab.report.lm_eval_plugin import LmEvalModelsFinder
            return LmEvalModelsFinder().find_spec(fullname, path, target)
        except Exception:
            return None
if not any(getattr(f, 'moorelab_lm_eval_hook', False) for f in sys.meta_path):
    sys.meta_path.insert(0, LmEvalModelsShim())
"""


def pth_line() -> str:
    """The one line of :data:`PTH_NAME`. :mod:`site` executes ``.pth`` lines that start with
    ``import``; this one runs :data:`_STARTUP_CODE` in a fresh namespace, inside ``try`` so that
    no failure can reach start-up."""
    code = "try:\n" + "".join(f"    {line}\n" for line in _STARTUP_CODE.splitlines()) + "except Exception:\n    pass\n"
    return f"import sys; exec({code!r}, {{'__name__': '_moorelab_lm_eval_startup'}})\n"


def site_packages():
    """The environment's site-packages folder (``sysconfig.get_paths()["purelib"]``) as a Path."""
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_paths()["purelib"])


def register(site_dir=None):
    """Write :data:`PTH_NAME` (:func:`pth_line`) into ``site_dir`` (default :func:`site_packages`);
    idempotent: an identical file is left alone. Takes effect in processes started afterwards.

    Returns:
        (path of the file, whether it was written or changed).

    Raises:
        MoorelabError: the folder is missing or not writable.
    """
    from pathlib import Path

    from moorelab.errors import MoorelabError

    folder = Path(site_dir) if site_dir else site_packages()
    path = folder / PTH_NAME
    text = pth_line()
    if not folder.is_dir():
        raise MoorelabError(f"{folder}: site-packages folder not found; cannot register the lm-eval model")
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return path, False
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise MoorelabError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path, True


def unregister(site_dir=None):
    """Remove :data:`PTH_NAME` from ``site_dir`` (default :func:`site_packages`); idempotent.

    Returns:
        (path of the file, whether it was there and removed).

    Raises:
        MoorelabError: the file exists and cannot be removed.
    """
    from pathlib import Path

    from moorelab.errors import MoorelabError

    path = (Path(site_dir) if site_dir else site_packages()) / PTH_NAME
    try:
        path.unlink()
    except FileNotFoundError:
        return path, False
    except OSError as exc:
        raise MoorelabError(f"{path}: cannot remove ({exc.strerror or exc})") from None
    return path, True
