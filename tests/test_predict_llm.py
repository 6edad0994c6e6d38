"""``nerlab predict`` and the Python API with the real bundled LLM (slow): a fine-tuned run of a
tiny project predicts a text file; its run folder, copied elsewhere, loads in a fresh process
without a database and gives the same spans; the adapter names its base model portably."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import api_in_fresh_process
from test_train import quick_config, tiny_project

from core.data import io
from core.jobs import launcher
from core.prediction import vllm_backend

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

TEXT = ("Lithium caused severe hypotension in two patients .\n"
        "Naloxone reverses the effect of clonidine .\n")


def _spans(rows: list[dict]) -> list[list[tuple]]:
    return [[(s["start"], s["end"], s["label"]) for s in row] for row in rows]


def test_a_fine_tuned_run_predicts_a_file_and_its_copied_folder_gives_the_same_spans(
        db, home, tmp_path, bundled_model_path):
    project = tiny_project(db)
    run_id, _ = launcher.submit_training(db, project["id"], quick_config(), name="tiny-llm")
    run = launcher.wait(db, run_id, timeout_s=900, poll_s=0.5)
    assert run["status"] == "finished", run

    src = tmp_path / "notes.txt"
    src.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "NERLAB_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "core.cli", "predict", str(run_id), str(src),
                        "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    if not vllm_backend.vllm_installed():  # the pre-flight line says which backend and why
        assert ("Prediction backend: built-in batched generation: vLLM is not installed"
                in r.stdout), r.stdout
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == TEXT.splitlines()
    for row in rows:  # constrained decoding: every span is a whole-token span of the sentence
        for s in row["spans"]:
            assert s["label"] in ("Chemical", "Disease")
            piece = row["text"][s["start"]:s["end"]]
            assert piece and piece == piece.strip()
        assert 0 <= row["confidence"] <= 1
    fmt, back = io.parse_bytes(out.read_bytes(), None, name="out.jsonl")
    assert fmt == "jsonl" and [[(x.start, x.end, x.label) for x in b.spans] for b in back] == \
        _spans([row["spans"] for row in rows])

    # The adapter names the bundled model by name, not a path inside this data directory.
    adapter_cfg = json.loads((home / "runs" / str(run_id) / "adapter" / "adapter_config.json")
                             .read_text())
    assert str(home) not in adapter_cfg["base_model_name_or_path"]

    copy = tmp_path / "elsewhere" / "tiny-llm"
    shutil.copytree(home / "runs" / str(run_id), copy)
    found = api_in_fresh_process(copy, src, tmp_path / "no-data-here", timeout=600)
    assert _spans(found) == _spans([row["spans"] for row in rows])
