"""Runs as background processes: queue, stop, kill -9 detection, error classes, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core import jobs, worker
from core.cli import build_parser, main
from core.jobs_cli import config_from_args
from core.runconfig import RunConfig
from core.train import DataError


@pytest.fixture
def project(db):
    from core import projects

    return projects.create_project(db, "jobs", labels=["Chemical"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_create_run_is_queued_with_its_config(db, project):
    cfg = RunConfig().with_overrides(rank=4)
    run_id = jobs.create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    run = jobs.get_run(db, run_id)
    assert run["status"] == "queued" and run["name"] == f"train-{run_id}"
    assert RunConfig.from_dict(run["config"]) == cfg
    assert json.loads((jobs.run_dir(run_id) / "config.json").read_text())["lora"]["rank"] == 4
    assert [r["id"] for r in jobs.list_runs(db, project["id"])] == [run_id]
    with pytest.raises(jobs.NotFound):
        jobs.get_run(db, 999)


def test_run_list_carries_the_last_training_loss_past_a_dev_loss_row(db, project):
    from core.ui.train_view import run_label, runs_table

    cfg = RunConfig()
    run_id = jobs.create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    ctx = worker.RunContext(db, jobs.get_run(db, run_id), jobs.run_dir(run_id), cfg.to_dict())
    ctx.progress(1, 2, loss=0.9)
    ctx.progress(2, 2, loss=0.5)
    ctx.progress(2, 2, eval_loss=0.7)
    (row,) = jobs.list_runs(db, project["id"])
    assert row["last_metrics"]["eval_loss"] == 0.7 and row["last_metrics"]["loss"] is None
    assert row["last_loss"] == 0.5
    (table,) = runs_table([row])
    assert table["loss"] == 0.5 and table["progress"] == "2/2"
    assert run_label(row) == f"#{run_id} train-{run_id} · loraplus"


def test_stopping_a_queued_run_removes_it_from_the_queue(db, project):
    run_id = jobs.create_run(db, project["id"], "train", {})
    assert "removed from the queue" in jobs.request_stop(db, run_id)
    run = jobs.get_run(db, run_id)
    assert run["status"] == "stopped" and run["stop_requested"] == 1
    assert "already ended" in jobs.request_stop(db, run_id)


def test_refresh_fails_a_running_run_whose_process_is_gone(db, project):
    run_id = jobs.create_run(db, project["id"], "train", {})
    jobs.log_path(run_id).write_text("loading the model\nstep 1\n")
    db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ? WHERE id = ?",
               [_dead_pid(), "2020-01-01T00:00:00+00:00", run_id])
    db.conn.commit()
    assert jobs.refresh(db, start_queued=False) == [run_id]
    run = jobs.get_run(db, run_id)
    assert run["status"] == "failed" and run["finished_at"]
    assert "ended without reporting" in run["error_message"]
    assert "step 1" in run["log_tail"]
    assert jobs.refresh(db, start_queued=False) == []


def test_pid_alive():
    assert not jobs.pid_alive(None)
    assert not jobs.pid_alive(_dead_pid())
    assert not jobs.pid_alive(os.getpid())  # alive, but not a worker: a reused pid


def test_error_classification():
    cfg = RunConfig().to_dict()
    kind, msg = worker.classify_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), cfg)
    assert kind == "oom"
    assert "batch size (now 4" in msg and "max length (now 512" in msg and "QLoRA" in msg
    assert "gradient checkpointing" in msg
    from core.models import ModelError

    assert worker.classify_error(ModelError("Cannot load 'x/y'"))[0] == "model"
    assert worker.classify_error(DataError("no sentences"))[0] == "data"
    assert worker.classify_error(OSError("x/y is not a valid model identifier"))[0] == "model"
    kind, msg = worker.classify_error(ZeroDivisionError("division by zero"))
    assert kind == "other" and msg.startswith("ZeroDivisionError")


def test_worker_ignores_a_run_that_is_not_queued(db, project, capsys):
    run_id = jobs.create_run(db, project["id"], "train", {})
    jobs.request_stop(db, run_id)
    assert worker.main([str(run_id)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert worker.main(["abc"]) == 2


def test_cli_flags_build_the_config_and_the_equivalent_command(db, project):
    args = build_parser().parse_args([
        "train", "jobs", "--preset", "DoRA", "--rank", "4", "--max-steps", "3",
        "--targets", "q_proj,v_proj", "--no-eval-after", "--lr", "3e-4",
    ])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.lora.rank, cfg.train.max_steps, cfg.train.lr) == ("dora", 4, 3, 3e-4)
    assert cfg.lora.targets == ("q_proj", "v_proj") and cfg.train.eval_after is False
    assert cfg.lora.alpha == 64.0  # from the preset
    command = jobs.cli_command({"config": cfg.to_dict()}, "jobs")
    assert command.startswith("nerlab train jobs --method dora")
    rebuilt = config_from_args(build_parser().parse_args(command.split()[1:]))
    assert rebuilt.with_overrides(preset="DoRA") == cfg


def test_cli_runs_and_stop(db, project, capsys):
    run_id = jobs.create_run(db, project["id"], "train", RunConfig().to_dict())
    jobs.request_stop(db, run_id)
    capsys.readouterr()
    assert main(["runs", "jobs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == run_id and rows[0]["status"] == "stopped"
    assert main(["stop", str(run_id)]) == 0
    assert "already ended" in capsys.readouterr().out
    assert main(["stop", "424242"]) == 1
    assert main(["train", "jobs", "--rank", "0"]) == 1
    assert "got 0" in capsys.readouterr().err


# -- real worker processes with the bundled model ------------------------------------------------


def _wait_for(predicate, timeout_s: float = 240, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("timed out")


@pytest.fixture
def tiny(db, bundled_model_path):
    from test_train import tiny_project

    return tiny_project(db, n_train=12, n_dev=1, n_test=1)


def _long_config(**overrides) -> dict:
    from core.runconfig import get_preset

    settings = dict(max_steps=200, batch_size=1, grad_accum=1, max_length=160,
                    dev_loss_sentences=0, eval_after=False)
    settings.update(overrides)
    return get_preset("Small model on CPU").config(**settings).to_dict()


@pytest.mark.slow
def test_kill_9_is_detected_and_the_database_stays_intact(db, tiny):
    run_id = jobs.create_run(db, tiny["id"], "train", _long_config())
    assert jobs.launch(db, run_id)
    run = _wait_for(lambda: (r := jobs.get_run(db, run_id))["status"] == "running" and r)
    assert jobs.active_run(db)["id"] == run_id
    _wait_for(lambda: jobs.run_metrics(db, run_id))  # mid-training, writing progress rows
    os.kill(run["pid"], signal.SIGKILL)
    _wait_for(lambda: not jobs.pid_alive(run["pid"]), timeout_s=30)
    assert jobs.refresh(db, start_queued=False) == [run_id]
    run = jobs.get_run(db, run_id)
    assert run["status"] == "failed" and "killed" in run["error_message"]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(jobs.run_metrics(db, run_id)) >= 1
    assert jobs.active_run(db) is None


@pytest.mark.slow
def test_stop_keeps_an_adapter_and_the_queue_moves_on(db, tiny):
    """The second run waits while the first is active; stopping the first saves its adapter and
    ends it "stopped"; its worker then starts the second, whose unloadable model is classified."""
    first = jobs.create_run(db, tiny["id"], "train", _long_config())
    second = jobs.create_run(db, tiny["id"], "train",
                             _long_config(base_model="/nonexistent/model-folder"))
    assert jobs.launch(db, first)
    _wait_for(lambda: jobs.get_run(db, first)["status"] == "running")
    assert jobs.launch(db, second) is False
    assert jobs.get_run(db, second)["status"] == "queued"
    assert "stopping" in jobs.request_stop(db, first)
    run = jobs.wait(db, first, timeout_s=240)
    assert run["status"] == "stopped", jobs.read_log(first)
    assert (jobs.run_dir(first) / "adapter" / "adapter_model.safetensors").is_file()
    meta = json.loads((jobs.run_dir(first) / "adapter" / "nerlab.json").read_text())
    assert meta["saved_because"] == "stop"
    run2 = jobs.wait(db, second, timeout_s=240)
    assert run2["status"] == "failed" and run2["error_kind"] == "model", jobs.read_log(second)
    assert "/nonexistent/model-folder" in run2["error_message"]
    assert run2["log_tail"]
