"""A run's life with the real worker and the real bundled model (slow): Stop in every phase,
the conversion as a phase, `nerlab train --wait` printing every phase, and the "try a sentence"
process that keeps its models. Tiny projects and few steps keep each test to a minute or two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import quick_config, tiny_project

from core.data import phases
from core.data.runs import create_run, get_run, read_log, run_dir
from core.jobs import launcher
from core.models import loader

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _wait_for(predicate, what: str, timeout_s: float = 600, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def _phase_running(db, run_id: int, key: str, at_least: int = 0):
    def check():
        run = get_run(db, run_id)
        assert run["status"] in ("queued", "running"), (run["status"], read_log(run_id))
        row = phases.current(db, [run_id]).get(run_id)
        return row if row and row["phase"] == key and row["done"] >= at_least else None
    return check


def _statuses(db, run_id: int) -> dict[str, str]:
    return {r["phase"]: r["status"] for r in phases.list_phases(db, run_id)}


def _adapter_meta(run_id: int) -> dict | None:
    meta = run_dir(run_id) / "adapter" / "nerlab.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def _no_leftovers(run_id: int) -> None:
    names = sorted(p.name for p in run_dir(run_id).iterdir())
    assert not [n for n in names if n.endswith((".partial", ".old"))], names


@pytest.fixture
def tiny(db, bundled_model_path):
    return tiny_project(db, n_train=12, n_dev=2, n_test=2)


def test_stop_while_the_model_loads_ends_there(db, tiny):
    run_id, _ = launcher.submit_training(db, tiny["id"], quick_config())
    _wait_for(_phase_running(db, run_id, "load"), "the load phase")
    # Inside the loading proper (peft and the weights), not before it.
    _wait_for(lambda: "Device: CPU" in read_log(run_id), "the model loading", timeout_s=120)
    asked = time.monotonic()
    assert "nothing to save yet" in launcher.request_stop(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=120, poll_s=0.1)
    took = time.monotonic() - asked
    assert run["status"] == "stopped", read_log(run_id)
    assert took < 30, took  # not after the model has loaded and a training step has run
    assert run["artifact_path"] is None and _adapter_meta(run_id) is None
    statuses = _statuses(db, run_id)
    assert statuses["load"] == "stopped" and statuses["train"] == "skipped", statuses
    print(f"\nstop while loading: stopped {took:.1f} s after the request")


def test_stop_while_training_saves_the_adapter_even_when_the_flag_is_seen_first(db, tiny):
    """The order that ended stopped runs "failed": the worker's heartbeat thread sees the stop
    flag, then `nerlab stop`'s SIGTERM arrives; it is the first signal, not a second stop."""
    cfg = quick_config(max_steps=50, batch_size=1, dev_loss_sentences=1)
    run_id, _ = launcher.submit_training(db, tiny["id"], cfg)
    _wait_for(_phase_running(db, run_id, "train", at_least=1), "a training step")
    asked = time.monotonic()
    db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", [run_id])
    db.conn.commit()
    _wait_for(lambda: "Stop requested: it drops the step in progress" in read_log(run_id),
              "the worker to see the flag", timeout_s=30)
    os.kill(get_run(db, run_id)["pid"], signal.SIGTERM)
    run = launcher.wait(db, run_id, timeout_s=300, poll_s=0.2)
    took = time.monotonic() - asked
    log = read_log(run_id, 400)
    assert run["status"] == "stopped", log
    meta = _adapter_meta(run_id)
    assert meta and meta["saved_because"] == "stop"
    assert meta["result"]["stopped"] is True and 1 <= meta["result"]["steps"] < 50
    assert json.loads((run_dir(run_id) / "result.json").read_text())["stopped"] is True
    assert run["artifact_path"] == str(run_dir(run_id) / "adapter")
    statuses = _statuses(db, run_id)
    assert statuses["train"] == "stopped" and statuses["save"] == "done", statuses
    assert statuses["predict_dev"] == "skipped"
    assert db["predictions"].count_where("run_id = ?", [run_id]) == 0
    _no_leftovers(run_id)
    print(f"\nstop while training: stopped {took:.1f} s after the request")


