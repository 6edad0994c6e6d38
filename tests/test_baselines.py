"""Baselines on the demo project: a real CRF, and the real bundled model zero-/few-shot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import baselines, evaluate, projects
from core.db import now
from core.errors import NerlabError


class Ctx:
    """The part of the worker's RunContext a baseline uses (the worker itself is J's)."""

    def __init__(self, db, run: dict, run_dir: Path) -> None:
        self.db, self.run, self.run_dir = db, run, run_dir
        self.config = run["config"]
        self.lines: list[str] = []
        self.progress_rows: list[tuple[int, int]] = []
        self.artifact = None

    def log(self, msg: str) -> None:
        self.lines.append(msg)

    def heartbeat(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def progress(self, step, total, **metrics) -> None:
        self.progress_rows.append((step, total))

    def set_artifact(self, path) -> None:
        self.artifact = str(path)
        self.db.execute("UPDATE runs SET artifact_path = ? WHERE id = ?", [str(path), self.run["id"]])


def make_run(db, project_id: int, kind: str, cfg: dict, tmp_path: Path) -> Ctx:
    run_id = db["runs"].insert({
        "project_id": project_id, "name": kind, "kind": kind, "config": json.dumps(cfg),
        "status": "running", "created_at": now(),
    }).last_pk
    run = dict(db["runs"].get(run_id), config=cfg)
    folder = tmp_path / "runs" / str(run_id)
    folder.mkdir(parents=True)
    return Ctx(db, run, folder)


def test_crf_baseline_trains_predicts_and_scores(db, demo, tmp_path):
    ctx = make_run(db, demo["id"], "crf", {"max_iterations": 50}, tmp_path)
    baselines.run(ctx)
    n_test = len(projects.examples(db, demo["id"], split="test"))
    n_dev = len(projects.examples(db, demo["id"], split="dev"))
    assert db["predictions"].count_where("run_id = ?", [ctx.run["id"]]) == n_test + n_dev
    m = evaluate.stored_metrics(db, ctx.run["id"], "test")
    # A CRF on 300 sentences finds a fair share of chemicals and diseases.
    assert 0.3 < m["micro"]["f1"] < 1.0
    assert set(m["per_class"]) == {"Chemical", "Disease"}
    assert Path(ctx.artifact).is_file()
    run = dict(evaluate.get_run(db, ctx.run["id"]), config={})
    spans = baselines.crf_predict_text(run, "Lithium caused severe hypotension in two patients .")
    assert all(s.label in {"Chemical", "Disease"} for s in spans)


def test_settings_validate_kind_and_shots():
    assert baselines.settings("few-shot", {"shots": 3})["shots"] == 3
    assert baselines.settings("zero-shot", {"shots": 3})["shots"] == 0
    with pytest.raises(NerlabError):
        baselines.settings("few-shot", {"shots": 0})
    with pytest.raises(NerlabError):
        baselines.settings("magic")


def test_crf_features_see_context():
    f = baselines.word_features(["Low", "dose", "L-dopa"], 2)
    assert f["hyphen"] and f["-1:w"] == "dose" and f["1:pad"]
    assert baselines._shape("L-dopa") == "X-x"


@pytest.mark.slow
@pytest.mark.parametrize("kind,cfg", [
    ("zero-shot", {}),
    ("few-shot", {"shots": 2, "selection": "fixed"}),
])
def test_llm_baselines_store_real_predictions(db, demo, tmp_path, bundled_model_path, kind, cfg):
    import torch

    torch.set_num_threads(2)
    ctx = make_run(db, demo["id"], kind, {**cfg, "splits": ["test"], "limit": 3, "max_new_tokens": 24}, tmp_path)
    baselines.run(ctx)
    rows = list(db["predictions"].rows_where("run_id = ?", [ctx.run["id"]]))
    assert len(rows) == 3
    assert all(r["parse_status"] in ("ok", "partial", "unparsable") for r in rows)
    assert all(r["raw_output"] for r in rows)  # the model said something
    m = evaluate.stored_metrics(db, ctx.run["id"], "test")
    assert m["n_sentences"] == 3 and 0.0 <= m["micro"]["f1"] <= 1.0
    assert ctx.progress_rows[-1] == (3, 3)
