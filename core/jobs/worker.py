"""The background worker: ``python -m core.jobs.worker RUN_ID`` runs one run and owns its status.

It claims the queued run (queued → running), beats a heartbeat from a side thread (which also
watches the ``stop_requested`` column), turns SIGTERM into a clean stop, dispatches by kind
(``train`` → :func:`core.training.fine_tune.run`, anything else → :func:`core.prediction.baselines.run`), and ends the run
as finished, stopped or failed — classifying errors (oom / data / model / other) with a message
saying what to change and the log's tail. Then it starts the next queued run.

Every database write is a short transaction on the worker's own connection, so killing the
worker at any moment leaves the database intact; :func:`core.jobs.launcher.refresh` notices the dead pid.

Under ``accelerate launch`` (a run on several GPUs, see :mod:`core.training.distributed`) one copy runs per
GPU. Rank 0 is the worker as described above: it claims the run, beats the heartbeat, writes the
log, the progress and the status. The other ranks train and predict their shares (rank 0 gathers
and stores the predictions); if one of them fails it records the failure itself (its launcher
then ends the others).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config, procs
from core.data import phases
from core.data.db import get_db, now
from core.data.phases import Phase
from core.data.runs import LOG_TAIL_LINES, RunContext, fail_run, get_run, read_log, run_dir
from core.errors import ConfigError, DataError, ModelError, NerlabError, StopRequested
from core.jobs import launcher
from core.models import quiet
from core.models.adapters import ADAPTER_DIR, tidy_adapter
from core.prediction import baselines, bulk, predictors, run_folder
from core.training import distributed, fine_tune
from core.training.distributed import SINGLE, Group

METRIC_COLUMNS = ("epoch", "loss", "eval_loss", "lr", "tokens_per_s", "gpu_mem_mb", "eta_s")


#: How often the worker looks at the ``stop_requested`` column (seconds).
STOP_POLL_S = 0.5
#: The signal the heartbeat thread sends its own main thread when a stop arrives in a stretch
#: with nothing to save (see :meth:`WorkerContext.interruptible`).
WAKE_SIGNAL = signal.SIGUSR1
#: Least seconds between two progress writes of one phase (its last unit is always written).
PHASE_WRITE_EVERY_S = 1.0

__all__ = ["StopRequested", "WorkerContext", "classify_error", "main"]


class WorkerContext(RunContext):
    """The worker's :class:`~core.data.runs.RunContext`: its own database connection, the run's
    row (from :func:`~core.data.runs.get_run`, config decoded), folder and settings. In a run over
    several processes only rank 0 (``group.main``) logs and writes progress; the other ranks'
    calls do nothing."""

    def __init__(self, db: Database, run: dict, group: Group = SINGLE) -> None:
        self.db = db
        self.group = group
        self.run = run
        self.run_id: int = int(run["id"])
        self.run_dir = run_dir(self.run_id)
        self.config: dict = run["config"]
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._interruptible = 0
        self.signals = 0
        self._phase: Phase | None = None
        self._phase_started = 0.0
        self._phase_written = 0.0
        self.peak_mb = 0.0  # the process's peak resident memory over the phases so far

    # -- logging and liveness ----------------------------------------------------------------

    def log(self, msg: str) -> None:
        """Write a timestamped line to the run's log (the worker's stdout is the log file)."""
        if not self.group.main:
            return
        stamp = time.strftime("%H:%M:%S")
        for line in str(msg).splitlines() or [""]:
            print(f"[{stamp}] {line}", flush=True)

    def heartbeat(self) -> None:
        """Record that the worker is alive (also done every few seconds by a side thread)."""
        if not self.group.main:
            return
        self.db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", [now(), self.run_id])
        self.db.conn.commit()

    def request_stop(self) -> None:
        """Ask the job to stop at its next check (signal handler, stop column)."""
        self._stop.set()

    def should_stop(self) -> bool:
        """True once a stop was asked for (SIGTERM, ``nerlab stop``, the Stop button)."""
        return self._stop.is_set()

    def check_stop(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for."""
        if self._stop.is_set():
            raise StopRequested()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch with nothing to save (loading or converting a model, preparing data,
        predicting, scoring): a stop asked for inside it raises :class:`StopRequested` at once,
        wherever the main thread is, instead of waiting for the next check. Training and saving
        are never inside one: a stop there waits for the step to end and the adapter to be saved."""
        self.check_stop()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    def interrupt_now(self) -> bool:
        """True when a stop was asked for inside :meth:`interruptible` (the signal handlers ask)."""
        return self._interruptible > 0 and self._stop.is_set()

    def stop_note(self) -> str:
        """What a stop does now, for the log."""
        return launcher.stop_outcome({"phase": self._phase.key} if self._phase else None)

    # -- phases ------------------------------------------------------------------------------

    def plan_phases(self, planned: Sequence[Phase]) -> None:
        """Record the phases this run will go through (see :mod:`core.data.phases`)."""
        if self.group.main:
            phases.plan(self.db, self.run_id, planned)

    def phase(self, phase: Phase, total: int | None = None) -> None:
        """Start a phase; the one before it is done."""
        self.end_phase("done")
        self._phase, self._phase_started, self._phase_written = phase, time.monotonic(), 0.0
        self.peak_mb = max(self.peak_mb, procs.peak_rss_mb() or 0.0)
        procs.reset_peak_rss()  # each phase's own peak, in its line of the log
        if self.group.main:
            phases.start(self.db, self.run_id, phase, total)

    def phase_progress(self, done: int | None, total: int | None = None,
                       eta_s: float | None = None, detail: str | None = None) -> None:
        """Progress of the current phase: ``done`` of ``total`` units (None: as it was, e.g. to
        change only the ``detail``). The ETA is the rate so far unless given. Written at most
        once a second (always at the last unit, and when the detail changes)."""
        if not self.group.main or self._phase is None:
            return
        now_s = time.monotonic()
        last = total is not None and done is not None and done >= total
        if not last and detail is None and now_s - self._phase_written < PHASE_WRITE_EVERY_S:
            return
        if eta_s is None and total and done:
            eta_s = (now_s - self._phase_started) / done * max(0, total - done)
        self._phase_written = now_s
        phases.update(self.db, self.run_id, self._phase.key, done, total, eta_s, detail)

    def end_phase(self, status: str = "done") -> None:
        """End the current phase (``stopped``: cut short) without starting another."""
        if self._phase is None:
            return
        took = time.monotonic() - self._phase_started
        peak = procs.peak_rss_mb()
        self.peak_mb = max(self.peak_mb, peak or 0.0)
        self.log(f"{self._phase.title}: {took:.1f} s" + ("" if status == "done" else f", {status}")
                 + (f"; peak memory {peak:,.0f} MB." if peak else "."))
        if self.group.main:
            phases.finish(self.db, self.run_id, self._phase.key, status, took)
        self._phase = None

    def end_phases(self, status: str) -> None:
        """The run ended (``status`` of its current phase: done, stopped or failed): the
        current phase ends so, the phases never reached are skipped."""
        self.end_phase(status)
        if self.group.main:
            phases.close(self.db, self.run_id, status)

    def progress(self, step: int, total: int | None, **metrics: Any) -> None:
        """Write one progress row (``run_metrics``): step / total plus any of epoch, loss,
        eval_loss, lr, tokens_per_s, gpu_mem_mb, eta_s."""
        if not self.group.main:
            return
        row: dict[str, Any] = {"run_id": self.run_id, "step": int(step),
                               "total_steps": int(total) if total else None, "created_at": now()}
        for key in METRIC_COLUMNS:
            value = metrics.get(key)
            row[key] = float(value) if value is not None else None
        columns = ", ".join(row)
        self.db.execute(
            f"INSERT INTO run_metrics ({columns}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        self.db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", [now(), self.run_id])
        self.db.conn.commit()

    def set_artifact(self, path: str | Path) -> None:
        """Record where the run's main artefact (the adapter folder) is."""
        if not self.group.main:
            return
        self.db.execute("UPDATE runs SET artifact_path = ? WHERE id = ?", [str(path), self.run_id])
        self.db.conn.commit()

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started


