"""Following a run from the shell (``nerlab train --wait``, ``nerlab baseline --wait``): every
phase as it starts and ends, its progress and ETA while it runs, the training steps, the outcome.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from sqlite_utils import Database

from core import config
from core.data import phases
from core.data.runs import get_run, run_metrics
from core.jobs import launcher

#: Exit codes of ``--wait``: finished, failed, stopped.
EXIT_CODES = {"finished": 0, "failed": 1, "stopped": 2}
#: Least seconds between two progress lines of a phase that is not training (training prints a
#: line per step).
PROGRESS_EVERY_S = 10.0
#: A phase without countable progress (loading a model) says it is still going this often.
STILL_EVERY_S = 30.0
_MARKS = {"done": "✓", "stopped": "■", "failed": "✗"}


def fmt_step(m: dict | None) -> str:
    """A training progress row: ``step 3/40, loss 0.8123, 120 tok/s, ETA 2 min 10 s``."""
    if not m:
        return ""
    parts = [f"step {m['step']}/{m['total_steps'] or '?'}"]
    if m.get("loss") is not None:
        parts.append(f"loss {m['loss']:.4f}")
    if m.get("eval_loss") is not None:
        parts.append(f"dev loss {m['eval_loss']:.4f}")
    if m.get("tokens_per_s"):
        parts.append(f"{m['tokens_per_s']:.0f} tok/s")
    if m.get("gpu_mem_mb"):
        parts.append(f"GPU {m['gpu_mem_mb'] / 1024:.1f} GB")
    if m.get("eta_s") is not None and m.get("loss") is not None:
        parts.append(f"ETA {launcher.format_duration(m['eta_s'])}")
    return ", ".join(parts)


class Follower:
    """Prints what changed in a run since the last :meth:`poll`."""

    def __init__(self, db: Database, run_id: int, out: TextIO | None = None) -> None:
        self.db, self.run_id = db, run_id
        self.out = out or sys.stdout
        self._seen_rows = 0
        self._state: dict[str, str] = {}  # phase key -> status printed last
        self._printed_at: dict[str, float] = {}
        self._done_shown: dict[str, int] = {}
        self._stop_shown = False

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def poll(self) -> dict:
        """Print the news; return the run's row."""
        run = get_run(self.db, self.run_id)
        rows = phases.list_phases(self.db, self.run_id)
        n = len(rows)
        metrics = run_metrics(self.db, self.run_id)
        for i, row in enumerate(rows, 1):
            key, status = row["phase"], row["status"]
            before = self._state.get(key)
            if status == "pending" or (status == "skipped" and before is None):
                continue
            tag = f"[{i}/{n}]"
            if status == "running":
                if before is None:
                    size = (f" ({phases.amount(row['total'], row['unit'])})" if row.get("total")
                            and row.get("unit") not in ("", "%") else "")
                    self._say(f"{tag} {row['title']}{size}…")
                    self._mark(key, status, row)
                elif key == "train":
                    self._steps(metrics)
                elif self._due(key, row):
                    self._say(f"      {phases.describe(row, launcher.format_duration)}")
                    self._mark(key, status, row)
            elif before != status:
                if key in ("train", "dev_loss"):
                    self._steps(metrics)  # its steps (and dev losses) before its end
                if status != "skipped":
                    self._say(f"{tag} {_MARKS.get(status, '·')} "
                              f"{phases.describe(row, launcher.format_duration)}"
                              + ("" if status == "done" else f" ({status})"))
                self._mark(key, status, row)
        if not rows:  # a run from before phases were recorded: its progress rows only
            self._steps(metrics)
        if run["stop_requested"] and not self._stop_shown and run["status"] == "running":
            self._say(f"Stopping (asked at {(run.get('stop_requested_at') or '')[11:19]} UTC)…")
            self._stop_shown = True
        return run

    def _steps(self, metrics: list[dict]) -> None:
        for m in metrics[self._seen_rows:]:
            self._say(f"      {fmt_step(m)}")
        self._seen_rows = len(metrics)

    def _mark(self, key: str, status: str, row: dict) -> None:
        self._state[key] = status
        self._printed_at[key] = time.monotonic()
        self._done_shown[key] = row.get("done") or 0

    def _due(self, key: str, row: dict) -> bool:
        since = time.monotonic() - self._printed_at.get(key, 0.0)
        moved = (row.get("done") or 0) != self._done_shown.get(key, 0)
        return (moved and since >= PROGRESS_EVERY_S) or since >= STILL_EVERY_S


def run_summary(run: dict) -> str:
    """What ``nerlab runs`` says about a run that is not active: its training progress and
    last losses, or why it failed."""
    if run["status"] == "failed":
        return f"{run['error_kind']}: {run['error_message']}"
    m = run.get("last_metrics") or {}
    if run["kind"] != "train" or not m.get("total_steps"):
        return ""
    parts = [f"step {m['step']}/{m['total_steps']}"]
    if run.get("last_loss") is not None:
        parts.append(f"loss {run['last_loss']:.4f}")
    if m.get("eval_loss") is not None:
        parts.append(f"dev loss {m['eval_loss']:.4f}")
    return ", ".join(parts)


def wait_and_report(db: Database, run_id: int, poll_s: float = 1.0,
                    out: TextIO | None = None) -> int:
    """Print a run's phases and progress until it ends; return the outcome's exit code."""
    follower = Follower(db, run_id, out)
    try:
        while True:
            launcher.refresh(db, start_queued=False)
            run = follower.poll()
            if run["status"] in config.FINAL_STATUSES:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nRun {run_id} goes on in the background; stop it with: nerlab stop {run_id}",
              file=sys.stderr)
        return 130
    line = f"Run {run_id} {run['status']}"
    if run["status"] == "failed":
        line += f" ({run['error_kind']}): {run['error_message']}"
    elif run["artifact_path"]:
        what = {"train": "adapter", "predict": "output"}.get(run["kind"], "model")
        line += f"; {what}: {run['artifact_path']}"
    elif run["status"] == "stopped" and run["kind"] == "train":
        line += " before a training step ended: no adapter was saved"
    print(line + ".", file=sys.stderr if run["status"] == "failed" else (out or sys.stdout))
    return EXIT_CODES.get(run["status"], 1)
