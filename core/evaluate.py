"""Scores of a run's predictions against the gold labels: what the analyst came for.

Everything here is pure Python over spans (plus seqeval), light enough for pages to import.

How a prediction is scored:

- Gold and predicted character spans are turned into IOB2 tags over the sentence's tokens
  (:func:`core.spans.spans_to_bio`; a span that covers part of a token takes the whole token).
- seqeval scores the tag sequences. ``mode="default"`` is conlleval's reading of the tags;
  ``mode="strict"`` is seqeval's strict IOB2 mode (a chunk must start with ``B-``). On tags
  derived from spans both agree; they differ on hand-written tag files, which
  :func:`score_tags` accepts too.
- Micro, macro and weighted precision / recall / F1, per class with support, a bootstrap 95%
  interval for micro-F1 (sentences resampled with replacement), a span-level confusion matrix
  with missed, spurious and boundary errors, parse failures and hallucinated entities.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlite_utils import Database

from core import projects
from core.db import now
from core.errors import NerlabError, NotFound
from core.spans import Example, Span, bio_to_spans, spans_to_bio

MODES = ("default", "strict")
#: Kinds of span-level outcome, in the order the UI lists them.
ERROR_KINDS = ("correct", "wrong_type", "wrong_boundary", "wrong_both", "missed", "spurious")
ERROR_KIND_NAMES = {
    "correct": "correct",
    "wrong_type": "wrong type",
    "wrong_boundary": "wrong boundary",
    "wrong_both": "wrong boundary and type",
    "missed": "missed",
    "spurious": "spurious",
}
#: Row/column names of the confusion matrix that are not entity types.
SPURIOUS = "(spurious)"
MISSED = "(missed)"
BOUNDARY = "(boundary)"
BOOTSTRAP_SAMPLES = 1000


# ---------------------------------------------------------------------------------------------
# Chunks (conlleval / seqeval) per sentence


def _chunks(tags: Sequence[str], mode: str) -> set[tuple[str, int, int]]:
    """The chunks ``(type, first token, last token)`` of one tag sequence, as seqeval sees them."""
    if mode == "strict":
        from seqeval.scheme import IOB2, Entities

        return {(e.tag, e.start, e.end - 1) for e in Entities([list(tags)], IOB2).entities[0]}
    from seqeval.metrics.sequence_labeling import get_entities

    return {(t, s, e) for t, s, e in get_entities(list(tags))}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise NerlabError(f"Scoring mode {mode!r} is not one of {', '.join(MODES)}.")


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def score_tags(
    y_true: Sequence[Sequence[str]],
    y_pred: Sequence[Sequence[str]],
    mode: str = "default",
    labels: Iterable[str] = (),
    bootstrap: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict:
    """Score tag sequences (one list of tags per sentence) with seqeval.

    Args:
        y_true: gold tags per sentence.
        y_pred: predicted tags per sentence (same lengths).
        mode: ``"default"`` (conlleval) or ``"strict"`` (seqeval strict IOB2).
        labels: entity types to report even when neither gold nor prediction has them
            (they get support 0 and are left out of the macro average, as in seqeval).
        bootstrap: resamples for the 95% interval of micro-F1 (0 to skip).
        seed: seed of the resampling, so the interval is reproducible.

    Returns:
        ``{"micro"|"macro"|"weighted": {precision, recall, f1, support}, "per_class": {type:
        {precision, recall, f1, support, predicted, tp}}, "ci": {...}, "n_sentences", ...}``.
    """
    _check_mode(mode)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted")
    per_sentence: list[tuple[int, int, int]] = []
    tp_c: Counter[str] = Counter()
    pred_c: Counter[str] = Counter()
    gold_c: Counter[str] = Counter()
    for true, pred in zip(y_true, y_pred, strict=True):
        if len(true) != len(pred):
            raise ValueError(f"a sentence has {len(true)} gold tags but {len(pred)} predicted")
        g, p = _chunks(true, mode), _chunks(pred, mode)
        hits = g & p
        per_sentence.append((len(hits), len(p), len(g)))
        tp_c.update(c[0] for c in hits)
        pred_c.update(c[0] for c in p)
        gold_c.update(c[0] for c in g)

    seen = sorted(set(gold_c) | set(pred_c))
    per_class: dict[str, dict] = {}
    report = _seqeval_report(y_true, y_pred, mode) if seen else {}
    for name in list(dict.fromkeys([*labels, *seen])):
        row = report.get(name)
        if row is not None:
            p, r, f = row["precision"], row["recall"], row["f1-score"]
        else:
            p, r, f = _prf(tp_c[name], pred_c[name], gold_c[name])
        per_class[name] = {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": gold_c[name],
            "predicted": pred_c[name],
            "tp": tp_c[name],
        }
    tp, n_pred, n_gold = sum(tp_c.values()), sum(pred_c.values()), sum(gold_c.values())
    micro = dict(zip(("precision", "recall", "f1"), _prf(tp, n_pred, n_gold), strict=True))
    if report:
        # seqeval is the reference; the counts above must agree with it (checked in tests).
        micro = {k: float(report["micro avg"][s]) for k, s in _KEYS}
    counted = [per_class[n] for n in seen]
    macro = {
        k: (sum(c[k] for c in counted) / len(counted) if counted else 0.0)
        for k in ("precision", "recall", "f1")
    }
    weighted = {
        k: (sum(c[k] * c["support"] for c in counted) / n_gold if n_gold else 0.0)
        for k in ("precision", "recall", "f1")
    }
    if report:
        macro = {k: float(report["macro avg"][s]) for k, s in _KEYS}
        weighted = {k: float(report["weighted avg"][s]) for k, s in _KEYS}
    return {
        "mode": mode,
        "n_sentences": len(y_true),
        "n_gold": n_gold,
        "n_pred": n_pred,
        "tp": tp,
        "micro": {**micro, "support": n_gold},
        "macro": {**macro, "support": n_gold},
        "weighted": {**weighted, "support": n_gold},
        "per_class": per_class,
        "ci": bootstrap_ci(per_sentence, bootstrap, seed=seed),
        "token_accuracy": _token_accuracy(y_true, y_pred),
    }


_KEYS = (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"))


def _seqeval_report(y_true, y_pred, mode: str) -> dict:
    from seqeval.metrics import classification_report

    kwargs: dict = {"output_dict": True, "zero_division": 0}
    if mode == "strict":
        from seqeval.scheme import IOB2

        kwargs.update(mode="strict", scheme=IOB2)
    return classification_report([list(t) for t in y_true], [list(p) for p in y_pred], **kwargs)


def _token_accuracy(y_true, y_pred) -> float:
    total = sum(len(t) for t in y_true)
    same = sum(a == b for t, p in zip(y_true, y_pred, strict=True) for a, b in zip(t, p, strict=True))
    return same / total if total else 0.0


def bootstrap_ci(
    per_sentence: Sequence[tuple[int, int, int]],
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap interval of micro-F1, resampling sentences with replacement.

    Args:
        per_sentence: ``(true positives, predicted chunks, gold chunks)`` per sentence.
        samples: number of resamples (0 returns an empty interval).
    """
    if not per_sentence or samples <= 0:
        return {"level": level, "samples": 0, "f1_low": None, "f1_high": None}
    import numpy as np

    counts = np.asarray(per_sentence, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts), size=(samples, len(counts)))
    sums = counts[idx].sum(axis=1)  # samples × 3
    denom = sums[:, 1] + sums[:, 2]
    f1 = np.divide(2 * sums[:, 0], denom, out=np.zeros(samples), where=denom > 0)
    alpha = (1 - level) / 2
    low, high = np.quantile(f1, [alpha, 1 - alpha])
    return {"level": level, "samples": samples, "f1_low": float(low), "f1_high": float(high)}


