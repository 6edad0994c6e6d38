"""Scores of predictions against gold spans: per class, micro/macro, bootstrap interval, span confusion."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.data.spans import Example, Span, bio_to_spans, spans_to_bio
from core.errors import NerlabError

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


@dataclass
class Scored:
    """One sentence with its gold and predicted spans (token-aligned) and the prediction row."""

    example: Example
    pred: list[Span]
    parse_status: str = "ok"
    raw_output: str = ""
    hallucinated: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)
    #: ``(mention, kind)`` not copied exactly (see :mod:`core.prompts.place`).
    loose: list[tuple[str, str]] = field(default_factory=list)

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
        loose=dict(Counter(kind for it in items for _mention, kind in it.loose)),
    )
    return metrics


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
