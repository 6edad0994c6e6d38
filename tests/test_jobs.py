"""Runs as background processes: queue, stop, kill -9 detection, error classes, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cli.main import build_parser, main
from core.cli.run_cmds import config_from_args
from core.data import projects
from core.data.runs import create_run, get_run, list_runs, log_path, read_log, run_dir, run_metrics
from core.errors import DataError, NotFound
from core.jobs import launcher, worker
from core.procs import pid_alive
from core.training.runconfig import RunConfig, default_preset_for, get_preset


@pytest.fixture
def project(db):

    return projects.create_project(db, "jobs", labels=["Chemical"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_create_run_is_queued_with_its_config(db, project):
    cfg = RunConfig().with_overrides(rank=4)
    run_id = create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    run = get_run(db, run_id)
    assert run["status"] == "queued" and run["name"] == f"train-{run_id}"
    assert RunConfig.from_dict(run["config"]) == cfg
    assert json.loads((run_dir(run_id) / "config.json").read_text())["lora"]["rank"] == 4
    assert [r["id"] for r in list_runs(db, project["id"])] == [run_id]
    with pytest.raises(NotFound):
        get_run(db, 999)


def test_run_list_carries_the_last_training_loss_past_a_dev_loss_row(db, project):
    from core.ui.train_view import run_label, runs_table

    cfg = RunConfig()
    run_id = create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    ctx.progress(1, 2, loss=0.9)
    ctx.progress(2, 2, loss=0.5)
    ctx.progress(2, 2, eval_loss=0.7)
    (row,) = list_runs(db, project["id"])
    assert row["last_metrics"]["eval_loss"] == 0.7 and row["last_metrics"]["loss"] is None
    assert row["last_loss"] == 0.5
    (table,) = runs_table([row])
    assert table["loss"] == "0.5000" and table["progress"] == "2/2"
    fresh = create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    (table, _) = runs_table(list_runs(db, project["id"]))
    assert table["id"] == fresh and table["loss"] == "—"  # no step yet: a dash, not "None"
    assert run_label(row) == f"#{run_id} train-{run_id} · loraplus"


def test_stopping_a_queued_run_removes_it_from_the_queue(db, project):
    run_id = create_run(db, project["id"], "train", {})
    assert "removed from the queue" in launcher.request_stop(db, run_id)
    run = get_run(db, run_id)
    assert run["status"] == "stopped" and run["stop_requested"] == 1
    assert "already ended" in launcher.request_stop(db, run_id)


def test_refresh_fails_a_running_run_whose_process_is_gone(db, project):
    run_id = create_run(db, project["id"], "train", {})
    log_path(run_id).write_text("loading the model\nstep 1\n")
    db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ? WHERE id = ?",
               [_dead_pid(), "2020-01-01T00:00:00+00:00", run_id])
    db.conn.commit()
    assert launcher.refresh(db, start_queued=False) == [run_id]
    run = get_run(db, run_id)
    assert run["status"] == "failed" and run["finished_at"]
    assert "ended without reporting" in run["error_message"]
    assert "step 1" in run["log_tail"]
    assert launcher.refresh(db, start_queued=False) == []


def test_compute_env_preloads_tcmalloc_unless_told_otherwise(tmp_path, monkeypatch):
    from core import procs

    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv(procs.TCMALLOC_ENV, str(lib))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = procs.compute_env({"PATH": "/bin"})
    assert env["LD_PRELOAD"] == str(lib) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2**40  # no "large alloc" notices
    # bounded per-shape kernel caches, above the ~31 kernels one micro-batch reuses
    assert 64 <= int(env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]) < 1024
    assert 32 <= int(env["LRU_CACHE_CAPACITY"]) < 1024
    assert procs.compute_env({"LRU_CACHE_CAPACITY": "1"})["LRU_CACHE_CAPACITY"] == "1"
    # another preload is kept after it; a malloc the caller chose is left alone
    assert procs.compute_env({"LD_PRELOAD": "/x/libfoo.so"})["LD_PRELOAD"] == f"{lib} /x/libfoo.so"
    assert procs.compute_env({"LD_PRELOAD": "/x/libjemalloc.so.2"})["LD_PRELOAD"] == "/x/libjemalloc.so.2"
    assert procs.compute_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv(procs.TCMALLOC_ENV, "0")
    assert "LD_PRELOAD" not in procs.compute_env({})
    monkeypatch.setenv(procs.TCMALLOC_ENV, str(tmp_path / "missing.so"))
    assert procs.tcmalloc() is None and "LD_PRELOAD" not in procs.compute_env({})


def test_spawned_processes_run_under_tcmalloc_and_report_their_peak(tmp_path):
    """A real child through spawn: tcmalloc mapped (run.sh installs it where it can), its peak
    memory read."""
    from core import procs

    if procs.tcmalloc() is None:
        pytest.skip("tcmalloc is not installed here (apt-get install libtcmalloc-minimal4)")
    log = tmp_path / "child.log"
    code = ("from core import procs; b = b\"x\" * (200 * 2**20); del b; "
            "print(procs.allocator(), procs.peak_rss_mb() > 200)")
    pid = procs.spawn([sys.executable, "-c", code], log)
    deadline = time.monotonic() + 60
    while pid_alive(pid, "python") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.read_text().split() == ["tcmalloc", "True"], log.read_text()


def test_workers_memory_stays_flat_over_matmuls_of_ever_new_shapes():
    """bf16 matrix products of 200 new shapes (as packed micro-batches give): oneDNN and ideep
    keep an entry per shape; in a process started as workers are, the caches are bounded and
    the resident set barely grows, where their default bounds let it grow by ~1 MB a shape."""
    from core import procs
    from core.models.loader import cpu_bf16

    if not cpu_bf16():
        pytest.skip("this CPU trains in float32, whose matrix products never crept")
    code = (
        "import torch\n"
        "def rss():\n"
        "    return int(next(x for x in open('/proc/self/status') if x.startswith('VmRSS'))"
        ".split()[1]) // 1024\n"
        "torch.set_num_threads(1)\n"
        "w = torch.randn(1536, 576, dtype=torch.bfloat16, requires_grad=True)\n"
        "def step(n):\n"
        "    torch.nn.functional.linear(torch.randn(n, 576, dtype=torch.bfloat16), w).sum()"
        ".backward()\n"
        "for n in range(100, 120): step(n)\n"
        "before = rss()\n"
        "for n in range(200, 400): step(n)\n"
        "print(rss() - before)\n")

    def growth(env: dict) -> int:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        return int(out.stdout.split()[-1])

    workers = procs.compute_env(dict(os.environ))
    unbounded = {**workers, **dict.fromkeys(procs.KERNEL_CACHES, "1024")}
    bounded_mb, unbounded_mb = growth(workers), growth(unbounded)
    assert unbounded_mb > 100, unbounded_mb  # the creep is there to bound
    assert bounded_mb < unbounded_mb / 3, (bounded_mb, unbounded_mb)


def test_peak_rss_is_the_high_water_mark_until_reset():
    """In a fresh process (the test process's own memory depends on the tests before it): a
    300 MB block freed, glibc hands it straight back, the reset peak is far below it."""
    from core import procs

    if procs.peak_rss_mb() is None:
        pytest.skip("no /proc/self/status here")
    code = ("from core import procs; b = b'x' * (300 * 2**20); del b; high = procs.peak_rss_mb(); "
            "procs.reset_peak_rss(); print(int(high), int(procs.peak_rss_mb()))")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(Path(__file__).resolve().parent.parent), timeout=60)
    high, after = map(int, out.stdout.split())
    assert high > 300 and after < high - 200, out.stdout


def test_pid_alive():
    assert not pid_alive(None, launcher.WORKER)
    assert not pid_alive(_dead_pid(), launcher.WORKER)
    assert not pid_alive(os.getpid(), launcher.WORKER)  # alive, but not a worker: a reused pid
    assert pid_alive(os.getpid(), "python")


def test_error_classification():
    cfg = RunConfig().to_dict()
    kind, msg = worker.classify_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), cfg)
    assert kind == "oom"
    assert "batch size (now 4" in msg and "max length (now 512" in msg and "QLoRA" in msg
    assert "gradient checkpointing" in msg
    from core.errors import ModelError

    assert worker.classify_error(ModelError("Cannot load 'x/y'"))[0] == "model"
    assert worker.classify_error(DataError("no sentences"))[0] == "data"
    assert worker.classify_error(OSError("x/y is not a valid model identifier"))[0] == "model"
    kind, msg = worker.classify_error(ZeroDivisionError("division by zero"))
    assert kind == "other" and msg.startswith("ZeroDivisionError")


def test_worker_ignores_a_run_that_is_not_queued(db, project, capsys):
    run_id = create_run(db, project["id"], "train", {})
    launcher.request_stop(db, run_id)
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
    command = launcher.cli_command({"config": cfg.to_dict()}, "jobs")
    assert command.startswith("nerlab train jobs --preset DoRA --rank 4")
    assert config_from_args(build_parser().parse_args(command.split()[1:])) == cfg
    # Without --preset: the Train page's default on this machine, not other numbers.
    default = config_from_args(build_parser().parse_args(["train", "jobs"]))
    assert default == get_preset(default_preset_for(default.base_model, cuda=False)).config()
    assert (default.train.lr, default.lora.dropout) == (5e-4, 0.0)
    plain = config_from_args(build_parser().parse_args(["train", "jobs", "--preset", "none"]))
    assert plain == RunConfig() and "--preset none" in launcher.cli_command({"config": plain.to_dict()}, "jobs")


def test_cli_runs_and_stop(db, project, capsys):
    run_id = create_run(db, project["id"], "train", RunConfig().to_dict())
    launcher.request_stop(db, run_id)
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
    from core.training.runconfig import get_preset

    settings = dict(max_steps=200, batch_size=1, grad_accum=1, max_length=160,
                    dev_loss_sentences=0, eval_after=False)
    settings.update(overrides)
    return get_preset("Small model on CPU").config(**settings).to_dict()


@pytest.mark.slow
def test_kill_9_is_detected_and_the_database_stays_intact(db, tiny):
    run_id = create_run(db, tiny["id"], "train", _long_config())
    assert launcher.launch(db, run_id)
    run = _wait_for(lambda: (r := get_run(db, run_id))["status"] == "running" and r)
    assert launcher.active_run(db)["id"] == run_id
    _wait_for(lambda: run_metrics(db, run_id))  # mid-training, writing progress rows
    os.kill(run["pid"], signal.SIGKILL)
    _wait_for(lambda: not pid_alive(run["pid"], launcher.WORKER), timeout_s=30)
    assert launcher.refresh(db, start_queued=False) == [run_id]
    run = get_run(db, run_id)
    assert run["status"] == "failed" and "killed" in run["error_message"]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(run_metrics(db, run_id)) >= 1
    assert launcher.active_run(db) is None


@pytest.mark.slow
def test_stop_keeps_an_adapter_and_the_queue_moves_on(db, tiny):
    """The second run waits while the first is active; stopping the first saves its adapter and
    ends it "stopped"; its worker then starts the second, whose unloadable model is classified."""
    first = create_run(db, tiny["id"], "train", _long_config())
    second = create_run(db, tiny["id"], "train",
                             _long_config(base_model="/nonexistent/model-folder"))
    assert launcher.launch(db, first)
    _wait_for(lambda: get_run(db, first)["status"] == "running")
    assert launcher.launch(db, second) is False
    assert get_run(db, second)["status"] == "queued"
    # Once it trains (a stop while the model loads ends the run there, with nothing to save).
    _wait_for(lambda: any(m["loss"] is not None for m in run_metrics(db, first)))
    assert "stopping" in launcher.request_stop(db, first)
    run = launcher.wait(db, first, timeout_s=240)
    assert run["status"] == "stopped", read_log(first)
    assert (run_dir(first) / "adapter" / "adapter_model.safetensors").is_file()
    meta = json.loads((run_dir(first) / "adapter" / "nerlab.json").read_text())
    assert meta["saved_because"] == "stop"
    run2 = launcher.wait(db, second, timeout_s=240)
    assert run2["status"] == "failed" and run2["error_kind"] == "model", read_log(second)
    assert "/nonexistent/model-folder" in run2["error_message"]
    assert run2["log_tail"] and "Traceback" not in run2["log_tail"]
    assert (run_dir(second) / "traceback.txt").is_file()
