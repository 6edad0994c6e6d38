"""A run's stored predictions scored, and the scores cached in SQLite."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlite_utils import Database

from core.data import projects
from core.data.db import now
from core.data.runs import get_run
from core.data.spans import Span
from core.evaluation.scoring import MODES, Scored, score


def _json_list(value) -> list:
    if not value:
        return []
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _details(row: dict) -> dict:
    raw = row.get("details")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def prediction_splits(db: Database, run_id: int) -> list[str]:
    """Splits for which the run has stored predictions, in train/dev/test order."""
    have = {r["split"] for r in db.query(
        "SELECT DISTINCT split FROM predictions WHERE run_id = ?", [run_id])}
    return [s for s in ("train", "dev", "test") if s in have]


def load_scored(db: Database, run_id: int, split: str) -> list[Scored]:
    """The run's predictions on a split, each with the sentence's current gold spans.

    Sentences that are no longer labelled are left out (nothing to score them against).
    """
    run = get_run(db, run_id)
    gold = {e.id: e for e in projects.examples(db, run["project_id"], split=None)}
    items: list[Scored] = []
    for row in db.query(
        "SELECT p.* FROM predictions p JOIN sentences s ON s.id = p.sentence_id"
        " WHERE p.run_id = ? AND p.split = ? ORDER BY s.position",
        [run_id, split],
    ):
        example = gold.get(row["sentence_id"])
        if example is None:
            continue
        details = _details(row)
        items.append(
            Scored(
                example=example,
                pred=[Span(int(s["start"]), int(s["end"]), str(s["label"]))
                      for s in _json_list(row["spans"])],
                parse_status=row["parse_status"],
                raw_output=row["raw_output"],
                hallucinated=list(details.get("hallucinated", [])),
                unknown_types=list(details.get("unknown_types", [])),
                loose=[tuple(x) for x in details.get("loose", [])],
            )
        )
    return items


def evaluate_run(
    db: Database,
    run_id: int,
    splits: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
) -> dict[str, dict[str, dict]]:
    """Score a run's stored predictions and store one ``evaluations`` row per split and mode.

    Args:
        splits: splits to score; default every split the run has predictions for.
        modes: scoring modes (default both).

    Returns:
        ``{split: {mode: metrics}}`` — the stored metrics (see :func:`score`).
    """
    run = get_run(db, run_id)
    labels = [r["name"] for r in projects.list_labels(db, run["project_id"])]
    splits = list(splits) if splits else prediction_splits(db, run_id)
    result: dict[str, dict[str, dict]] = {}
    stamp = now()
    for split in splits:
        items = load_scored(db, run_id, split)
        if not items:
            continue
        result[split] = {}
        for mode in modes:
            metrics = score(items, labels=labels, mode=mode)
            metrics.update(split=split, run_id=run_id, scored_at=stamp)
            result[split][mode] = metrics
    with db.atomic():
        for split, by_mode in result.items():
            for mode, metrics in by_mode.items():
                db.execute(
                    "INSERT INTO evaluations (run_id, split, mode, metrics, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, split, mode)"
                    " DO UPDATE SET metrics = excluded.metrics, created_at = excluded.created_at",
                    [run_id, split, mode, json.dumps(metrics), stamp],
                )
    return result


def stored_metrics(db: Database, run_id: int, split: str, mode: str = "default") -> dict | None:
    """The stored metrics of a run on a split, or None when it has not been scored."""
    rows = list(db.query(
        "SELECT metrics, created_at FROM evaluations WHERE run_id = ? AND split = ? AND mode = ?",
        [run_id, split, mode]))
    if not rows:
        return None
    return json.loads(rows[0]["metrics"])


def is_stale(db: Database, run_id: int, split: str, mode: str = "default") -> bool:
    """True when the run's scores on a split are missing or older than a gold label edit or a
    prediction (e.g. the analyst fixed a gold label after the run was scored)."""
    rows = list(db.query(
        "SELECT created_at FROM evaluations WHERE run_id = ? AND split = ? AND mode = ?",
        [run_id, split, mode]))
    if not rows:
        return True
    scored = rows[0]["created_at"]
    latest = db.execute(
        "SELECT MAX(t) FROM (SELECT MAX(s.updated_at) AS t FROM predictions p JOIN sentences s"
        " ON s.id = p.sentence_id WHERE p.run_id = ? AND p.split = ?"
        " UNION ALL SELECT MAX(created_at) FROM predictions WHERE run_id = ? AND split = ?)",
        [run_id, split, run_id, split],
    ).fetchone()[0]
    return bool(latest and latest > scored)


def metrics_for(db: Database, run_id: int, split: str, mode: str = "default") -> dict | None:
    """Stored metrics, re-scored first when missing or stale; None without predictions."""
    if is_stale(db, run_id, split, mode):
        if split not in prediction_splits(db, run_id):
            return None
        evaluate_run(db, run_id, splits=[split])
    return stored_metrics(db, run_id, split, mode)