class _Heartbeat(threading.Thread):
    """Beats every few seconds on its own connection and turns the stop column into the flag."""

    def __init__(self, ctx: WorkerContext, every_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{ctx.run_id}")
        self.ctx = ctx
        self.every_s = every_s
        self.done = threading.Event()

    def run(self) -> None:
        db_file = config.db_path()
        db = get_db(db_file)
        beat_at = 0.0
        try:
            while not self.done.wait(min(STOP_POLL_S, self.every_s)):
                if not db_file.exists():
                    # The data directory was deleted (e.g. a test's temporary folder): nobody can
                    # see this run any more, and saving would recreate the folder; just end.
                    print(f"The database {db_file} is gone: exiting.", flush=True)
                    os._exit(3)
                try:
                    if time.monotonic() - beat_at >= self.every_s:
                        db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?",
                                   [now(), self.ctx.run_id])
                        db.conn.commit()
                        beat_at = time.monotonic()
                    if self.ctx.should_stop():
                        continue
                    row = db.execute("SELECT stop_requested FROM runs WHERE id = ?",
                                     [self.ctx.run_id]).fetchone()
                    if row and row[0]:
                        self.ctx.log("Stop requested: " + self.ctx.stop_note())
                        self.ctx.request_stop()
                        if self.ctx.interrupt_now():
                            # The main thread is loading or predicting: stop it there.
                            signal.pthread_kill(threading.main_thread().ident, WAKE_SIGNAL)
                except Exception as exc:  # noqa: BLE001 - a busy database must not kill the run
                    print(f"heartbeat: {exc}", file=sys.stderr, flush=True)
        finally:
            db.conn.close()


