"""The ``nerlab`` command line, run as a user would (a real process, NERLAB_HOME set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nerlab(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NERLAB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_init_import_split_stats_export(tmp_path):
    home = tmp_path / "home"
    r = nerlab(home, "init", "news", "--labels", "Chemical,Disease")
    assert r.returncode == 0, r.stderr
    r = nerlab(home, "import", "news", str(ROOT / "assets/demo/train.conll"), "--format", "conll")
    assert r.returncode == 0, r.stderr
    assert "300 sentence(s) added" in r.stdout
    r = nerlab(home, "split", "news", "--dev", "0.1", "--test", "0.2", "--seed", "0")
    assert r.returncode == 0 and "train:" in r.stdout
    r = nerlab(home, "stats", "news", "--json")
    stats = json.loads(r.stdout)
    assert stats["labelled"] == 300 and sum(v["sentences"] for v in stats["splits"].values()) == 300
    out = tmp_path / "out.conll"
    r = nerlab(home, "export", "news", str(out), "--format", "conll", "--split", "test")
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("\n\n") == stats["splits"]["test"]["sentences"]
    r = nerlab(home, "projects")
    assert "news" in r.stdout and "300/300 labelled" in r.stdout


def test_errors_exit_non_zero_with_one_line(tmp_path):
    home = tmp_path / "home"
    r = nerlab(home, "stats", "nope")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("nerlab: No project 'nope'")
    assert len(r.stderr.strip().splitlines()) == 1
    nerlab(home, "init", "p")
    bad = tmp_path / "bad.conll"
    bad.write_text("Aspirin B-Chemical\nworks Q\n")
    r = nerlab(home, "import", "p", str(bad))
    assert r.returncode == 1
    assert "bad.conll, line 2: unknown tag 'Q'" in r.stderr
    stats = json.loads(nerlab(home, "stats", "p", "--json").stdout)
    assert stats["sentences"] == 0