def test_stop_while_saving_completes_the_save(db, tiny):
    # A large adapter (rank 128: ~150 MB) takes long enough to save for the stop to land there.
    cfg = quick_config(max_steps=1, batch_size=1, rank=128, alpha=256, dev_loss_sentences=0)
    run_id, _ = launcher.submit_training(db, tiny["id"], cfg)
    _wait_for(_phase_running(db, run_id, "save"), "the save phase")
    asked = time.monotonic()
    assert "it saves its adapter and ends" in launcher.request_stop(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=300, poll_s=0.1)
    took = time.monotonic() - asked
    assert run["status"] == "stopped", read_log(run_id)
    meta = _adapter_meta(run_id)
    assert meta and meta["saved_because"] == "end"  # the whole trained adapter, saved completely
    assert (run_dir(run_id) / "adapter" / "adapter_model.safetensors").stat().st_size > 100e6
    statuses = _statuses(db, run_id)
    assert statuses["train"] == "done" and statuses["save"] == "done", statuses
    assert statuses["predict_dev"] == "skipped"
    _no_leftovers(run_id)
    print(f"\nstop while saving: stopped {took:.1f} s after the request")


def test_stop_while_predicting_keeps_the_adapter_and_the_stored_predictions(db, tiny):
    run_id, _ = launcher.submit_training(db, tiny["id"], quick_config(eval_limit=2))
    _wait_for(_phase_running(db, run_id, "predict_test"), "the test predictions")
    asked = time.monotonic()
    assert "keeping its adapter and the predictions" in launcher.request_stop(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=120, poll_s=0.1)
    took = time.monotonic() - asked
    assert run["status"] == "stopped", read_log(run_id)
    assert took < 15, took  # it does not finish the batch it was generating
    assert _adapter_meta(run_id)["saved_because"] == "end"
    stored = {r["split"] for r in db["predictions"].rows_where("run_id = ?", [run_id])}
    assert stored == {"dev"} and db["predictions"].count_where("run_id = ?", [run_id]) == 2
    statuses = _statuses(db, run_id)
    assert statuses["predict_dev"] == "done" and statuses["predict_test"] == "stopped"
    assert statuses["score"] == "skipped"
    print(f"\nstop while predicting: stopped {took:.1f} s after the request")


def test_the_first_conversion_is_a_phase_with_progress_and_a_stop_leaves_nothing(
        db, tiny, tmp_path, monkeypatch, bundled_model_path):
    models = tmp_path / "models"
    monkeypatch.setenv("NERLAB_MODELS_DIR", str(models))
    assert loader.needs_conversion(loader.config.BUNDLED_MODEL)
    run_id, _ = launcher.submit_training(db, tiny["id"], quick_config())
    row = _wait_for(_phase_running(db, run_id, "convert", at_least=20), "conversion progress")
    assert row["unit"] == "%" and row["title"].startswith("Convert the bundled model")
    asked = time.monotonic()
    launcher.request_stop(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=120, poll_s=0.1)
    took = time.monotonic() - asked
    assert run["status"] == "stopped", read_log(run_id)
    assert took < 30, took
    statuses = _statuses(db, run_id)
    assert statuses["convert"] == "stopped" and statuses["load"] == "skipped"
    assert not [p.name for p in models.iterdir() if not p.name.endswith(".lock")]  # no half model
    print(f"\nstop while converting: stopped {took:.1f} s after the request")
    # The lock is free and a conversion from scratch (the GGUF file read once, see
    # loader._gguf_read_once) gives exactly the model the plain transformers path gave.
    reports: list[int] = []
    started = time.monotonic()
    folder = loader.ensure_bundled_model(progress=lambda done, total: reports.append(done))
    print(f"conversion: {time.monotonic() - started:.1f} s")
    assert reports[0] == 0 and reports[-1] == 100 and reports == sorted(reports)
    from safetensors.torch import load_file

    ours = load_file(str(folder / "model.safetensors"))
    reference = load_file(str(Path(bundled_model_path) / "model.safetensors"))
    assert ours.keys() == reference.keys()
    assert all(ours[k].equal(reference[k]) for k in ours)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_text() == (Path(bundled_model_path) / name).read_text(), name


