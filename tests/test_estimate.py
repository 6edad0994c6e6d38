"""The pre-flight wall-time estimate: what a measurement depends on, how it scales to a run,
and one real measurement (slow) of a tiny project with the bundled model, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import quick_config, tiny_project

from core.data import projects
from core.data.spans import Span
from core.training import estimate
from core.training.checks import MEASURE, check_run

ROOT = Path(__file__).resolve().parent.parent


def _measurement(db, project_id, cfg, **values) -> estimate.Measurement:
    fields = dict(key=estimate.key(db, project_id, cfg), device="cpu", load_s=10.0,
                  tokens_per_epoch=1200, train_sentences=12, tokens_per_s=100.0, step_s=2.0,
                  predict_s_per_sentence=3.0, measured_at="2026-12-02 00:00:00")
    fields.update(values)
    return estimate.Measurement(**fields)


def test_the_key_follows_data_and_step_cost_not_epochs_or_seed(db):
    project = tiny_project(db)
    cfg = quick_config()
    k = estimate.key(db, project["id"], cfg)
    assert estimate.key(db, project["id"], cfg.with_overrides(epochs=9, seed=3)) == k
    assert estimate.key(db, project["id"], cfg.with_overrides(batch_size=4)) != k
    assert estimate.key(db, project["id"], cfg.with_overrides(max_length=512)) != k
    projects.add_sentences(db, project["id"], [
        projects.SentenceRecord("Aspirin helps.", [Span(0, 7, "Chemical")], split="train",
                                labelled=True)])
    assert estimate.key(db, project["id"], cfg) != k


def test_wall_time_scales_steps_tokens_and_predictions(db):
    project = tiny_project(db)  # 12 train, 2 dev, 2 test
    cfg = quick_config(max_steps=6, eval_limit=0, dev_loss_sentences=0)
    wall = estimate.wall_time(db, project["id"], cfg, _measurement(db, project["id"], cfg))
    # 100 tokens a sentence, 2 sentences a step, 100 tokens/s -> 2 s a step.
    assert wall.steps == 6 and wall.train_s == pytest.approx(12.0)
    assert wall.predict_s == pytest.approx(4 * 3.0)  # dev + test, 3 s each
    assert wall.total_s == pytest.approx(10 + 12 + 12)
    assert "about 34 s" in wall.describe() and "6 steps" in wall.describe()
    no_eval = estimate.wall_time(db, project["id"], cfg.with_overrides(eval_after=False),
                                 _measurement(db, project["id"], cfg))
    assert no_eval.predict_s == 0


def test_the_check_offers_a_measurement_then_shows_the_stored_one(db):
    project = tiny_project(db)
    cfg = quick_config()
    found = [i for i in check_run(db, project["id"], cfg, cuda=False) if i.title == "Estimated time"]
    assert found and found[0].action == MEASURE and "--estimate" in found[0].command
    m = _measurement(db, project["id"], cfg)
    (estimate._folder() / f"{m.key}.json").write_text(m.to_json())
    found = [i for i in check_run(db, project["id"], cfg, cuda=False) if i.title == "Estimated time"]
    assert not found[0].action and "100 tokens/s" in found[0].msg


def test_a_broken_stored_measurement_is_ignored(db):
    project = tiny_project(db)
    cfg = quick_config()
    (estimate._folder() / f"{estimate.key(db, project['id'], cfg)}.json").write_text("{not json")
    assert estimate.stored(db, project["id"], cfg) is None


@pytest.mark.slow
def test_nerlab_train_estimate_times_a_step_and_starts_nothing(db, home, bundled_model_path):
    from core.data.runs import list_runs

    project = tiny_project(db, n_train=10, n_dev=2, n_test=0)
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli.main", "train", "tiny", "--preset", "Small model on CPU",
         "--batch-size", "2", "--max-length", "192", "--epochs", "1", "--estimate"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "Estimated wall time: about" in proc.stdout and "training" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not list_runs(db, project["id"])
    cfg_files = list((home / "estimates").glob("*.json"))
    m = estimate.Measurement(**json.loads(cfg_files[0].read_text()))
    assert m.tokens_per_s > 0 and m.train_sentences == 10 and m.predict_s_per_sentence > 0