def classify_error(exc: BaseException, run_config: dict | None = None) -> tuple[str, str]:
    """Map an exception to ``(error_kind, message)``: oom, data, model or other.

    The message says what to change (for out-of-memory: the settings to lower).
    """
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0][:500]
    name = type(exc).__name__
    lowered = text.lower()
    if (name in ("OutOfMemoryError", "MemoryError")
            or "out of memory" in lowered or "cublas_status_alloc_failed" in lowered
            or "can't allocate memory" in lowered or "defaultcpuallocator" in lowered):
        train = (run_config or {}).get("train", {})
        hints = []
        if train:
            hints.append(f"lower the batch size (now {train.get('batch_size')}; raise gradient "
                         f"accumulation to keep the effective batch)")
            hints.append(f"lower the max length (now {train.get('max_length')} tokens)")
            if not train.get("gradient_checkpointing"):
                hints.append("turn on gradient checkpointing")
        if (run_config or {}).get("method") not in (None, "qlora"):
            hints.append("use QLoRA (4-bit base model)")
        hints.append("or pick a smaller base model")
        where = "GPU" if "cuda" in lowered or name == "OutOfMemoryError" else "memory"
        return "oom", f"Out of {where}: {first}. To fit: " + "; ".join(hints) + "."

    if isinstance(exc, ModelError):
        return "model", first
    if isinstance(exc, (DataError, ConfigError)):
        return "data", first
    if isinstance(exc, NerlabError):
        return "other", first
    if distributed.lost_peer(exc):
        return "other", ("Lost contact with another process of this run: it was killed, ran out "
                         f"of memory or crashed (see the log for which). {name}: {first}")
    if name in ("OSError", "EnvironmentError", "HFValidationError", "RepositoryNotFoundError",
                "GatedRepoError", "LocalEntryNotFoundError"):
        return "model", f"The model could not be loaded: {first}"
    return "other", f"{name}: {first}"


def _claim(db: Database, run_id: int) -> dict | None:
    """queued → running for this process; None when the run is not ours to run."""
    stamp = now()
    cursor = db.execute(
        "UPDATE runs SET status = 'running', pid = ?, started_at = ?, heartbeat_at = ?,"
        " error_kind = NULL, error_message = NULL WHERE id = ? AND status = 'queued'"
        " AND stop_requested = 0",
        [os.getpid(), stamp, stamp, run_id],
    )
    db.conn.commit()
    if cursor.rowcount != 1:
        run = get_run(db, run_id)
        if run["status"] == "queued" and run["stop_requested"]:
            db.execute("UPDATE runs SET status = 'stopped', finished_at = ? WHERE id = ?",
                       [now(), run_id])
            db.conn.commit()
        return None
    return get_run(db, run_id)