def test_nerlab_train_wait_prints_every_phase_and_the_log_has_no_noise(db, tiny, home):
    env = {**os.environ, "NERLAB_HOME": str(home)}
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "core.cli", "train", "tiny", "--preset", "Small model on CPU",
         "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--max-length", "192",
         "--dev-loss-sentences", "2", "--eval-limit", "2", "--wait"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    run_id = int(r.stdout.splitlines()[0])
    lines = r.stdout.splitlines()
    expected = ["[1/8] ✓ Load the model", "[2/8] ✓ Prepare the data", "[3/8] Train (2 steps)…",
                "step 1/2, loss", "step 2/2, loss", "[3/8] ✓ Train · 2 / 2 steps",
                "[4/8] ✓ Dev loss · 2 / 2 sentences", "[5/8] ✓ Save the adapter",
                "[6/8] ✓ Predict dev · 2 / 2 sentences", "[7/8] ✓ Predict test · 2 / 2 sentences",
                "[8/8] ✓ Score · 2 / 2 splits", f"Run {run_id} finished; adapter:"]
    positions = [next((i for i, line in enumerate(lines) if e in line), -1) for e in expected]
    assert -1 not in positions and positions == sorted(positions), r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    rows = phases.list_phases(db, run_id)
    assert [p["status"] for p in rows] == ["done"] * 8
    log = read_log(run_id, 400)
    for noise in ("it/s]", "FutureWarning", "kernels-community", "Loading weights"):
        assert noise not in log, noise
    print(f"\nphases of a 2-step run ({time.monotonic() - started:.0f} s in all): "
          + "; ".join(f"{p['phase']} {p['seconds']:.1f} s" for p in rows))


def test_try_keeps_models_loaded_between_sentences(db, tiny):
    """A fine-tuned run and a zero-shot run of the same base model, tried twice: the second
    sentence finds both models in memory; the answers are those of the run's own model."""
    from core.models import adapters
    from core.prediction import baselines, tryout
    from core.prediction.predict import predict_examples

    train_id, _ = launcher.submit_training(db, tiny["id"], quick_config(max_steps=1, eval_after=False))
    assert launcher.wait(db, train_id, timeout_s=600)["status"] == "finished", read_log(train_id)
    zero_id = create_run(db, tiny["id"], "zero-shot", baselines.settings("zero-shot", {}))
    db.execute("UPDATE runs SET status = 'finished' WHERE id = ?", [zero_id])
    db.conn.commit()
    sentence = "Aspirin caused hypotension ."

    def ask(text: str) -> tuple[dict, float]:
        started = time.monotonic()
        request_id = tryout.request_try(db, tiny["id"], text, [train_id, zero_id])
        seen_stage = set()

        def answered():
            req = tryout.get_try(db, request_id)
            seen_stage.update(o.get("stage") for o in req["outputs"].values() if "stage" in o)
            return req if req["status"] in ("finished", "failed") else None

        req = _wait_for(answered, "the try answer", timeout_s=600, poll_s=0.05)
        assert req["status"] == "finished", req
        req["stages"] = seen_stage
        return req, time.monotonic() - started

    first, first_s = ask(sentence)
    second, second_s = ask(sentence)
    for rid in (train_id, zero_id):
        a, b = first["outputs"][str(rid)], second["outputs"][str(rid)]
        assert a["status"] != "error" and b["status"] != "error", (a, b)
        assert b["cached"] and b["load_s"] < 0.5
        assert a["raw"] == b["raw"]  # the same model answers the same
    # The first sentence loads the base model once, for the fine-tuned run; the zero-shot run
    # of the same base model finds it in memory (the adapter is switched off for it).
    assert not first["outputs"][str(train_id)]["cached"]
    assert first["outputs"][str(zero_id)]["cached"]
    assert tryout.LOADING in first["stages"] or first_s > second_s
    assert second_s < first_s
    pid = tryout.server_pid()
    assert pid and first["pid"] == second["pid"] == pid  # one process served both
    # The answers are those of each run's own model: the adapter for the fine-tuned run, the
    # bare base model for the zero-shot run (checked with a fresh load in this process).
    model, tok = adapters.load_adapter(adapters.adapter_path(db, train_id))
    tok.padding_side = "left"
    from core.data.spans import Example

    example = Example(id=-1, text=sentence, spans=(), split="test")
    tuned = predict_examples(model, tok, baselines.run_plan(db, get_run(db, train_id)), [example],
                             batch_size=1)[0]
    assert tuned["raw_output"] == first["outputs"][str(train_id)]["raw"]
    with model.disable_adapter():
        bare = predict_examples(model, tok, baselines.run_plan(db, get_run(db, zero_id)), [example],
                                batch_size=1)[0]
    assert bare["raw_output"] == first["outputs"][str(zero_id)]["raw"]
    print(f"\ntry a sentence, two runs: first {first_s:.1f} s "
          f"({', '.join(tryout.timing_text(first['outputs'][str(r)]) for r in (train_id, zero_id))}),"
          f" second {second_s:.1f} s")
