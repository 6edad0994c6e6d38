"""Background runs: create, launch (one at a time, the rest queued), watch, stop.

Each run is its own OS process, ``python -m core.worker RUN_ID``, started with an argument list
in its own session, its output going to ``runs_dir()/<id>/worker.log``. The worker owns its run's
status; this module only creates rows, starts processes and notices dead ones. A run is "running"
only while its row says so *and* its process is alive with a fresh heartbeat
(:func:`refresh` marks the others failed, with the reason and the log's tail).

Light on purpose (no torch): the Train page imports it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config
from core.db import now
from core.errors import NerlabError, NotFound

#: A running worker whose heartbeat is older than this is considered hung.
HEARTBEAT_STALE_S = 300
#: How often the worker beats (see core.worker).
HEARTBEAT_EVERY_S = 5
#: How many lines of the worker's log are kept in ``runs.log_tail``.
LOG_TAIL_LINES = 40
ACTIVE_STATUSES = ("queued", "running")


def run_dir(run_id: int) -> Path:
    """The run's artefact folder (adapter, log, config), created if needed."""
    path = config.runs_dir() / str(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(run_id: int) -> Path:
    return run_dir(run_id) / "worker.log"


# ---------------------------------------------------------------------------------------------
# Rows


def create_run(
    db: Database,
    project_id: int,
    kind: str,
    config: dict,
    name: str = "",
    base_model: str = "",
    template_id: int | None = None,
) -> int:
    """Store a new run with status "queued" and its config; return its id.

    Args:
        kind: ``"train"`` or a baseline kind (``"zero-shot"``, ``"few-shot"``, ``"crf"``...).
        config: JSON-ready settings (for training, :meth:`RunConfig.to_dict`).
    """
    if not kind:
        raise NerlabError("A run needs a kind (train, zero-shot, few-shot, crf, ...).")
    if not db["projects"].count_where("id = ?", [project_id]):
        raise NotFound(f"No project with id {project_id}.")
    cursor = db.execute(
        "INSERT INTO runs (project_id, name, kind, config, base_model, template_id, status,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
        [project_id, name, kind, json.dumps(config), base_model, template_id, now()],
    )
    db.conn.commit()
    run_id = int(cursor.lastrowid)
    if not name:
        db.execute("UPDATE runs SET name = ? WHERE id = ?", [f"{kind}-{run_id}", run_id])
        db.conn.commit()
    (run_dir(run_id) / "config.json").write_text(json.dumps(config, indent=2))
    return run_id


def get_run(db: Database, run_id: int) -> dict:
    """The run's row with ``config`` parsed, or :class:`NotFound`."""
    rows = list(db.query("SELECT * FROM runs WHERE id = ?", [int(run_id)]))
    if not rows:
        raise NotFound(f"No run with id {run_id}.")
    return _decode(rows[0])


def _decode(row: dict) -> dict:
    row = dict(row)
    try:
        row["config"] = json.loads(row.get("config") or "{}")
    except json.JSONDecodeError:
        row["config"] = {}
    return row


def list_runs(db: Database, project_id: int, kind: str | None = None) -> list[dict]:
    """The project's runs, newest first, each with its last metrics row (``last_metrics``) and
    its last training loss (``last_loss``; the last row may be a dev-loss row without one)."""
    where, params = "project_id = ?", [project_id]
    if kind:
        where += " AND kind = ?"
        params.append(kind)
    rows = [_decode(r) for r in db.query(f"SELECT * FROM runs WHERE {where} ORDER BY id DESC", params)]
    last = {
        r["run_id"]: dict(r)
        for r in db.query(
            "SELECT m.*, (SELECT loss FROM run_metrics WHERE run_id = m.run_id AND loss IS NOT NULL"
            " ORDER BY id DESC LIMIT 1) AS last_loss FROM run_metrics m JOIN (SELECT run_id,"
            " MAX(id) AS id FROM run_metrics GROUP BY run_id) x ON x.id = m.id"
            " JOIN runs r ON r.id = m.run_id WHERE r.project_id = ?",
            [project_id],
        )
    }
    for row in rows:
        metrics = last.get(row["id"])
        row["last_loss"] = metrics.pop("last_loss") if metrics else None
        row["last_metrics"] = metrics
    return rows


def run_metrics(db: Database, run_id: int) -> list[dict]:
    """All progress rows of a run, in order."""
    return [dict(r) for r in db.query(
        "SELECT * FROM run_metrics WHERE run_id = ? ORDER BY id", [int(run_id)])]


def active_run(db: Database) -> dict | None:
    """The run currently holding the machine (running, or queued with a live worker), if any."""
    for row in db.query(
        "SELECT * FROM runs WHERE status = 'running' OR (status = 'queued' AND pid IS NOT NULL)"
        " ORDER BY id"
    ):
        if row["pid"] and pid_alive(row["pid"]):
            return _decode(row)
    return None


def read_log(run_id: int, lines: int = 200) -> str:
    """The last lines of the run's worker log ("" when there is none yet)."""
    path = config.runs_dir() / str(run_id) / "worker.log"
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 200 * lines))
        data = handle.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Processes


