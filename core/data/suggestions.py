"""A model's suggestions for the labelling queue: pre-labels an annotator corrects instead of
labelling from scratch (Prodigy's ``ner.correct``, Label Studio's ML backend).

A suggestion belongs to one sentence that waits to be labelled: which run made it (and, for
people, which model: ``model``), the model's confidence in the whole sentence (0-1: "least
confident first" orders the queue by it) and its spans, stored as ``spans`` rows with origin
``suggested`` and a confidence each where the model has one. The gold spans stay the only
truth: what the Label page shows for a sentence with a suggestion is its gold spans plus the
suggested spans that do not overlap them, the suggested ones drawn dashed.

A suggestion's life: a suggest job stores it (replacing an older one the annotator has not
used); the first time an annotator saves the sentence with it shown, it is *taken* (its spans
went into the gold spans, as kept, changed or removed by the annotator); when the sentence is
accepted it is *reviewed*. It is kept afterwards, so that comparing it with the gold spans says
how many suggested spans were accepted, changed or removed (:func:`summary`), and it is never
replaced once taken.

Where suggestions come from is a project setting (:func:`get_settings`): a run, the automatic
CRF (retrained in the background every ``auto_every`` newly labelled sentences), or none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from core.data.db import now
from core.data.spans import Span
from core.errors import NerlabError

#: Where a suggestion came from: the automatic CRF, or a run the user chose.
AUTO, RUN = "auto", "run"
#: ``suggest_from`` values: "" (the default: the project's best run, else the automatic CRF),
#: "off", "auto", or "run:ID".
OFF = "off"
#: Newly labelled sentences after which the automatic CRF is retrained, unless the project says.
DEFAULT_AUTO_EVERY = 10
MAX_AUTO_EVERY = 10_000


@dataclass(frozen=True)
class Suggested:
    """What a model suggests for one sentence.

    Attributes:
        sentence_id: the sentence.
        spans: the suggested spans.
        span_confidences: one per span (None where the model has none), or empty.
        confidence: the model's confidence in the whole sentence, 0-1 (None: unknown).
    """

    sentence_id: int
    spans: tuple[Span, ...]
    span_confidences: tuple[float | None, ...] = ()
    confidence: float | None = None


def parse_source(value: str | None) -> tuple[str, int | None]:
    """``("", None)`` (the default), ``("off", None)``, ``("auto", None)`` or ``("run", id)``."""
    value = (value or "").strip()
    if value in ("", OFF, AUTO):
        return value, None
    kind, _, number = value.partition(":")
    if kind == RUN and number.isdigit():
        return RUN, int(number)
    raise NerlabError(f"Suggestions source {value!r} is not off, auto or run:ID.")


def run_source(run_id: int) -> str:
    """The ``suggest_from`` value of a run: ``run:ID``."""
    return f"{RUN}:{int(run_id)}"


def matches(row: Mapping[str, Any], source: str | None) -> bool:
    """Whether a stored suggestion came from ``source`` (``auto`` or ``run:ID``)."""
    kind, run_id = parse_source(source)
    if kind == AUTO:
        return row["source"] == AUTO
    if kind == RUN:
        return row["source"] == RUN and row["run_id"] == run_id
    return False


# ---------------------------------------------------------------------------------- settings


def get_settings(db: Database, project_id: int) -> dict:
    """The project's ``suggest_from`` and ``auto_every`` (defaults when never set)."""
    row = db.execute("SELECT suggest_from, auto_every FROM label_settings WHERE project_id = ?",
                     [project_id]).fetchone()
    if row is None:
        return {"suggest_from": "", "auto_every": DEFAULT_AUTO_EVERY}
    return {"suggest_from": row[0], "auto_every": row[1]}


def set_settings(db: Database, project_id: int, suggest_from: str | None = None,
                 auto_every: int | None = None) -> dict:
    """Change where the project's suggestions come from, or how often the automatic CRF is
    retrained; return the settings."""
    current = get_settings(db, project_id)
    if suggest_from is not None:
        parse_source(suggest_from)
        current["suggest_from"] = suggest_from.strip()
    if auto_every is not None:
        if isinstance(auto_every, bool) or not isinstance(auto_every, int) or not (
                1 <= auto_every <= MAX_AUTO_EVERY):
            raise NerlabError(f"Retrain every {auto_every!r} sentences: give a whole number from "
                              f"1 to {MAX_AUTO_EVERY}.")
        current["auto_every"] = auto_every
    db.execute(
        "INSERT INTO label_settings (project_id, suggest_from, auto_every, updated_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (project_id) DO UPDATE SET suggest_from ="
        " excluded.suggest_from, auto_every = excluded.auto_every, updated_at = excluded.updated_at",
        [project_id, current["suggest_from"], current["auto_every"], now()],
    )
    db.conn.commit()
    return current


