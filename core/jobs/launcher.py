"""Background runs: launch (one at a time, the rest queued), watch, stop."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config
from core.data import phases
from core.data.db import now
from core.data.phases import format_duration  # noqa: F401 - the pages and the CLI use it from here
from core.data.runs import (
    LOG_TAIL_LINES,
    _decode,
    create_run,
    fail_run,
    get_run,
    log_path,
    read_log,
    run_dir,
)
from core.errors import NerlabError
from core.models.adapters import ADAPTER_DIR, tidy_adapter
from core.prediction import baselines
from core.prediction.crf import CRF_FILE, NATIVE_FILE
from core.prediction.encoder_folder import ENCODER_DIR, tidy_encoder
from core.procs import file_lock, free_port, pid_alive, spawn
from core.prompts.plan import run_template
from core.training import launch as launch_settings
from core.training.launch import DEFAULT_CONFIG, Launch, needs_accelerate, processes
from core.training.runconfig import FIELDS, NO_PRESET, PRESETS, RunConfig, get_preset

#: A running worker whose heartbeat is older than this is considered hung.
HEARTBEAT_STALE_S = 300
#: How often the worker beats (see core.jobs.worker).
HEARTBEAT_EVERY_S = 5
#: What the command line of a run's worker holds (liveness checks, see core.procs.pid_alive).
WORKER = "core.jobs.worker"
MERGER = "core.cli merge"


def is_light(run: dict) -> bool:
    """A run that needs no accelerator and only seconds of CPU: a CRF, or a prediction or
    suggestion job with one. It starts at once, beside the run holding the machine, and never
    holds it (the Label page's automatic CRF must not wait for an hour of fine-tuning)."""
    cfg = run.get("config") or {}
    if isinstance(cfg, str):
        cfg = _decode(run)["config"]
    return run["kind"] == "crf" or (run["kind"] in ("predict", "suggest")
                                    and cfg.get("source_kind") == "crf")


def active_run(db: Database) -> dict | None:
    """The run currently holding the machine (running, or queued with a live worker), if any;
    light runs (:func:`is_light`) never hold it."""
    for row in db.query(
        "SELECT * FROM runs WHERE status = 'running' OR (status = 'queued' AND pid IS NOT NULL)"
        " ORDER BY id"
    ):
        if row["pid"] and pid_alive(row["pid"], WORKER) and not is_light(_decode(row)):
            return _decode(row)
    return None


def worker_command(run_id: int, gpus: int = 1, port: int | None = None,
                   setup: Launch | None = None) -> list[str]:
    """The argument list that runs a run's worker: ``python -m core.jobs.worker ID``, or for a run on
    several GPUs (``gpus`` per machine) or with launch settings (:mod:`core.training.launch`: the
    user's accelerate config, several machines) the same module under ``accelerate launch``
    (with the run's own accelerate config, see :func:`write_accelerate_config`, unless the user's
    is asked for)."""
    setup = setup or Launch()
    worker = ["-m", WORKER, str(int(run_id))]
    if not needs_accelerate(gpus, setup):
        return [sys.executable, *worker]
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    user = setup.user_config
    if user is None:
        cmd += ["--config_file", str(run_dir(run_id) / ACCELERATE_CONFIG), "--multi_gpu"]
    elif setup.config_file != DEFAULT_CONFIG:
        cmd += ["--config_file", str(user)]
    if user is None or gpus > 1:  # else the user's config says how many
        cmd += ["--num_processes", str(processes(gpus, setup))]
    if setup.num_machines > 1:
        cmd += ["--num_machines", str(setup.num_machines), "--machine_rank",
                str(setup.machine_rank), "--main_process_ip", setup.main_process_ip]
    port = setup.main_process_port or port or free_port()
    return [*cmd, "--main_process_port", str(port), *worker]


ACCELERATE_CONFIG = "accelerate.yaml"


def write_accelerate_config(run_id: int, gpus: int, setup: Launch | None = None) -> Path:
    """The accelerate config a multi-GPU run is launched with, in its folder: ``gpus`` processes
    per machine, no mixed precision or compilation from accelerate (the trainer handles bf16).
    Without it ``accelerate launch`` would read the user's default config (its GPU ids, FSDP or
    DeepSpeed settings); CUDA_VISIBLE_DEVICES picks the GPUs. The user's own config is used
    instead when the run asks for it (``--accelerate-config``): its FSDP settings then apply."""
    setup = setup or Launch()
    path = run_dir(run_id) / ACCELERATE_CONFIG
    path.write_text(
        f"# Written by NERLab for run {run_id}: how `accelerate launch` starts its processes.\n"
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n"
        f"num_machines: {setup.num_machines}\nmachine_rank: {setup.machine_rank}\n"
        f"num_processes: {processes(gpus, setup)}\ngpu_ids: all\n"
        "mixed_precision: 'no'\nuse_cpu: false\ndebug: false\ndynamo_config: {}\n"
    )
    return path


def run_gpus(run: dict) -> int:
    """How many processes a run's worker starts (``train.gpus`` of a training run, ``gpus`` of a
    ``nerlab predict`` job, else 1)."""
    if run.get("kind") == "predict":
        return max(1, int((run.get("config") or {}).get("gpus") or 1))
    if run.get("kind") != "train":
        return 1
    return max(1, int(((run.get("config") or {}).get("train") or {}).get("gpus") or 1))


def launch(db: Database, run_id: int) -> bool:
    """Start the run's worker unless another run holds the machine; return True if started.

    A run that cannot start now stays "queued"; the worker of the active run starts the next
    queued run when it ends (and :func:`refresh` does, when a worker died).
    """
    with file_lock(config.home() / ".launch.lock"):  # the UI, the CLI and finishing workers
        run = get_run(db, run_id)
        if run["status"] != "queued":
            raise NerlabError(f"Run {run_id} is {run['status']}; only a queued run can start.")
        if run["pid"] and pid_alive(run["pid"], WORKER):
            return True
        busy = None if is_light(run) else active_run(db)
        if busy is not None and busy["id"] != run_id:
            return False
        _spawn(db, run_id)
        return True


def _spawn(db: Database, run_id: int) -> int:
    gpus = run_gpus(get_run(db, run_id))
    setup = launch_settings.load(run_dir(run_id))
    if needs_accelerate(gpus, setup) and setup.user_config is None:
        write_accelerate_config(run_id, gpus, setup)
    pid = spawn(worker_command(run_id, gpus, setup=setup), log_path(run_id))
    db.execute("UPDATE runs SET pid = ? WHERE id = ?", [pid, run_id])
    db.conn.commit()
    return pid


def launch_next(db: Database) -> int | None:
    """Start the oldest queued run if nothing is active (and any light run still waiting);
    return its id."""
    waiting = [_decode(r) for r in db.query(
        "SELECT * FROM runs WHERE status = 'queued' AND stop_requested = 0 AND pid IS NULL"
        " ORDER BY id")]
    for run in waiting:
        if is_light(run):
            with contextlib.suppress(NerlabError):
                launch(db, run["id"])
    if active_run(db) is not None:
        return None
    for row in db.query("SELECT * FROM runs WHERE status = 'queued' AND stop_requested = 0 ORDER BY id"):
        if is_light(_decode(row)):
            continue
        try:
            if launch(db, row["id"]):
                return row["id"]
        except NerlabError:
            continue
        return None
    return None


def request_stop(db: Database, run_id: int) -> str:
    """Ask a run to stop; returns what happens, in a sentence for the user.

    A queued run is removed from the queue at once. A running one gets the ``stop_requested``
    flag (with the time it was asked, so the page can say "stopping…" at once) and one SIGTERM;
    its worker ends "stopped": at once while it loads its model; while it trains, dropping the
    step in progress and saving the adapter as the last whole step left it (on several GPUs:
    after the current step); once the save is complete while it saves; at once while it predicts,
    keeping the adapter and the predictions stored so far. Asking again sends no second signal
    (a worker takes a second signal as "end at once").
    """
    run = get_run(db, run_id)
    if run["status"] in config.FINAL_STATUSES:
        return f"Run {run_id} already ended ({run['status']})."
    again = bool(run["stop_requested"])
    db.execute("UPDATE runs SET stop_requested = 1, stop_requested_at = COALESCE("
               "stop_requested_at, ?) WHERE id = ?", [now(), run_id])
    db.conn.commit()
    alive = bool(run["pid"]) and pid_alive(run["pid"], WORKER)
    if run["status"] == "queued" and not alive:
        db.execute(
            "UPDATE runs SET status = 'stopped', finished_at = ? WHERE id = ? AND status = 'queued'",
            [now(), run_id],
        )
        db.conn.commit()
        return f"Run {run_id} was removed from the queue."
    if alive and not again:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(run["pid"], signal.SIGTERM)
    what = stop_outcome(phases.current(db, [run_id]).get(run_id))
    return f"Run {run_id} is {'already ' if again else ''}stopping: {what}"


def stop_outcome(phase: dict | None) -> str:
    """What a stop does in this phase (a row of :func:`core.data.phases.current`)."""
    key = (phase or {}).get("phase", "")
    if key == "train":
        return ("it drops the step in progress, saves its adapter as the last step left it and "
                "ends.")
    if key in ("dev_loss", "save"):
        return "it saves its adapter and ends."
    if key == "encoder_train":
        return ("it drops the step in progress, saves the encoder as the last step left it and "
                "ends.")
    if key == "encoder_save":
        return "it saves the encoder and ends."
    if key.startswith("predict") or key == "score":
        return "it ends now, keeping its adapter and the predictions stored so far."
    return "it ends now (nothing to save yet)."


def _age_s(stamp: str | None) -> float | None:
    if not stamp:
        return None
    then = _dt.datetime.fromisoformat(stamp)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def _end_dead_run(db: Database, row: dict, status: str, kind: str | None, message: str) -> None:
    """A run whose worker is gone: record how it ended, close its phases, and remove what a save
    it was in the middle of left behind (keeping the newest complete adapter or encoder)."""
    run_id = row["id"]
    with contextlib.suppress(OSError):
        folder = config.runs_dir() / str(run_id)
        (folder / CRF_FILE).with_suffix(".partial").unlink(missing_ok=True)  # see crf.save_crf
        (folder / f"{NATIVE_FILE}.partial").unlink(missing_ok=True)
        adapter = tidy_adapter(folder / ADAPTER_DIR) or tidy_encoder(folder / ENCODER_DIR)
        if adapter is not None and not row.get("artifact_path"):
            db.execute("UPDATE runs SET artifact_path = ? WHERE id = ?", [str(adapter), run_id])
            db.conn.commit()
    if status == "failed":
        fail_run(db, run_id, kind or "other", message)
    else:
        db.execute("UPDATE runs SET status = ?, error_message = ?, log_tail = ?, finished_at = ?"
                   " WHERE id = ? AND status IN ('queued', 'running')",
                   [status, message, read_log(run_id, LOG_TAIL_LINES), now(), run_id])
        db.conn.commit()
    phases.close(db, run_id, status)


def refresh(db: Database, start_queued: bool = True) -> list[int]:
    """Settle runs whose worker died (or hangs), with the reason; return their ids.

    A "running" run whose process is gone (killed, crashed hard, machine rebooted) or whose
    heartbeat is older than :data:`HEARTBEAT_STALE_S` fails — or ends "stopped" when a stop had
    been asked for; so does a queued run whose worker died before it started. A half-written
    adapter it leaves is removed. Then, with ``start_queued``, the next queued run starts if the
    machine is free.
    """
    ended: list[int] = []
    for row in list(db.query("SELECT * FROM runs WHERE status IN ('queued', 'running')")):
        pid = row["pid"]
        if row["status"] == "queued" and not pid:
            continue
        if not pid_alive(pid, WORKER):
            if row["stop_requested"]:
                _end_dead_run(db, row, "stopped", None,
                              f"The worker (pid {pid}) ended without reporting after the stop was "
                              "asked for. The adapter saved last, if any, is kept.")
            elif row["status"] == "queued":
                _end_dead_run(db, row, "failed", "other",
                              f"The worker (pid {pid}) exited before the run started; see the log.")
            else:
                _end_dead_run(db, row, "failed", "other",
                              f"The worker process (pid {pid}) ended without reporting: it was "
                              "killed (e.g. kill -9, or the system ran out of memory) or crashed "
                              "hard. The adapter saved last, if any, is kept.")
            ended.append(row["id"])
            continue
        age = _age_s(row["heartbeat_at"])
        if row["status"] == "running" and age is not None and age > HEARTBEAT_STALE_S:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            _wait_gone(pid)
            _end_dead_run(db, row, "failed", "other",
                          f"No heartbeat from the worker (pid {pid}) for {age:.0f} s: it hung and "
                          "was ended.")
            ended.append(row["id"])
    if start_queued:
        launch_next(db)
    return ended


def _wait_gone(pid: int, timeout_s: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while pid_alive(pid, WORKER) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait(db: Database, run_id: int, timeout_s: float | None = None, poll_s: float = 1.0) -> dict:
    """Block until the run reaches a final status (refreshing liveness); return its row."""
    import time

    started = time.monotonic()
    while True:
        refresh(db, start_queued=False)
        run = get_run(db, run_id)
        if run["status"] in config.FINAL_STATUSES:
            return run
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return run
        time.sleep(poll_s)


def cli_command(run: dict[str, Any], project_name: str) -> str:
    """The ``nerlab train`` command line that starts a run with the same settings."""
    cfg = RunConfig.from_dict(run["config"])
    if cfg.preset in PRESETS:
        base, preset = get_preset(cfg.preset).config(), cfg.preset
    else:
        base, preset = RunConfig(), NO_PRESET
    parts = ["nerlab", "train", _quote(project_name), "--preset", _quote(preset)]
    flat, defaults = cfg.flat(), base.flat()
    for name, (_section, _f) in FIELDS.items():
        if name == "preset":
            continue
        value, default = flat[name], defaults[name]
        if value == default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(value)}")
        else:
            parts.append(f"{flag} {_quote(str(value))}")
    return " ".join(parts)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def submit(db: Database, project_id: int, kind: str, settings: dict, name: str = "",
           base_model: str = "", setup: Launch | None = None) -> tuple[int, bool]:
    """Store a run and start it, or queue it behind the active run; a run that prompts a model
    records the template version it will use now; ``launch`` (a training run) says how its
    processes start. Returns ``(run_id, started_now)``."""
    run_id = create_run(db, project_id, kind, settings, name=name, base_model=base_model)
    if setup is not None:
        launch_settings.save(run_dir(run_id), setup)
    if kind == "train" or kind in baselines.PROMPTED:
        run_template(db, get_run(db, run_id))
    return run_id, launch(db, run_id)


def submit_training(db: Database, project_id: int, cfg: RunConfig, name: str = "",
                    setup: Launch | None = None) -> tuple[int, bool]:
    """:func:`submit` a fine-tuning run with this config (and how its processes start)."""
    return submit(db, project_id, "train", cfg.to_dict(), name, cfg.base_model, setup)


def join_command(db: Database, run_id: int, machine_rank: int) -> list[str]:
    """What another machine of a run over several machines runs to join it (``nerlab join``)."""
    run = get_run(db, run_id)
    setup = launch_settings.load(run_dir(run_id))
    if setup.num_machines < 2:
        raise NerlabError(f"Run {run_id} runs on one machine; there is nothing to join.")
    if not 1 <= machine_rank < setup.num_machines:
        raise NerlabError(f"Run {run_id} spans {setup.num_machines} machines: join as machine 1 "
                          f"to {setup.num_machines - 1} (machine 0 started it).")
    if run["status"] in config.FINAL_STATUSES:
        raise NerlabError(f"Run {run_id} is {run['status']}.")
    return worker_command(run_id, run_gpus(run), setup=setup.on_machine(machine_rank))


def submit_baseline(db: Database, project_id: int, kind: str, settings: dict,
                    name: str = "") -> tuple[int, bool]:
    """:func:`submit` a baseline run; its settings are checked first (:func:`baselines.settings`)."""
    cfg = baselines.settings(kind, settings)
    return submit(db, project_id, kind, cfg, name, cfg.get("base_model", ""))


def launch_merge(run_id: int, dtype: str | None = None) -> int:
    """Start ``nerlab merge RUN_ID [--dtype DTYPE]`` in the background (log:
    ``runs/<id>/merge.log``); return its pid. The merged model lands in ``runs/<id>/merged``."""
    folder = run_dir(run_id)
    if merge_state(run_id) == "running":
        raise NerlabError(f"Run {run_id}'s adapter is already being merged.")
    args = ["-m", "core.cli", "merge", str(int(run_id))]
    if dtype:
        args += ["--dtype", dtype]
    pid = spawn(args, folder / "merge.log")
    (folder / "merge.pid").write_text(str(pid))
    return pid


def merge_state(run_id: int) -> str:
    """``"none"``, ``"running"``, ``"done"`` (``runs/<id>/merged`` is complete) or ``"failed"``."""
    folder = config.runs_dir() / str(run_id)
    pid_file = folder / "merge.pid"
    if pid_file.is_file() and pid_alive(int(pid_file.read_text().strip() or 0), MERGER):
        return "running"
    if (folder / "merged" / "config.json").is_file():
        return "done"
    return "failed" if (folder / "merge.log").is_file() else "none"
