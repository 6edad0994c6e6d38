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


def test_importing_core_modules_used_by_pages_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, importlib, pkgutil, core\n"
        "light = ['core.config','core.db','core.projects','core.io','core.spans','core.models','core.demo']\n"
        "for m in light: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch','transformers','peft','bitsandbytes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