def pid_alive(pid: int | None, marker: bytes = b"core.worker") -> bool:
    """True when a process with this pid is alive (not a zombie, not a pid reused by a program
    whose command line lacks ``marker``)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _status = os.waitpid(pid, os.WNOHANG)  # reap our own finished children
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return False
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if cmdline and marker not in cmdline:
                return False  # the pid was reused by another program
    return True


@contextlib.contextmanager
def _launch_lock() -> Iterator[None]:
    """Serialise launches between the UI, the CLI and finishing workers."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(config.home() / ".launch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_command(run_id: int, gpus: int = 1, port: int | None = None) -> list[str]:
    """The argument list that runs a run's worker: ``python -m core.worker ID``, or for a run on
    several GPUs the same module under ``accelerate launch`` with one process per GPU (and the
    run's own accelerate config, see :func:`write_accelerate_config`)."""
    worker = ["-m", "core.worker", str(int(run_id))]
    if gpus <= 1:
        return [sys.executable, *worker]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(run_dir(run_id) / ACCELERATE_CONFIG), "--multi_gpu",
        "--num_processes", str(int(gpus)), "--main_process_port", str(port or free_port()), *worker,
    ]


ACCELERATE_CONFIG = "accelerate.yaml"


def write_accelerate_config(run_id: int, gpus: int) -> Path:
    """The accelerate config a multi-GPU run is launched with, in its folder: one machine, N
    processes, no mixed precision or compilation from accelerate (the trainer handles bf16).
    Without it ``accelerate launch`` would read the user's default config, whose GPU ids, FSDP or
    DeepSpeed settings do not apply to NERLab's loop; CUDA_VISIBLE_DEVICES picks the GPUs."""
    path = run_dir(run_id) / ACCELERATE_CONFIG
    path.write_text(
        f"# Written by NERLab for run {run_id}: how `accelerate launch` starts its processes.\n"
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n"
        f"num_machines: 1\nmachine_rank: 0\nnum_processes: {gpus}\ngpu_ids: all\n"
        "mixed_precision: 'no'\nuse_cpu: false\ndebug: false\ndynamo_config: {}\n"
    )
    return path


def free_port() -> int:
    """A TCP port free on this machine now (for the processes of a multi-GPU run to meet on)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_gpus(run: dict) -> int:
    """How many processes a run's worker starts (``train.gpus`` of a training run, else 1)."""
    if run.get("kind") != "train":
        return 1
    return max(1, int(((run.get("config") or {}).get("train") or {}).get("gpus") or 1))


def launch(db: Database, run_id: int) -> bool:
    """Start the run's worker unless another run holds the machine; return True if started.

    A run that cannot start now stays "queued"; the worker of the active run starts the next
    queued run when it ends (and :func:`refresh` does, when a worker died).
    """
    with _launch_lock():
        run = get_run(db, run_id)
        if run["status"] != "queued":
            raise NerlabError(f"Run {run_id} is {run['status']}; only a queued run can start.")
        if run["pid"] and pid_alive(run["pid"]):
            return True
        busy = active_run(db)
        if busy is not None and busy["id"] != run_id:
            return False
        _spawn(db, run_id)
        return True


