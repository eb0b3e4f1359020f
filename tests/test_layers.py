"""The package's floors: no module imports a higher floor, and no two modules import each other.

From the ground up: errors/paths, kernels, model, train, law, measure, improve, report, cli. A
module may import from its own floor or a lower one only, wherever the import statement stands
(module top, inside a function, under ``if TYPE_CHECKING``). ``moorelab/<part>/cli.py`` belongs to
its part's floor. Import cycles between modules are refused everywhere, within one part too.

The checker reads the source with :mod:`ast` (nothing is imported): every ``import`` and
``from ... import`` (relative ones resolved), plus every string constant that is exactly the dotted
name of a moorelab module (how ``importlib.import_module`` is fed, e.g. ``moorelab/law/cli.py``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "moorelab"

#: floors from the ground up: (floor name, module prefixes). A module is on the floor of its
#: longest matching prefix; a prefix matches itself and its submodules.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("errors/paths", ("moorelab.errors", "moorelab.paths", "moorelab.version")),
    ("kernels", ("moorelab.kernels",)),
    ("model", ("moorelab.model",)),
    ("train", ("moorelab.train",)),
    ("law", ("moorelab.law",)),
    ("measure", ("moorelab.measure",)),
    ("improve", ("moorelab.improve",)),
    ("report", ("moorelab.report",)),
    ("cli", ("moorelab.cli", "moorelab.__main__")),
]
#: the package itself (``moorelab/__init__.py``) counts as the top, with the CLI. (Python runs it
#: before any submodule, so in practice it should stay as light as it is: it re-exports the version.)
ROOT_FLOOR = "cli"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int


def discover(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Every module of the package under ``package_dir``: dotted name -> (file, is a package)."""
    root = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_pkg)
    return modules


