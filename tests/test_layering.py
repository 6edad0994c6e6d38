"""Architecture rules, measured on the code: the package order of core/, no import cycle, no
module over 600 lines, NERLab's own imports at the top of a file, Streamlit only in the faces,
and no heavy imports where a page would pay for them on every rerun."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
HEAVY = {"torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "sklearn",
         "sklearn_crfsuite"}
#: core's packages from the ground up: a module may import its own package and those below.
#: The two faces (cli, ui) stand side by side at the top and never import each other.
LAYERS = {
    "config": 0, "errors": 0,
    "procs": 1,
    "data": 2,
    "prompts": 3,
    "models": 4,
    "evaluation": 5,
    "prediction": 6,
    "training": 7,
    "jobs": 8,
    "cli": 9, "ui": 9,
}
MAX_LINES = 600


def _core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    out = []
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, id(node) in top))
            # ``from core.data import projects`` imports the module core.data.projects
            out += [(f"{node.module}.{a.name}", node.lineno, id(node) in top) for a in node.names
                    if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()]
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in _core_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for name, _line, _top in _imports(path):
            if name in modules and name != mod and not (modules[name].name == "__init__.py"
                                                        and mod.startswith(name + ".")):
                graph[mod].add(name)
    return graph


def _layer(module: str) -> tuple[str, int]:
    package = module.split(".")[1]
    return package, LAYERS[package]


def test_every_core_package_has_a_layer():
    packages = {p.relative_to(CORE).parts[0].removesuffix(".py") for p in _core_files()}
    assert packages - {"__init__"} <= set(LAYERS), sorted(packages - set(LAYERS))


def test_imports_run_down_the_layers():
    wrong = []
    for mod, targets in _graph().items():
        if mod == "core":
            continue
        pkg, rank = _layer(mod)
        for target in targets:
            if target == "core":
                continue
            tpkg, trank = _layer(target)
            if tpkg != pkg and trank >= rank:
                wrong.append(f"{mod} -> {target}")
    assert wrong == []


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _core_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_nerlab_modules_are_imported_at_the_top():
    """Lazy imports are for heavy third-party packages only; NERLab's own modules are imported
    at the top, so the import graph above is the whole truth."""
    nested = [f"{p.relative_to(ROOT)}:{line} {name}" for p in [*_core_files(), ROOT / "app.py",
                                                              *sorted((ROOT / "views").glob("*.py"))]
              for name, line, top in _imports(p) if name.split(".")[0] == "core" and not top]
    assert nested == []


def test_only_core_ui_imports_streamlit():
    offenders = [
        str(p.relative_to(ROOT)) for p in _core_files()
        if "ui" not in p.relative_to(CORE).parts
        and "streamlit" in {name.split(".")[0] for name, _l, _t in _imports(p)}
    ]
    assert offenders == []


def _faces() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "views").glob("*.py")), *sorted((CORE / "ui").glob("*.py"))]


def test_pages_and_ui_have_no_heavy_top_level_imports():
    offenders = {str(p.relative_to(ROOT)): sorted({n.split(".")[0] for n, _l, _t in
                                                   _imports(p, top_level_only=True)} & HEAVY)
                 for p in _faces()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_modules_the_pages_import_stay_light():
    """What a page imports at the top must not pull in torch & co (seconds on every rerun)."""
    modules = sorted({name for p in _faces() for name, _l, _t in _imports(p, top_level_only=True)
                      if name.startswith("core")})
    assert "core.jobs.launcher" in modules and "core.evaluation.run_scores" in modules
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
