"""A run's phases in SQLite (``run_phases``): what the run does now, how far it is, how long it
has left — for every phase, not only training.

A run plans its phases when it starts (load or convert the model, train, dev loss, save the
adapter, predict each split, score), so the page and ``nerlab train --wait`` can show the whole
path with the size of each phase; then it starts them in turn and reports progress. One row per
phase, updated in place: the loss curve stays in ``run_metrics``, made of training rows only.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlite_utils import Database

from core.data.db import now

#: A phase that ended (any status but pending and running).
ENDED = ("done", "stopped", "failed", "skipped")


@dataclass(frozen=True)
class Phase:
    """One planned phase: its key (``train``, ``predict_dev``…), title, size and unit."""

    key: str
    title: str
    total: int | None = None
    unit: str = ""


#: Titles and units of the phases runs go through (a run may add others).
CONVERT = Phase("convert", "Convert the bundled model (first use only)", 100, "%")
LOAD = Phase("load", "Load the model")
PREPARE = Phase("prepare", "Prepare the data")
TRAIN = Phase("train", "Train", None, "steps")
DEV_LOSS = Phase("dev_loss", "Dev loss", None, "sentences")
SAVE = Phase("save", "Save the adapter")
SCORE = Phase("score", "Score", None, "splits")


def predict_phase(split: str, total: int | None = None) -> Phase:
    """The phase that predicts one split."""
    return Phase(f"predict_{split}", f"Predict {split}", total, "sentences")


def plan(db: Database, run_id: int, phases: Sequence[Phase]) -> None:
    """Record the phases the run will go through, in order (replacing an earlier plan)."""
    stamp = now()
    with db.atomic():
        db.execute("DELETE FROM run_phases WHERE run_id = ?", [run_id])
        db.conn.executemany(
            "INSERT INTO run_phases (run_id, position, phase, title, unit, total, status,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            [(run_id, i, p.key, p.title, p.unit, p.total, stamp) for i, p in enumerate(phases)],
        )


def start(db: Database, run_id: int, phase: Phase, total: int | None = None) -> None:
    """Mark ``phase`` running (adding it after the others if it was not planned); a phase still
    running until now is done."""
    stamp = now()
    size = total if total is not None else phase.total
    with db.atomic():
        _end_running(db, run_id, "done", None, stamp)
        cursor = db.execute(
            "UPDATE run_phases SET status = 'running', done = 0, total = COALESCE(?, total),"
            " started_at = ?, updated_at = ?, finished_at = NULL, eta_s = NULL, detail = ''"
            " WHERE run_id = ? AND phase = ?",
            [size, stamp, stamp, run_id, phase.key],
        )
        if cursor.rowcount == 0:
            position = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM run_phases"
                                  " WHERE run_id = ?", [run_id]).fetchone()[0]
            db.execute(
                "INSERT INTO run_phases (run_id, position, phase, title, unit, total, status,"
                " started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                [run_id, position, phase.key, phase.title, phase.unit, size, stamp, stamp],
            )


def update(db: Database, run_id: int, key: str, done: int | None, total: int | None = None,
           eta_s: float | None = None, detail: str | None = None) -> None:
    """Progress of a running phase: ``done`` of ``total`` units, the seconds it has left, a
    detail (None keeps what was there)."""
    db.execute(
        "UPDATE run_phases SET done = COALESCE(?, done), total = COALESCE(?, total),"
        " eta_s = COALESCE(?, CASE WHEN ? IS NULL THEN eta_s END), detail = COALESCE(?, detail),"
        " updated_at = ? WHERE run_id = ? AND phase = ?",
        [None if done is None else int(done), total, eta_s, done, detail, now(), run_id, key],
    )
    db.conn.commit()


def finish(db: Database, run_id: int, key: str, status: str = "done",
           seconds: float | None = None, detail: str | None = None) -> None:
    """End one phase (``done``, ``stopped``, ``failed`` or ``skipped``)."""
    stamp = now()
    db.execute(
        "UPDATE run_phases SET status = ?, seconds = COALESCE(?, seconds), eta_s = NULL,"
        " detail = COALESCE(?, detail), finished_at = ?, updated_at = ?,"
        " done = CASE WHEN ? = 'done' AND total IS NOT NULL THEN total ELSE done END"
        " WHERE run_id = ? AND phase = ?",
        [status, seconds, detail, stamp, stamp, status, run_id, key],
    )
    db.conn.commit()


def close(db: Database, run_id: int, status: str, seconds: float | None = None) -> None:
    """When the run ends: the running phase takes the run's outcome (``done`` for a finished
    run, ``stopped``, ``failed``) and phases never reached are ``skipped``."""
    stamp = now()
    with db.atomic():
        _end_running(db, run_id, status, seconds, stamp)
        db.execute("UPDATE run_phases SET status = 'skipped', updated_at = ? WHERE run_id = ?"
                   " AND status = 'pending'", [stamp, run_id])


def _end_running(db: Database, run_id: int, status: str, seconds: float | None,
                 stamp: str) -> None:
    for row in db.query("SELECT id, started_at FROM run_phases WHERE run_id = ?"
                        " AND status = 'running'", [run_id]):
        took = seconds if seconds is not None else _since(row["started_at"], stamp)
        db.execute(
            "UPDATE run_phases SET status = ?, seconds = ?, eta_s = NULL, finished_at = ?,"
            " updated_at = ?, done = CASE WHEN ? = 'done' AND total IS NOT NULL THEN total"
            " ELSE done END WHERE id = ?",
            [status, took, stamp, stamp, status, row["id"]],
        )


def _since(started: str | None, until: str | None = None) -> float | None:
    if not started:
        return None
    end = _dt.datetime.fromisoformat(until) if until else _dt.datetime.now(_dt.timezone.utc)
    return max(0.0, (end - _dt.datetime.fromisoformat(started)).total_seconds())


def list_phases(db: Database, run_id: int) -> list[dict]:
    """The run's phases in order, each with ``elapsed_s`` (so far, or in all) and ``left_s``
    (the ETA counted down since the last report; None when unknown)."""
    return [_with_times(dict(r)) for r in db.query(
        "SELECT * FROM run_phases WHERE run_id = ? ORDER BY position", [int(run_id)])]


def current(db: Database, run_ids: Iterable[int]) -> dict[int, dict]:
    """The running phase of each of these runs that has one (for run lists)."""
    ids = [int(i) for i in run_ids]
    if not ids:
        return {}
    marks = ", ".join("?" * len(ids))
    rows = db.query(f"SELECT * FROM run_phases WHERE status = 'running' AND run_id IN ({marks})"
                    " ORDER BY position", ids)
    return {r["run_id"]: _with_times(dict(r)) for r in rows}


def _with_times(row: dict) -> dict:
    if row["status"] == "running":
        row["elapsed_s"] = _since(row["started_at"])
        left = row.get("eta_s")
        if left is not None:
            left = max(0.0, left - (_since(row["updated_at"]) or 0.0))
        row["left_s"] = left
    else:
        row["elapsed_s"] = row.get("seconds")
        row["left_s"] = None
    return row


def amount(n: int, unit: str) -> str:
    """``n`` and its unit, singular for one: ``1 sentence``, ``60 sentences``, ``40 %``."""
    if not unit:
        return str(n)
    if n == 1 and unit.endswith("s") and unit[:-1].isalpha() and unit.islower():
        unit = unit[:-1]
    return f"{n} {unit}"


def describe(row: dict, duration=None) -> str:
    """``Predict dev · 30 / 60 sentences · ETA 1 min 05 s`` (for the CLI, the page, the table).

    ``duration`` formats seconds (default :func:`format_duration`)."""
    fmt = duration or format_duration
    parts = [row["title"]]
    unit = row.get("unit") or ""
    if row.get("total") and row["status"] in ("pending", "skipped"):
        if unit != "%":  # its size only: nothing is done yet
            parts.append(amount(row["total"], unit))
    elif row.get("total"):
        if unit == "%":
            parts.append(f"{int(100 * row['done'] / row['total'])}%")
        else:
            parts.append(f"{row['done']} / {row['total']}" + (f" {unit}" if unit else ""))
    if row.get("detail"):
        parts.append(row["detail"])
    if row["status"] == "running":
        if row.get("left_s") is not None:
            parts.append(f"ETA {fmt(row['left_s'])}")
        elif row.get("elapsed_s") is not None:
            parts.append(f"{fmt(row['elapsed_s'])} so far")
    elif row.get("elapsed_s") is not None and row["status"] != "skipped":
        parts.append(fmt(row["elapsed_s"]))
    return " · ".join(parts)


def format_duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12 s``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
