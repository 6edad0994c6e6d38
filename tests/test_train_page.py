"""The Train page (AppTest): form from the presets, pre-flight checks, start, the live run view."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from streamlit.testing.v1 import AppTest

from core.data import projects
from core.data.runs import create_run, get_run, log_path
from core.models import loader
from core.training.runconfig import RunConfig, get_preset

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "views/4_Train.py")


@pytest.fixture
def app(home, monkeypatch):
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project

    ensure_demo_project(get_db())
    at = AppTest.from_file(PAGE, default_timeout=60)
    return at


def _texts(at) -> str:
    parts = [e.value for e in (*at.error, *at.warning, *at.info, *at.success, *at.caption,
                               *at.markdown)]
    return "\n".join(str(p) for p in parts)


def test_page_renders_with_the_small_model_preset(app):
    at = app.run()
    assert not at.exception
    assert at.selectbox(key="train_preset").value == "Small model on CPU"
    assert at.number_input(key="train_f_rank").value == 16
    assert at.number_input(key="train_f_lr").value == pytest.approx(5e-4)
    assert at.multiselect(key="train_f_targets").value == list(RunConfig().lora.targets)
    assert not at.button(key="train_start").disabled
    text = _texts(at)
    assert "Template round-trip" in text and "No runs yet" in text


def test_choosing_a_preset_loads_its_values(app):
    at = app.run()
    at.selectbox(key="train_preset").set_value("Llama-3 financial NER").run()
    assert not at.exception
    assert at.number_input(key="train_f_rank").value == 8
    assert at.number_input(key="train_f_grad_accum").value == 6
    assert at.selectbox(key="train_f_precision").value == "bf16"
    # No GPU here: a note of what runs (bf16 on a CPU that computes in it, else float32).
    if loader.cpu_bf16():
        assert "bf16 without CUDA" not in _texts(at) and "cores), bf16." in _texts(at)
    else:
        assert "bf16 without CUDA" in _texts(at)


def test_start_creates_a_run_with_the_form_values(app):
    at = app.run()
    at.number_input(key="train_f_rank").set_value(4)
    at.number_input(key="train_f_max_steps").set_value(3)
    at.text_input(key="train_run_name").set_value("my-run")
    with mock.patch("core.jobs.launcher.launch", return_value=True) as launch:
        at.button(key="train_start").click().run()
    assert not at.exception
    assert launch.called
    from core.data.db import get_db

    db = get_db()
    run = get_run(db, launch.call_args.args[1])
    cfg = RunConfig.from_dict(run["config"])
    assert (cfg.lora.rank, cfg.train.max_steps, cfg.method, run["name"]) == (4, 3, "loraplus", "my-run")
    assert run["template_id"] is not None and run["status"] == "queued"
    assert any("started" in s.value for s in at.success)


def test_preflight_errors_disable_start(home, monkeypatch):
    from core.data.db import get_db

    db = get_db()
    project = projects.create_project(db, "empty", labels=["Chemical"])
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["project_id"] = project["id"]
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    at.run()
    assert not at.exception
    assert at.button(key="train_start").disabled
    errors = " ".join(e.value for e in at.error)
    assert "Too few training sentences" in errors and "No dev split" in errors


def test_run_view_shows_progress_stop_cli_and_log(app):
    from core.data.db import get_db, now

    db = get_db()
    project = projects.get_project(db, "BC5CDR demo")
    cfg = get_preset("Small model on CPU").config(max_steps=10)
    run_id = create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    db.execute("UPDATE runs SET status = 'running', pid = 4242, heartbeat_at = ?, started_at = ?"
               " WHERE id = ?", [now(), now(), run_id])
    for step, loss in ((1, 1.2), (2, 0.9), (3, 0.7)):
        db.execute("INSERT INTO run_metrics (run_id, step, total_steps, epoch, loss, lr,"
                   " tokens_per_s, eta_s, created_at) VALUES (?, ?, 10, 0.1, ?, 5e-4, 120, 60, ?)",
                   [run_id, step, loss, now()])
    db.conn.commit()
    log_path(run_id).write_text("[12:00:00] Training 300 sentences\n")
    with mock.patch("core.jobs.launcher.pid_alive", return_value=True):
        at = app.run()
        assert not at.exception
        assert at.selectbox(key="train_run").value == run_id
        code = " ".join(c.value for c in at.code)
        assert "nerlab train 'BC5CDR demo'" in code and "--max-steps 10" in code
        assert "Training 300 sentences" in code
        assert any(m.label == "Train loss" and m.value == "0.7000" for m in at.metric)
        assert at.get("plotly_chart")  # the loss curve
        with mock.patch("core.jobs.launcher.request_stop", return_value="stopping") as stop:
            at.button(key=f"train_stop_{run_id}").click().run()
        assert stop.call_args.args[1] == run_id


# -- a run's life on the page ---------------------------------------------------------------------


def _running_run(db, project_id: int, pid: int, name: str = "") -> int:
    from dataclasses import replace

    from core.data import phases
    from core.data.db import now
    from core.jobs import worker

    cfg = get_preset("Small model on CPU").config(max_steps=4)
    run_id = create_run(db, project_id, "train", cfg.to_dict(), name=name, base_model=cfg.base_model)
    db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ?, started_at = ?"
               " WHERE id = ?", [pid, now(), now(), run_id])
    db.conn.commit()
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    ctx.plan_phases([phases.LOAD, replace(phases.TRAIN, total=4), phases.SAVE,
                     phases.predict_phase("dev", 60)])
    ctx.phase(phases.LOAD)
    ctx.phase(phases.TRAIN, total=4)
    ctx.phase_progress(2, 4, eta_s=40.0, detail="loss 0.8000")
    return run_id


def test_a_reload_during_a_run_shows_the_run_its_phase_and_stop_says_stopping_at_once(app, tmp_path):
    from test_lifecycle import FakeWorker

    from core.data.db import get_db

    db = get_db()
    project = projects.get_project(db, "BC5CDR demo")
    fake = FakeWorker(tmp_path)
    try:
        run_id = _running_run(db, project["id"], fake.proc.pid, name="nice ![i](http://127.0.0.1:9/x)")
        at = app.run()  # a fresh session: what a reload gets
        assert not at.exception, at.exception
        banner = " ".join(p.proto.text for p in at.get("progress"))
        assert f"Run #{run_id}" in banner and "is running" in banner
        assert r"Train · 2 \/ 4 steps · loss 0\.8000 · ETA" in banner
        texts = _texts(at)
        assert "Phase 2 of 4" in " ".join(p.proto.text for p in at.get("progress"))
        assert "○ :gray[Save the adapter]" in texts and "✓ Load the model" in texts
        # The run name is escaped wherever Markdown renders it (no image is fetched).
        heading = next(m.value for m in at.markdown if m.value.startswith("####"))
        assert r"nice \!\[i\]\(http\:\/\/127\.0\.0\.1\:9\/x\)" in heading
        table = at.dataframe[0].value
        assert table.loc[0, "run"] == "nice ![i](http://127.0.0.1:9/x)"  # a table cell is plain
        assert table.loc[0, "progress"].startswith("Train · 2 / 4 steps")
        at.button(key=f"train_stop_{run_id}").click().run()
        assert not at.exception, at.exception
        # The same rerun already shows it: no wait for the worker.
        assert any("Stopping…" in w.value and "drops the step in progress" in w.value
                   for w in at.warning), _texts(at)
        assert not [b for b in at.button if b.key == f"train_stop_{run_id}"]
        assert "stopping" in at.dataframe[0].value.loc[0, "status"]
        assert get_run(db, run_id)["stop_requested"] == 1
        assert fake.terms() == 1
    finally:
        fake.end()


def test_no_dev_split_is_fixed_with_one_click_without_touching_test(home, monkeypatch):
    from core.data.db import get_db

    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    db = get_db()
    p = projects.create_project(db, "pair", labels=["Chemical"])
    projects.add_sentences(db, p["id"], [projects.SentenceRecord(
        f"Aspirin number {i} helps .", [], labelled=True) for i in range(30)], split="train")
    projects.add_sentences(db, p["id"], [projects.SentenceRecord(
        f"Test sentence {i} .", [], labelled=True) for i in range(5)], split="test")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["project_id"] = p["id"]
    at.run()
    assert at.button(key="train_start").disabled
    assert any("No dev split" in e.value for e in at.error)
    at.button(key="train_carve_dev").click().run()
    assert not at.exception, at.exception
    assert any("3 training sentence(s) moved to dev" in s.value for s in at.success)
    assert projects.split_counts(db, p["id"]) == {"train": 27, "dev": 3, "test": 5}
    assert not any("No dev split" in e.value for e in at.error)
    assert not at.button(key="train_start").disabled