# ------------------------------------------------------------------------------------- store


def _clean(text: str, spans: Sequence[Span], confs: Sequence[float | None],
           labels: Mapping[str, int]) -> list[tuple[Span, float | None]]:
    """The spans that fit the sentence and name an entity type of the project, without overlaps
    (the first of two overlapping spans is kept), in order."""
    items = []
    for i, span in enumerate(spans):
        conf = confs[i] if i < len(confs) else None
        if span.label in labels and 0 <= span.start < span.end <= len(text):
            items.append((span, None if conf is None else max(0.0, min(1.0, float(conf)))))
    items.sort(key=lambda item: (item[0].start, item[0].end))
    kept: list[tuple[Span, float | None]] = []
    for span, conf in items:
        if kept and span.start < kept[-1][0].end:
            continue
        kept.append((span, conf))
    return kept


def store(db: Database, project_id: int, items: Iterable[Suggested], *, source: str,
          run_id: int | None, model: str) -> int:
    """Store suggestions (one transaction); return how many were stored.

    A sentence gets one only while it waits to be labelled and its current suggestion, if any,
    has not been taken by an annotator (then it is replaced). Spans of entity types the project
    no longer has, or that overlap an earlier one, are dropped.
    """
    if source not in (AUTO, RUN):
        raise NerlabError(f"Unknown suggestion source {source!r}.")
    labels = {r[0]: r[1] for r in db.execute(
        "SELECT name, id FROM labels WHERE project_id = ?", [project_id])}
    stamp = now()
    stored = 0
    with db.atomic():
        for item in items:
            row = db.execute(
                "SELECT s.text, s.status, s.project_id, sg.id, sg.taken_at FROM sentences s"
                " LEFT JOIN suggestions sg ON sg.sentence_id = s.id WHERE s.id = ?",
                [item.sentence_id]).fetchone()
            if row is None or row[2] != project_id or row[1] != "unlabelled" or row[4]:
                continue
            if row[3] is not None:
                _drop(db, row[3], item.sentence_id)
            conf = None if item.confidence is None else max(0.0, min(1.0, float(item.confidence)))
            db.execute(
                "INSERT INTO suggestions (sentence_id, project_id, run_id, source, model,"
                " confidence, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [item.sentence_id, project_id, run_id, source, model, conf, stamp])
            db.conn.executemany(
                'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
                " confidence, created_at, updated_at) VALUES (?,?,?,?,'suggested',?,?,?,?)",
                [(item.sentence_id, s.start, s.end, labels[s.label], model, c, stamp, stamp)
                 for s, c in _clean(row[0], item.spans, item.span_confidences, labels)])
            stored += 1
    return stored


def _drop(db: Database, suggestion_id: int, sentence_id: int) -> None:
    db.execute("DELETE FROM spans WHERE sentence_id = ? AND origin = 'suggested'", [sentence_id])
    db.execute("DELETE FROM suggestions WHERE id = ?", [suggestion_id])


def clear_pending(db: Database, project_id: int, keep_source: str | None = None) -> int:
    """Remove the suggestions no annotator has taken yet (all, or all but those of
    ``keep_source``); return how many. Taken ones stay: they are the record of what was shown."""
    rows = [dict(r) for r in db.query(
        "SELECT id, sentence_id, source, run_id FROM suggestions WHERE project_id = ?"
        " AND taken_at IS NULL", [project_id])]
    gone = [r for r in rows if not (keep_source and matches(r, keep_source))]
    with db.atomic():
        for r in gone:
            _drop(db, r["id"], r["sentence_id"])
    return len(gone)


# -------------------------------------------------------------------------------------- read


def get(db: Database, sentence_id: int) -> dict | None:
    """A sentence's suggestion (row as a dict, ``spans``: ``[(Span, confidence)]``), or None."""
    rows = list(db.query("SELECT * FROM suggestions WHERE sentence_id = ?", [sentence_id]))
    if not rows:
        return None
    row = dict(rows[0])
    row["spans"] = [(Span(r["start"], r["end"], r["name"]), r["confidence"]) for r in db.query(
        'SELECT sp.start, sp."end", l.name, sp.confidence FROM spans sp JOIN labels l'
        " ON l.id = sp.label_id WHERE sp.sentence_id = ? AND sp.origin = 'suggested'"
        " ORDER BY sp.start", [sentence_id])]
    return row


def pending(db: Database, sentence: Mapping[str, Any], source: str | None) -> dict | None:
    """The suggestion an annotator sees on this sentence and has not taken yet: the sentence
    waits to be labelled and its suggestion came from ``source``; else None."""
    if sentence["status"] != "unlabelled" or parse_source(source)[0] in ("", OFF):
        return None
    row = get(db, sentence["id"])
    if row is None or row["taken_at"] or not matches(row, source):
        return None
    return row


def _gold(db: Database, sentence_id: int) -> list[Span]:
    return [Span(r["start"], r["end"], r["name"]) for r in db.query(
        'SELECT sp.start, sp."end", l.name FROM spans sp JOIN labels l ON l.id = sp.label_id'
        " WHERE sp.sentence_id = ? AND sp.origin = 'gold' ORDER BY sp.start", [sentence_id])]


def _overlaps(span: Span, others: Iterable[Span]) -> bool:
    return any(span.start < o.end and o.start < span.end for o in others)


def display(db: Database, sentence: Mapping[str, Any], source: str | None,
            gold: Sequence[Span] | None = None) -> tuple[list[dict], dict | None]:
    """What the Label page draws: ``(spans, suggestion)``.

    ``spans`` are dicts ``{start, end, label}``: the gold spans, plus,
    while the sentence's suggestion from ``source`` is untaken, its spans that overlap no gold
    span. A gold span equal to a suggested one is still ``suggested`` (drawn dashed) until the
    sentence is accepted. ``suggestion`` says which model suggested them (``id``, ``model``,
    ``confidence``, ``pending``: not taken yet), or is None.
    """
    gold = list(gold) if gold is not None else _gold(db, sentence["id"])
    out = [s.to_dict() for s in gold]
    row = get(db, sentence["id"])
    if row is None:
        return out, None
    info = {"id": row["id"], "model": row["model"], "run_id": row["run_id"],
            "source": row["source"], "confidence": row["confidence"], "pending": False,
            "reviewed": bool(row["reviewed_at"])}
    open_sentence = sentence["status"] == "unlabelled" and not row["reviewed_at"]
    if open_sentence and not row["taken_at"]:
        if not matches(row, source):
            return out, None
        info["pending"] = True
        extra = [{**s.to_dict(), "suggested": True, "confidence": c}
                 for s, c in row["spans"] if not _overlaps(s, gold)]
        out = sorted(out + extra, key=lambda d: (d["start"], d["end"]))
    elif open_sentence:
        confidence = {s: c for s, c in row["spans"]}
        for d in out:
            key = Span(d["start"], d["end"], d["label"])
            if key in confidence:
                d["suggested"], d["confidence"] = True, confidence[key]
    return out, info


def display_spans(db: Database, sentence: Mapping[str, Any], source: str | None,
                  gold: Sequence[Span] | None = None) -> list[Span]:
    """The spans the Label page shows for a sentence (see :func:`display`), as plain spans."""
    spans, _ = display(db, sentence, source, gold)
    return [Span(d["start"], d["end"], d["label"]) for d in spans]


def state(db: Database, sentence_id: int) -> tuple | None:
    """``(id, taken_at, taken_by, reviewed_at)`` of a sentence's suggestion (for undo)."""
    row = db.execute("SELECT id, taken_at, taken_by, reviewed_at FROM suggestions"
                     " WHERE sentence_id = ?", [sentence_id]).fetchone()
    return tuple(row) if row else None


def restore(db: Database, saved: tuple | None) -> None:
    """Put a suggestion's taken/reviewed marks back as :func:`state` saw them."""
    if saved is None:
        return
    db.execute("UPDATE suggestions SET taken_at = ?, taken_by = ?, reviewed_at = ? WHERE id = ?",
               [saved[1], saved[2], saved[3], saved[0]])
    db.conn.commit()


def take(db: Database, suggestion_id: int, annotator: str) -> None:
    """An annotator saved the sentence with this suggestion shown: it is no longer replaced."""
    db.execute("UPDATE suggestions SET taken_at = COALESCE(taken_at, ?), taken_by ="
               " COALESCE(taken_by, ?) WHERE id = ?", [now(), annotator or None, suggestion_id])
    db.conn.commit()


def mark_reviewed(db: Database, sentence_id: int) -> None:
    """The sentence was accepted: its (taken) suggestion is reviewed."""
    db.execute("UPDATE suggestions SET reviewed_at = COALESCE(reviewed_at, ?) WHERE sentence_id"
               " = ? AND taken_at IS NOT NULL", [now(), sentence_id])
    db.conn.commit()


# ---------------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """How an annotator's gold spans differ from what was suggested.

    ``accepted``: suggested spans kept as they were; ``changed``: suggested spans whose type or
    boundaries the annotator changed (they overlap a gold span); ``removed``: suggested spans
    with no gold span over them; ``added``: gold spans over no suggested span.
    """

    suggested: int = 0
    accepted: int = 0
    changed: int = 0
    removed: int = 0
    added: int = 0

    @property
    def edits(self) -> int:
        """Spans added + removed + changed: what the annotator had to do."""
        return self.added + self.removed + self.changed

    def add(self, other: Outcome) -> None:
        for name in ("suggested", "accepted", "changed", "removed", "added"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, int]:
        return {"suggested": self.suggested, "accepted": self.accepted, "changed": self.changed,
                "removed": self.removed, "added": self.added}


def compare(suggested: Sequence[Span], gold: Sequence[Span]) -> Outcome:
    """Compare suggested spans with the gold spans an annotator made of them."""
    exact = set(suggested) & set(gold)
    rest_s = sorted(s for s in suggested if s not in exact)
    rest_g = sorted(g for g in gold if g not in exact)
    used: set[int] = set()
    changed = 0
    for s in rest_s:
        hit = next((i for i, g in enumerate(rest_g) if i not in used and _overlaps(s, [g])), None)
        if hit is not None:
            used.add(hit)
            changed += 1
    return Outcome(suggested=len(suggested), accepted=len(exact), changed=changed,
                   removed=len(rest_s) - changed, added=len(rest_g) - len(used))


@dataclass
class _Tally:
    reviewed: int = 0
    unchanged: int = 0
    spans: Outcome = field(default_factory=Outcome)


def summary(db: Database, project_id: int) -> dict:
    """Suggestion counts for ``nerlab stats`` and the Label page.

    ``sentences``: with a suggestion; ``pending``: suggested, not yet touched; ``in_progress``:
    taken, not yet accepted; ``reviewed``: accepted with a suggestion shown, of which
    ``unchanged`` needed no edit; ``spans``: over reviewed sentences, suggested spans accepted,
    changed, removed, and gold spans added; ``edits_per_sentence`` (added + removed + changed);
    ``by_model``: the same per model.
    """
    rows = [dict(r) for r in db.query(
        "SELECT sg.sentence_id, sg.model, sg.taken_at, sg.reviewed_at, s.status FROM suggestions sg"
        " JOIN sentences s ON s.id = sg.sentence_id WHERE sg.project_id = ?", [project_id])]
    reviewed = [r for r in rows if r["reviewed_at"] and r["status"] == "labelled"]
    spans: dict[tuple[int, str], list[Span]] = {}
    if reviewed:
        for r in db.query(
            'SELECT sp.sentence_id, sp.origin, sp.start, sp."end", l.name FROM spans sp'
            " JOIN labels l ON l.id = sp.label_id JOIN suggestions sg ON sg.sentence_id ="
            " sp.sentence_id WHERE sg.project_id = ? AND sg.reviewed_at IS NOT NULL"
            " ORDER BY sp.start", [project_id]):
            spans.setdefault((r["sentence_id"], r["origin"]), []).append(
                Span(r["start"], r["end"], r["name"]))
    total, by_model = _Tally(), {}
    for r in reviewed:
        outcome = compare(spans.get((r["sentence_id"], "suggested"), []),
                          spans.get((r["sentence_id"], "gold"), []))
        for tally in (total, by_model.setdefault(r["model"], _Tally())):
            tally.reviewed += 1
            tally.unchanged += outcome.edits == 0
            tally.spans.add(outcome)

    def out(t: _Tally) -> dict:
        return {"reviewed": t.reviewed, "unchanged": t.unchanged, "spans": t.spans.to_dict(),
                "edits_per_sentence": round(t.spans.edits / t.reviewed, 3) if t.reviewed else None}

    return {
        "sentences": len(rows),
        "pending": sum(1 for r in rows if not r["taken_at"] and r["status"] == "unlabelled"),
        "in_progress": sum(1 for r in rows if r["taken_at"] and not r["reviewed_at"]
                           and r["status"] == "unlabelled"),
        **out(total),
        "by_model": {name: out(t) for name, t in sorted(by_model.items())},
    }


def describe(info: Mapping[str, Any]) -> str:
    """``"5 of 8 suggested spans accepted as they were, 2 changed, 1 removed; 3 added"``."""
    s = info["spans"]
    if not info["reviewed"]:
        return "No sentence labelled with suggestions yet."
    return (f"{info['reviewed']} sentence(s) labelled with suggestions ({info['unchanged']} "
            f"unchanged): of {s['suggested']} suggested spans {s['accepted']} accepted as they "
            f"were, {s['changed']} changed, {s['removed']} removed; {s['added']} added by hand "
            f"({info['edits_per_sentence']} edits per sentence).")
