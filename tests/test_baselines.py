"""Baselines on the demo project: a real CRF, and the real bundled model zero-/few-shot."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import projects
from core.data.runs import create_run, get_run, run_metrics
from core.errors import NerlabError
from core.evaluation import run_scores
from core.jobs import worker
from core.prediction import baselines, crf


def make_run(db, project_id: int, kind: str, cfg: dict) -> worker.WorkerContext:
    """A running baseline's real worker context, as the worker builds it."""
    run_id = create_run(db, project_id, kind, baselines.settings(kind, cfg))
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", [run_id])
    db.conn.commit()
    return worker.WorkerContext(db, get_run(db, run_id))


def test_crf_baseline_trains_predicts_and_scores(db, demo):
    ctx = make_run(db, demo["id"], "crf", {"max_iterations": 50})
    baselines.run(ctx)
    n_test = len(projects.examples(db, demo["id"], split="test"))
    n_dev = len(projects.examples(db, demo["id"], split="dev"))
    assert db["predictions"].count_where("run_id = ?", [ctx.run["id"]]) == n_test + n_dev
    m = run_scores.stored_metrics(db, ctx.run["id"], "test")
    # A CRF on 300 sentences finds a fair share of chemicals and diseases.
    assert 0.3 < m["micro"]["f1"] < 1.0
    assert set(m["per_class"]) == {"Chemical", "Disease"}
    run = get_run(db, ctx.run_id)
    assert Path(run["artifact_path"]).is_file()
    spans = crf.crf_predict_text(run, "Lithium caused severe hypotension in two patients .")
    assert all(s.label in {"Chemical", "Disease"} for s in spans)


def test_settings_validate_kind_and_shots():
    assert baselines.settings("few-shot", {"shots": 3})["shots"] == 3
    assert baselines.settings("zero-shot", {"shots": 3})["shots"] == 0
    with pytest.raises(NerlabError):
        baselines.settings("few-shot", {"shots": 0})
    with pytest.raises(NerlabError):
        baselines.settings("magic")


def test_crf_features_see_context():
    f = crf.word_features(["Low", "dose", "L-dopa"], 2)
    assert f["hyphen"] and f["-1:w"] == "dose" and f["1:pad"]
    assert crf._shape("L-dopa") == "X-x"


@pytest.mark.slow
@pytest.mark.parametrize("kind,cfg", [
    ("zero-shot", {}),
    ("few-shot", {"shots": 2, "selection": "fixed"}),
])
def test_llm_baselines_store_real_predictions(db, demo, bundled_model_path, kind, cfg):
    import torch

    torch.set_num_threads(2)
    ctx = make_run(db, demo["id"], kind, {**cfg, "splits": ["test"], "limit": 3, "max_new_tokens": 24})
    baselines.run(ctx)
    rows = list(db["predictions"].rows_where("run_id = ?", [ctx.run["id"]]))
    assert len(rows) == 3
    assert all(r["parse_status"] in ("ok", "partial", "unparsable") for r in rows)
    assert all(r["raw_output"] for r in rows)  # the model said something
    m = run_scores.stored_metrics(db, ctx.run["id"], "test")
    assert m["n_sentences"] == 3 and 0.0 <= m["micro"]["f1"] <= 1.0
    last = run_metrics(db, ctx.run_id)[-1]
    assert (last["step"], last["total_steps"]) == (3, 3)