# ---------------------------------------------------------------------------------------------
# Span-level error analysis


def align(example: Example, spans: Sequence[Span]) -> list[Span]:
    """Snap spans to the sentence's tokens, as scoring sees them (whole tokens, no overlaps)."""
    tokens = example.token_offsets()
    return bio_to_spans(tokens, spans_to_bio(tokens, spans))


@dataclass
class SpanOutcome:
    """One gold or predicted span and what happened to it."""

    kind: str  # one of ERROR_KINDS
    gold: Span | None
    pred: Span | None

    @property
    def gold_label(self) -> str:
        return self.gold.label if self.gold else SPURIOUS

    @property
    def pred_label(self) -> str:
        if self.pred is None:
            return MISSED
        return self.pred.label


def match_spans(gold: Sequence[Span], pred: Sequence[Span]) -> list[SpanOutcome]:
    """Pair gold and predicted spans of one sentence and classify each pair.

    Exact boundaries pair first (correct or wrong type); then each remaining gold span pairs
    with the remaining overlapping prediction that shares its type, else the one overlapping
    most (wrong boundary, or wrong boundary and type). What is left is missed or spurious.
    """
    out: list[SpanOutcome] = []
    gold_left = sorted(gold)
    pred_left = sorted(pred)
    by_bounds = {(p.start, p.end): p for p in pred_left}
    for g in list(gold_left):
        p = by_bounds.get((g.start, g.end))
        if p is not None and p in pred_left:
            out.append(SpanOutcome("correct" if p.label == g.label else "wrong_type", g, p))
            gold_left.remove(g)
            pred_left.remove(p)
    for g in list(gold_left):
        overlapping = [p for p in pred_left if p.start < g.end and p.end > g.start]
        if not overlapping:
            continue
        p = max(
            overlapping,
            key=lambda q: (q.label == g.label, min(q.end, g.end) - max(q.start, g.start), -q.start),
        )
        out.append(SpanOutcome("wrong_boundary" if p.label == g.label else "wrong_both", g, p))
        gold_left.remove(g)
        pred_left.remove(p)
    out.extend(SpanOutcome("missed", g, None) for g in gold_left)
    out.extend(SpanOutcome("spurious", None, p) for p in pred_left)
    out.sort(key=lambda o: (o.gold or o.pred).start)  # type: ignore[union-attr]
    return out


