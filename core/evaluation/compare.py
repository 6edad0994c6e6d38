"""Runs side by side."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence

from sqlite_utils import Database

from core.evaluation.run_scores import load_scored
from core.evaluation.scoring import Scored


def scored_runs(db: Database, project_id: int) -> list[dict]:
    """The project's runs that have stored predictions, newest first, with per-split counts
    (``predicted``: {split: n}) and their stored default-mode test/dev micro-F1 when scored."""
    rows = [dict(r) for r in db.query(
        "SELECT r.id, r.name, r.kind, r.status, r.base_model, r.created_at, r.finished_at,"
        " r.config, r.template_id FROM runs r WHERE r.project_id = ? AND EXISTS"
        " (SELECT 1 FROM predictions p WHERE p.run_id = r.id) ORDER BY r.id DESC",
        [project_id])]
    counts: dict[int, dict[str, int]] = {}
    for r in db.query(
        "SELECT p.run_id, p.split, COUNT(*) AS n FROM predictions p JOIN runs r ON r.id = p.run_id"
        " WHERE r.project_id = ? GROUP BY p.run_id, p.split", [project_id]):
        counts.setdefault(r["run_id"], {})[r["split"]] = r["n"]
    f1: dict[tuple[int, str], float] = {}
    for r in db.query(
        "SELECT e.run_id, e.split, e.metrics FROM evaluations e JOIN runs r ON r.id = e.run_id"
        " WHERE r.project_id = ? AND e.mode = 'default'", [project_id]):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            f1[(r["run_id"], r["split"])] = json.loads(r["metrics"])["micro"]["f1"]
    for row in rows:
        row["predicted"] = counts.get(row["id"], {})
        row["micro_f1"] = {s: f1[(row["id"], s)] for s in row["predicted"] if (row["id"], s) in f1}
    return rows


def run_title(run: dict) -> str:
    """``#12 loraplus-12 (train, test F1 0.71)`` for menus and legends."""
    name = run.get("name") or run["kind"]
    f1 = (run.get("micro_f1") or {}).get("test")
    score = f", test F1 {f1:.2f}" if f1 is not None else ""
    kind = "" if name.startswith(run["kind"]) else f"{run['kind']}, "
    return f"#{run['id']} {name} ({kind}{run['status']}{score})"


def side_by_side(db: Database, run_ids: Sequence[int], split: str) -> tuple[list[dict], dict[int, list[Scored]]]:
    """Sentences every run predicted on ``split``, each with gold and every run's spans.

    Returns ``(rows, items)``: rows are dicts with ``sentence_id``, ``text``, ``gold`` (aligned
    spans), ``preds`` ({run_id: aligned spans}), ``disagree`` (the runs' spans differ) and
    ``any_wrong`` (some run's spans differ from gold); items are each run's :class:`Scored`
    restricted to those common sentences (so metrics compare like with like).
    """
    per_run = {rid: {it.example.id: it for it in load_scored(db, rid, split)} for rid in run_ids}
    common = set.intersection(*(set(v) for v in per_run.values())) if per_run else set()
    first = per_run[run_ids[0]] if run_ids else {}
    order = [sid for sid in first if sid in common]
    rows = []
    for sid in order:
        gold = first[sid].gold
        preds = {rid: per_run[rid][sid].aligned_pred for rid in run_ids}
        distinct = {tuple(p) for p in preds.values()}
        rows.append({
            "sentence_id": sid,
            "text": first[sid].example.text,
            "gold": gold,
            "preds": preds,
            "disagree": len(distinct) > 1,
            "any_wrong": any(tuple(p) != tuple(gold) for p in preds.values()),
        })
    items = {rid: [per_run[rid][sid] for sid in order] for rid in run_ids}
    return rows, items
