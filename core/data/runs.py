"""Runs in SQLite: their rows (the config decoded in one place), progress rows, folder and log,
and :class:`RunContext`, what a running job's code is given by the worker."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from sqlite_utils import Database

from core import config
from core.data.db import now
from core.errors import NerlabError, NotFound

#: How many lines of the worker's log are kept in ``runs.log_tail``.
LOG_TAIL_LINES = 40


class RunContext(Protocol):
    """What a running job sees (the worker's :class:`core.jobs.worker.WorkerContext`).

    Attributes:
        db: the worker's own database connection (main thread only).
        run: the run's row, ``config`` decoded.
        run_id: the run's id.
        run_dir: the run's artefact folder.
        config: the run's settings (``run["config"]``).
        group: this process's place in a run over several processes
            (:class:`core.training.distributed.Group`).
    """

    db: Database
    run: dict
    run_id: int
    run_dir: Path
    config: dict
    group: Any

    def log(self, msg: str) -> None:
        """Write a line to the run's log."""
    def heartbeat(self) -> None:
        """Record that the job is alive."""
    def should_stop(self) -> bool:
        """True once a stop was asked for."""
    def check_stop(self) -> None:
        """Raise when a stop was asked for (a loop with nothing to save leaves this way)."""
    def progress(self, step: int, total: int | None, **metrics: Any) -> None:
        """Write one progress row."""
    def set_artifact(self, path: str | Path) -> None:
        """Record where the run's main artefact is."""
    def plan_phases(self, planned: Sequence[Any]) -> None:
        """Record the phases the run will go through (:mod:`core.data.phases`)."""
    def phase(self, phase: Any, total: int | None = None) -> None:
        """Start a phase (a :class:`core.data.phases.Phase`); the previous one is done."""
    def phase_progress(self, done: int | None, total: int | None = None,
                       eta_s: float | None = None, detail: str | None = None) -> None:
        """Progress of the current phase."""
    def end_phase(self, status: str = "done") -> None:
        """End the current phase (``stopped`` when cut short) without starting another."""
    def interruptible(self) -> AbstractContextManager[None]:
        """A stretch with nothing to save: a stop inside it ends the run at once."""


#: Longest run name kept (longer ones are cut when the run is created).
NAME_MAX = 100


def plain_text(text: str | None, limit: int | None = None) -> str:
    """``text`` on one line with no control characters (a terminal escape sequence or a newline
    in a run name must not reach a terminal or a table as such), cut at ``limit`` characters."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text or "")).split())
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: max(0, limit - 1)] + "…"
    return cleaned


def run_dir(run_id: int) -> Path:
    """The run's artefact folder (adapter, log, config), created if needed."""
    path = config.runs_dir() / str(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(run_id: int) -> Path:
    return run_dir(run_id) / "worker.log"


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
    name = plain_text(name, NAME_MAX)
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
    """The run's row with ``config`` decoded (a dict), or :class:`NotFound`."""
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


def fail_run(db: Database, run_id: int, kind: str, message: str) -> None:
    """Mark a run still in progress as failed, with the reason and its log's tail."""
    tail = read_log(run_id, LOG_TAIL_LINES)
    db.execute(
        "UPDATE runs SET status = 'failed', error_kind = ?, error_message = ?, log_tail = ?,"
        " finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
        [kind, message, tail, now(), run_id],
    )
    db.conn.commit()