def confusion(outcomes: Iterable[SpanOutcome], labels: Sequence[str]) -> dict:
    """Span-level confusion matrix.

    Rows are gold types plus ``(spurious)``; columns are predicted types plus ``(boundary)``
    (an overlapping prediction with other boundaries, whatever its type) and ``(missed)``.
    Cell (gold, predicted type) counts spans with exact boundaries, so the diagonal holds the
    correct ones and the rest are type confusions. Each gold span lands in exactly one cell of
    its row, so a row sums to the type's support.
    """
    outcomes = list(outcomes)
    names = list(dict.fromkeys([*labels, *(o.gold.label for o in outcomes if o.gold),
                                *(o.pred.label for o in outcomes if o.pred)]))
    rows = [*names, SPURIOUS]
    cols = [*names, BOUNDARY, MISSED]
    matrix = [[0] * len(cols) for _ in rows]
    boundary_types = [[0] * len(cols) for _ in rows]  # boundary errors by predicted type
    for o in outcomes:
        if o.kind in ("correct", "wrong_type"):
            matrix[rows.index(o.gold.label)][cols.index(o.pred.label)] += 1  # type: ignore[union-attr]
        elif o.kind in ("wrong_boundary", "wrong_both"):
            matrix[rows.index(o.gold.label)][cols.index(BOUNDARY)] += 1  # type: ignore[union-attr]
            boundary_types[rows.index(o.gold.label)][cols.index(o.pred.label)] += 1  # type: ignore[union-attr]
        elif o.kind == "missed":
            matrix[rows.index(o.gold.label)][cols.index(MISSED)] += 1  # type: ignore[union-attr]
        else:
            matrix[rows.index(SPURIOUS)][cols.index(o.pred.label)] += 1  # type: ignore[union-attr]
    return {"rows": rows, "cols": cols, "matrix": matrix, "boundary_by_type": boundary_types}


# ---------------------------------------------------------------------------------------------
# Scoring examples and runs


@dataclass
class Scored:
    """One sentence with its gold and predicted spans (token-aligned) and the prediction row."""

    example: Example
    pred: list[Span]
    parse_status: str = "ok"
    raw_output: str = ""
    hallucinated: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)

    @property
    def gold(self) -> list[Span]:
        return align(self.example, self.example.spans)

    @property
    def aligned_pred(self) -> list[Span]:
        return align(self.example, self.pred)

    def outcomes(self) -> list[SpanOutcome]:
        return match_spans(self.gold, self.aligned_pred)


