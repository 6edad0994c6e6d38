"""Architecture rules: Streamlit only in core.ui/pages/app.py; no heavy imports at page top level."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "sklearn",
         "sklearn_crfsuite"}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_core_ui_imports_streamlit():
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py")
        if "ui" not in p.relative_to(ROOT / "core").parts and "streamlit" in _all_imports(p)
    ]
    assert offenders == []


def test_pages_and_ui_have_no_heavy_top_level_imports():
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "core/ui").glob("*.py"))]
    offenders = {str(p.relative_to(ROOT)): sorted(_top_level_imports(p) & HEAVY) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def _core_modules_imported_by_pages() -> set[str]:
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "core/ui").glob("*.py"))]
    found = {"core.ui"}
    for path in files:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names
                          if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("core")}
    return found


def test_modules_the_pages_import_stay_light():
    """What a page imports at the top must not pull in torch & co (seconds on every rerun)."""
    import subprocess
    import sys

    modules = sorted(_core_modules_imported_by_pages())
    assert "core.jobs" in modules and "core.evaluate" in modules
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