def _spawn(db: Database, run_id: int) -> int:
    log = log_path(run_id)
    env = dict(os.environ)
    root = str(config.project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[config.HOME_ENV] = str(config.home())
    env.setdefault("PYTHONUNBUFFERED", "1")
    # OpenMP threads that sleep instead of spinning while they wait: measured here on a shared
    # 2-core machine, a LoRA+ step ran 2-4x faster (30-55 → 123-137 tokens/s) than with spinning.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    gpus = run_gpus(get_run(db, run_id))
    if gpus > 1:
        write_accelerate_config(run_id, gpus)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
            worker_command(run_id, gpus),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    db.execute("UPDATE runs SET pid = ? WHERE id = ?", [proc.pid, run_id])
    db.conn.commit()
    return proc.pid


def launch_next(db: Database) -> int | None:
    """Start the oldest queued run if nothing is active; return its id."""
    if active_run(db) is not None:
        return None
    for row in db.query("SELECT id FROM runs WHERE status = 'queued' AND stop_requested = 0 ORDER BY id"):
        try:
            if launch(db, row["id"]):
                return row["id"]
        except NerlabError:
            continue
        return None
    return None


def request_stop(db: Database, run_id: int) -> str:
    """Ask a run to stop: a queued run is stopped at once; a running one gets SIGTERM and the
    ``stop_requested`` flag, saves its adapter and ends "stopped". Returns what happened."""
    run = get_run(db, run_id)
    if run["status"] in config.FINAL_STATUSES:
        return f"Run {run_id} already ended ({run['status']})."
    db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", [run_id])
    db.conn.commit()
    if run["status"] == "queued" and not (run["pid"] and pid_alive(run["pid"])):
        db.execute(
            "UPDATE runs SET status = 'stopped', finished_at = ? WHERE id = ? AND status = 'queued'",
            [now(), run_id],
        )
        db.conn.commit()
        return f"Run {run_id} was removed from the queue."
    if run["pid"] and pid_alive(run["pid"]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(run["pid"], signal.SIGTERM)
    return f"Run {run_id} is stopping: it saves its adapter and ends."


def _age_s(stamp: str | None) -> float | None:
    if not stamp:
        return None
    then = _dt.datetime.fromisoformat(stamp)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def fail_run(db: Database, run_id: int, kind: str, message: str) -> None:
    """Mark a run still in progress as failed, with the reason and its log's tail."""
    tail = read_log(run_id, LOG_TAIL_LINES)
    db.execute(
        "UPDATE runs SET status = 'failed', error_kind = ?, error_message = ?, log_tail = ?,"
        " finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        [kind, message, tail, now(), run_id],
    )
    db.conn.commit()


def refresh(db: Database, start_queued: bool = True) -> list[int]:
    """Mark runs whose worker died (or hangs) as failed, with the reason; return their ids.

    A "running" run whose process is gone (killed, crashed hard, machine rebooted) or whose
    heartbeat is older than :data:`HEARTBEAT_STALE_S` fails; so does a queued run whose worker
    died before it started. Then, with ``start_queued``, the next queued run starts if the
    machine is free.
    """
    failed: list[int] = []
    for row in list(db.query("SELECT * FROM runs WHERE status IN ('queued', 'running')")):
        pid = row["pid"]
        if row["status"] == "queued" and not pid:
            continue
        if not pid_alive(pid):
            if row["status"] == "queued":
                message = (f"The worker (pid {pid}) exited before the run started; see the log.")
            else:
                message = (
                    f"The worker process (pid {pid}) ended without reporting: it was killed "
                    "(e.g. kill -9, or the system ran out of memory) or crashed hard. The adapter "
                    "saved last, if any, is kept."
                )
            fail_run(db, row["id"], "other", message)
            failed.append(row["id"])
            continue
        age = _age_s(row["heartbeat_at"])
        if row["status"] == "running" and age is not None and age > HEARTBEAT_STALE_S:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            fail_run(db, row["id"], "other",
                  f"No heartbeat from the worker (pid {pid}) for {age:.0f} s: it hung and was ended.")
            failed.append(row["id"])
    if start_queued:
        launch_next(db)
    return failed


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
    from core.runconfig import FIELDS, RunConfig

    cfg = RunConfig.from_dict(run["config"])
    base = RunConfig()
    parts = ["nerlab", "train", _quote(project_name)]
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


def submit_training(db: Database, project_id: int, cfg: Any, name: str = "") -> tuple[int, bool]:
    """Store a training run (recording the template version it will use) and start it, or queue
    it behind the active run. Returns ``(run_id, started_now)``."""
    from core import templates

    tpl = templates.get_template(db, project_id, cfg.template)
    run_id = create_run(db, project_id, "train", cfg.to_dict(), name=name,
                        base_model=cfg.base_model, template_id=tpl.id)
    return run_id, launch(db, run_id)


# ---------------------------------------------------------------------------------------------
# Merging an adapter into its base model (a short background process of its own)


def launch_merge(run_id: int) -> int:
    """Start ``nerlab merge RUN_ID`` in the background (log: ``runs/<id>/merge.log``); return
    its pid. The merged model lands in ``runs/<id>/merged``."""
    folder = run_dir(run_id)
    if merge_state(run_id) == "running":
        raise NerlabError(f"Run {run_id}'s adapter is already being merged.")
    env = dict(os.environ)
    root = str(config.project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[config.HOME_ENV] = str(config.home())
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(folder / "merge.log", "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
            [sys.executable, "-m", "core.cli", "merge", str(int(run_id))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env,
            start_new_session=True, close_fds=True,
        )
    (folder / "merge.pid").write_text(str(proc.pid))
    return proc.pid


def merge_state(run_id: int) -> str:
    """``"none"``, ``"running"``, ``"done"`` (``runs/<id>/merged`` is complete) or ``"failed"``."""
    folder = config.runs_dir() / str(run_id)
    pid_file = folder / "merge.pid"
    if pid_file.is_file():
        pid = int(pid_file.read_text().strip() or 0)
        alive = False
        with contextlib.suppress(ChildProcessError, OSError):
            done, _status = os.waitpid(pid, os.WNOHANG)
            alive = done == 0
        if not alive:
            with contextlib.suppress(OSError):
                os.kill(pid, 0)
                alive = Path(f"/proc/{pid}/cmdline").is_file() and b"merge" in Path(
                    f"/proc/{pid}/cmdline").read_bytes()
        if alive:
            return "running"
    if (folder / "merged" / "config.json").is_file():
        return "done"
    return "failed" if (folder / "merge.log").is_file() else "none"