def score(
    items: Sequence[Scored],
    labels: Sequence[str] = (),
    mode: str = "default",
    bootstrap: int = BOOTSTRAP_SAMPLES,
) -> dict:
    """All metrics of a set of predicted sentences (see the module docstring)."""
    _check_mode(mode)
    y_true, y_pred = [], []
    outcomes: list[SpanOutcome] = []
    for it in items:
        tokens = it.example.token_offsets()
        y_true.append(spans_to_bio(tokens, it.example.spans))
        y_pred.append(spans_to_bio(tokens, it.pred))
        outcomes.extend(it.outcomes())
    metrics = score_tags(y_true, y_pred, mode=mode, labels=labels, bootstrap=bootstrap)
    kinds = Counter(o.kind for o in outcomes)
    parse = Counter(it.parse_status for it in items)
    metrics.update(
        errors={k: kinds.get(k, 0) for k in ERROR_KINDS},
        confusion=confusion(outcomes, [*labels, *metrics["per_class"]]),
        parse={
            "ok": parse.get("ok", 0),
            "partial": parse.get("partial", 0),
            "unparsable": parse.get("unparsable", 0),
            "failure_rate": (parse.get("unparsable", 0) / len(items)) if items else 0.0,
        },
        hallucinated=sum(len(it.hallucinated) for it in items),
        unknown_types=sum(len(it.unknown_types) for it in items),
    )
    return metrics


def get_run(db: Database, run_id: int) -> dict:
    """A run row, or :class:`NotFound` naming the id."""
    rows = list(db["runs"].rows_where("id = ?", [int(run_id)]))
    if not rows:
        raise NotFound(f"No run with id {run_id}.")
    return rows[0]


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


# ---------------------------------------------------------------------------------------------
# Error list and CoNLL output


def error_list(items: Sequence[Scored], kinds: Iterable[str] | None = None,
               label: str | None = None) -> list[dict]:
    """Every span-level error, one dict per error, with its sentence for display.

    Args:
        kinds: error kinds to keep (default all but ``correct``).
        label: keep errors whose gold or predicted type is this one.
    """
    wanted = set(kinds) if kinds else set(ERROR_KINDS) - {"correct"}
    out: list[dict] = []
    for it in items:
        gold, pred = it.gold, it.aligned_pred
        for o in match_spans(gold, pred):
            if o.kind not in wanted:
                continue
            if label and label not in {o.gold.label if o.gold else None,
                                       o.pred.label if o.pred else None}:
                continue
            text = it.example.text
            out.append(
                {
                    "sentence_id": it.example.id,
                    "kind": o.kind,
                    "gold": o.gold.to_dict() | {"text": text[o.gold.start:o.gold.end]} if o.gold else None,
                    "pred": o.pred.to_dict() | {"text": text[o.pred.start:o.pred.end]} if o.pred else None,
                    "text": text,
                    "gold_spans": gold,
                    "pred_spans": pred,
                    "parse_status": it.parse_status,
                }
            )
    return out


def to_conll(items: Sequence[Scored]) -> str:
    """``token gold-tag predicted-tag`` lines, a blank line between sentences (conlleval's input)."""
    blocks = []
    for it in items:
        tokens = it.example.token_offsets()
        gold = spans_to_bio(tokens, it.example.spans)
        pred = spans_to_bio(tokens, it.pred)
        blocks.append("\n".join(
            f"{it.example.text[s:e].replace(' ', '_')} {g} {p}"
            for (s, e), g, p in zip(tokens, gold, pred, strict=True)
        ))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def summary_line(metrics: dict) -> str:
    """One line for logs and the CLI: micro/macro F1 with the interval."""
    ci = metrics.get("ci") or {}
    interval = (f" (95% CI {ci['f1_low']:.3f}–{ci['f1_high']:.3f})"
                if ci.get("f1_low") is not None else "")
    return (f"micro-F1 {metrics['micro']['f1']:.3f}{interval}, macro-F1 {metrics['macro']['f1']:.3f}"
            f" on {metrics['n_sentences']} sentences ({metrics['n_gold']} gold, "
            f"{metrics['n_pred']} predicted entities)")


# ---------------------------------------------------------------------------------------------
# Runs side by side


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