def _known(name: str, modules) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package (None if none)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def import_edges(modules: dict[str, tuple[Path, bool]], package_dir: Path) -> list[Edge]:
    """Every import of one package module by another (self-imports dropped), in file order."""
    edges = []
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        shown = str(path.relative_to(package_dir.parent))

        def add(target: str | None, node: ast.AST) -> None:
            if target is not None and target != name:
                edges.append(Edge(name, target, shown, node.lineno))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(_known(alias.name, modules), node)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    pkg = ".".join(base + ([node.module] if node.module else []))
                else:
                    pkg = node.module or ""
                for alias in node.names:
                    # `from pkg import sub` imports the submodule when there is one, else pkg
                    sub = f"{pkg}.{alias.name}"
                    add(sub if sub in modules else _known(pkg, modules), node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                    and node.value in modules:
                add(node.value, node)  # a dotted module name for importlib.import_module
    return list(dict.fromkeys(edges))  # one edge per (source, target, line)


def floor_of(module: str) -> str | None:
    """The floor name of ``module`` (None for a module no floor claims)."""
    if module == "moorelab":
        return ROOT_FLOOR
    best, best_len = None, -1
    for floor, prefixes in FLOORS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = floor, len(p)
    return best


def upward_imports(edges: list[Edge], modules) -> list[str]:
    """One line per import from a lower floor to a higher one, and per module no floor claims."""
    rank = {floor: i for i, (floor, _) in enumerate(FLOORS)}
    problems = [f"{m}: on no floor (add it to FLOORS in tests/test_layers.py)" for m in modules if floor_of(m) is None]
    for e in edges:
        lo, hi = floor_of(e.source), floor_of(e.target)
        if lo is not None and hi is not None and rank[hi] > rank[lo]:
            problems.append(f"{e.path}:{e.line}: {e.source} (floor {lo}) imports {e.target} (floor {hi}, higher)")
    return problems


def strongly_connected(nodes, edges: list[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        succ[e.source].add(e.target)
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def describe_cycle(component: list[str], edges: list[Edge]) -> str:
    """A shortest import loop through the component's first module, each step with file:line."""
    members = set(component)
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        if e.source in members and e.target in members:
            first.setdefault((e.source, e.target), e)
    start = component[0]
    parent: dict[str, Edge] = {}
    frontier, seen = [start], {start}
    while frontier and start not in parent:
        nxt = []
        for v in frontier:
            for (s, t), e in sorted(first.items()):
                if s == v and (t not in seen or t == start) and t not in parent:
                    parent[t] = e
                    if t != start:
                        seen.add(t)
                        nxt.append(t)
        frontier = nxt
    steps, v = [], start
    while True:
        e = parent[v]
        steps.append(f"{e.source} -> {e.target} ({e.path}:{e.line})")
        v = e.source
        if v == start:
            break
    return f"cycle of {len(component)} modules {component}: " + "; ".join(reversed(steps))


def check(package_dir: Path, known_cycles=()) -> tuple[list[str], list[str]]:
    """(upward imports, import cycles not in ``known_cycles``) of the package at ``package_dir``."""
    modules = discover(package_dir)
    edges = import_edges(modules, package_dir)
    cycles = [describe_cycle(c, edges) for c in strongly_connected(modules, edges)
              if frozenset(c) not in set(known_cycles)]
    return upward_imports(edges, modules), cycles


def test_no_module_imports_a_higher_floor():
    upward, _ = check(PACKAGE_DIR)
    assert not upward, ("imports from a lower floor to a higher one (floors from the ground up: "
                        + ", ".join(f for f, _ in FLOORS) + "):\n" + "\n".join(upward))


def test_no_import_cycles():
    _, cycles = check(PACKAGE_DIR)
    assert not cycles, "import cycles between moorelab modules:\n" + "\n".join(cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(src)
    return root / "moorelab"


def test_checker_catches_a_planted_upward_import_and_cycle(tmp_path):
    pkg = _write(tmp_path, {
        "moorelab/__init__.py": "",
        "moorelab/errors.py": "",
        "moorelab/model/__init__.py": "",
        "moorelab/model/a.py": "def f():\n    from ..report import results\n",  # lazy, relative, upward
        "moorelab/model/b.py": "import moorelab.model.c\n",
        "moorelab/model/c.py": "from moorelab.model import b\n",  # b <-> c
        "moorelab/law/__init__.py": "",
        "moorelab/law/cli.py": "import importlib\nimportlib.import_module('moorelab.measure.x')\n",  # law -> measure
        "moorelab/measure/__init__.py": "",
        "moorelab/measure/x.py": "from moorelab.errors import *\nfrom moorelab.law import cli\n",  # downward: fine
        "moorelab/report/__init__.py": "",
        "moorelab/report/results.py": "from moorelab.model.b import *\n",  # downward: fine
        "moorelab/improve/__init__.py": "",
        "moorelab/improve/api.py": "",
        "moorelab/kernels/__init__.py": "from moorelab.errors import *\n",
        # the kernels sit below model; improve does not
        "moorelab/model/d.py": "from moorelab import kernels\nfrom moorelab.improve.api import *\n",
    })
    upward, cycles = check(pkg)
    assert sorted(upward) == [
        "moorelab/law/cli.py:2: moorelab.law.cli (floor law) imports moorelab.measure.x (floor measure, higher)",
        "moorelab/model/a.py:2: moorelab.model.a (floor model) imports moorelab.report.results (floor report, higher)",
        "moorelab/model/d.py:2: moorelab.model.d (floor model) imports moorelab.improve.api (floor improve, higher)",
    ]
    assert len(cycles) == 2, cycles
    assert any("['moorelab.model.b', 'moorelab.model.c']" in c for c in cycles)
    assert any("['moorelab.law.cli', 'moorelab.measure.x']" in c for c in cycles)
    assert check(pkg, [frozenset({"moorelab.model.b", "moorelab.model.c"}),
                       frozenset({"moorelab.law.cli", "moorelab.measure.x"})])[1] == []


def test_checker_flags_a_module_on_no_floor(tmp_path):
    pkg = _write(tmp_path, {"moorelab/__init__.py": "", "moorelab/stray.py": "import moorelab.errors\n",
                            "moorelab/errors.py": ""})
    upward, _ = check(pkg)
    assert upward == ["moorelab.stray: on no floor (add it to FLOORS in tests/test_layers.py)"]