#: What runs each kind of run (any other kind is a baseline: :func:`baselines.run`).
RUNNERS = {"train": fine_tune.run, bulk.PREDICT: bulk.run_predict, bulk.SUGGEST: bulk.run_suggest}


def _dispatch(ctx: WorkerContext) -> None:
    RUNNERS.get(ctx.run["kind"], baselines.run)(ctx)


def _write_card(ctx: WorkerContext, status: str) -> None:
    """A run with a model: its folder's ``nerlab.json`` and ``README.md`` (with its scores), so
    that the folder works without the database. A failure here is logged, not the run's."""
    if ctx.run["kind"] not in predictors.kinds() or status == "failed":
        return
    try:
        folder = run_folder.write_run_card(ctx.db, ctx.run_id, status=status)
    except Exception as exc:  # noqa: BLE001 - the run itself went well
        ctx.log(f"Could not write the model folder's description: {type(exc).__name__}: {exc}")
        return
    if folder is not None:
        ctx.log(f"Model folder (usable without the database): {folder}")


def _finish(db: Database, run_id: int, status: str, error_kind: str | None = None,
            message: str | None = None) -> None:
    with contextlib.suppress(OSError):
        adapter = tidy_adapter(run_dir(run_id) / ADAPTER_DIR)
        if adapter is not None:
            db.execute("UPDATE runs SET artifact_path = ? WHERE id = ? AND artifact_path IS NULL",
                       [str(adapter), run_id])
    tail = read_log(run_id, LOG_TAIL_LINES)
    # Only a run still in progress: another process of a multi-GPU run may have recorded its
    # own failure first (rank 0 then only sees the connection to it drop).
    db.execute(
        "UPDATE runs SET status = ?, error_kind = ?, error_message = ?, log_tail = ?,"
        " finished_at = ?, heartbeat_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        [status, error_kind, message, tail, now(), now(), run_id],
    )
    db.conn.commit()


def main(argv: list[str] | None = None) -> int:
    """Run one run to its end; the exit code is 0 for finished/stopped, 1 for failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m core.jobs.worker RUN_ID", file=sys.stderr)
        return 2
    run_id = int(argv[0])
    quiet.quiet_libraries()
    group = distributed.init()
    logging.basicConfig(level=logging.INFO if group.main else logging.ERROR, stream=sys.stdout,
                        format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
    db = get_db()
    run = _claim(db, run_id) if group.main else None
    if not group.broadcast_object(run is not None):
        if group.main:
            print(f"Run {run_id} is not queued (or was stopped); nothing to do.", flush=True)
            _start_next(db)
        group.close()
        return 0
    if not group.main:
        return _follow(db, run_id, group)
    ctx = WorkerContext(db, run, group)

    def on_signal(signum: int, _frame: Any) -> None:
        # Counted apart from the stop flag: the heartbeat thread may have seen the Stop button's
        # flag first, and the SIGTERM that `nerlab stop` sends with it is still the first signal.
        ctx.signals += 1
        if ctx.signals > 1:  # a second signal: end now
            ctx.log(f"Received {signal.Signals(signum).name} again: ending at once.")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not ctx.should_stop():
            ctx.log(f"Stop requested ({signal.Signals(signum).name}): " + ctx.stop_note())
        ctx.request_stop()
        if ctx.interrupt_now():
            raise StopRequested()

    def on_wake(_signum: int, _frame: Any) -> None:
        if ctx.interrupt_now():
            raise StopRequested()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(WAKE_SIGNAL, on_wake)
    beat = _Heartbeat(ctx, launcher.HEARTBEAT_EVERY_S)
    beat.start()
    ctx.log(f"Run {run_id} ({run['kind']}, {run['name']}) started in process {os.getpid()} "
            f"on {config.home()}" + (f", with {group.world - 1} more process(es) under "
                                     "accelerate launch." if group.enabled else "."))
    ctx.log("Config: " + json.dumps(run["config"], sort_keys=True))
    status, kind, message = "finished", None, None
    phase_status = "done"  # of the phase in progress when the run ends
    try:
        _dispatch(ctx)
        if ctx.should_stop():
            status = "stopped"
    except StopRequested:
        status = phase_status = "stopped"
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised below
        if isinstance(exc, KeyboardInterrupt) and ctx.should_stop():
            status = phase_status = "stopped"
        else:
            kind, message = classify_error(exc, run["config"])
            status = phase_status = "failed"
            ctx.log(f"Failed ({kind}): {message}")
            ctx.log(f"The Python traceback, for a bug report: {_keep_traceback(run_id)}")
    finally:
        beat.done.set()
        # Stop signals from here on: the outcome is being written down.
        signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
        ctx._interruptible = 0
        group.close()
    ctx.end_phases(phase_status)
    _write_card(ctx, status)
    if status == "stopped":
        ctx.log("Stopped; what was saved is kept.")
    elif status == "finished":
        ctx.log(f"Finished in {ctx.elapsed_s():.0f} s"
                + (f"; peak memory {ctx.peak_mb:,.0f} MB ({procs.allocator()})." if ctx.peak_mb
                   else "."))
    _finish(db, run_id, status, kind, message)
    _start_next(db)
    return 1 if status == "failed" else 0


def _follow(db: Database, run_id: int, group: Group) -> int:
    """A rank other than 0 in a multi-GPU run: train and predict its share; on failure record it, since the
    launcher ends rank 0 (which would otherwise report) together with the others."""
    run = get_run(db, run_id)
    ctx = WorkerContext(db, run, group)

    def on_signal(_signum: int, _frame: Any) -> None:
        ctx.request_stop()  # rank 0 decides; the stop is agreed on at the next step

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Rank 0 already says it all: keep the shared log free of the same warnings N times.
    warnings.simplefilter("ignore")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        _dispatch(ctx)
    except StopRequested:
        return 0  # rank 0 records the stop
    except BaseException as exc:  # noqa: BLE001 - recorded, then the process exits non-zero
        where = _keep_traceback(run_id, group.rank)
        if distributed.lost_peer(exc) and _cause_recorded_elsewhere(db, run_id):
            return 1
        kind, message = classify_error(exc, run["config"])
        gpu = f" (GPU {group.local_rank})" if group.backend == "nccl" else ""
        message = f"Process {group.rank + 1} of {group.world}{gpu}: {message}"
        print(f"Failed ({kind}): {message} (Python traceback: {where})", flush=True)
        fail_run(db, run_id, kind, message)
        return 1
    finally:
        group.close()
    return 0


def _keep_traceback(run_id: int, rank: int = 0) -> Path:
    """Write the exception being handled to ``runs/<id>/traceback.txt`` (one file per process)
    and return its path: the log, which the page and the CLI show, gets the classified one-line
    message; the traceback is there for a bug report."""
    path = run_dir(run_id) / ("traceback.txt" if rank == 0 else f"traceback-rank{rank}.txt")
    with contextlib.suppress(OSError):
        path.write_text(traceback.format_exc())
    return path


def _cause_recorded_elsewhere(db: Database, run_id: int, grace_s: float = 15.0) -> bool:
    """After losing contact with the other processes: give the real cause a chance to be recorded
    first (rank 0 reporting its own failure, or rank 0 found dead by :func:`jobs.refresh`), so
    that "connection closed" in a survivor does not hide it. True once the run has a final status."""
    deadline = time.monotonic() + grace_s
    while True:
        launcher.refresh(db, start_queued=False)
        if get_run(db, run_id)["status"] in config.FINAL_STATUSES:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def _start_next(db: Database) -> None:
    try:
        launcher.launch_next(db)
    except Exception as exc:  # noqa: BLE001 - the queue is retried by refresh()
        print(f"Could not start the next queued run: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
