"""The labelling "recipe": the queue, filters, progress, and the actions the widget sends.

Pure functions over an open database (no Streamlit): the Label page reads a :class:`QueueFilter`
from its widgets, asks this module which sentence to show and what to send to the widget, and
hands every action that comes back from the browser to :func:`apply_action`, which saves it at
once through :func:`core.projects.save_annotation` with optimistic concurrency.

A :class:`LabelSession` holds what one browser tab knows: the sentence on screen, the versions it
has seen or written, and its undo stack. It lives in the tab's session state; the labels
themselves only ever live in SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from core import config, projects
from core.errors import Conflict, NerlabError, NotFound
from core.spans import Span, tokenize

STATUSES = ("unlabelled", "labelled", "all")
ACTIONS = ("edit", "accept", "next", "prev", "undo", "reopen")
#: Undo entries a tab keeps (older changes can still be fixed by hand).
UNDO_DEPTH = 200


# ---------------------------------------------------------------------------------------------
# Queue and filters


@dataclass(frozen=True)
class QueueFilter:
    """Which sentences the queue walks through, in project order.

    Attributes:
        status: ``"unlabelled"`` (the default queue), ``"labelled"`` or ``"all"``.
        split: only this split (``train``/``dev``/``test``), or None for all.
        label: only sentences with at least one gold span of this entity type.
        text: only sentences containing this text (case-insensitive for ASCII letters).
    """

    status: str = "unlabelled"
    split: str | None = None
    label: str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise NerlabError(f"Status filter {self.status!r} is not one of {', '.join(STATUSES)}.")
        if self.split is not None and self.split not in config.SPLITS:
            raise NerlabError(f"Split filter {self.split!r} is not one of {', '.join(config.SPLITS)}.")

    def describe(self) -> str:
        """A short human description, e.g. ``unlabelled · train · with Disease · "lithium"``."""
        parts = [self.status if self.status != "all" else "all sentences"]
        if self.split:
            parts.append(self.split)
        if self.label:
            parts.append(f"with {self.label}")
        if self.text.strip():
            parts.append(f'containing "{self.text.strip()}"')
        return " · ".join(parts)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(db: Database, project_id: int, flt: QueueFilter) -> tuple[str, list[Any]]:
    """SQL condition (on alias ``s``) and its parameters for a filter."""
    where = ["s.project_id = ?"]
    params: list[Any] = [project_id]
    if flt.status != "all":
        where.append("s.status = ?")
        params.append(flt.status)
    if flt.split:
        where.append("s.split = ?")
        params.append(flt.split)
    if flt.label:
        row = db.execute(
            "SELECT id FROM labels WHERE project_id = ? AND name = ?", [project_id, flt.label]
        ).fetchone()
        label_id = row[0] if row else -1
        where.append(
            "EXISTS (SELECT 1 FROM spans sp WHERE sp.sentence_id = s.id"
            " AND sp.origin = 'gold' AND sp.label_id = ?)"
        )
        params.append(label_id)
    needle = flt.text.strip()
    if needle:
        where.append("s.text LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(needle)}%")
    return " AND ".join(where), params


def count(db: Database, project_id: int, flt: QueueFilter) -> int:
    """How many sentences match the filter."""
    sql, params = _where(db, project_id, flt)
    return db.execute(f"SELECT COUNT(*) FROM sentences s WHERE {sql}", params).fetchone()[0]


def first(db: Database, project_id: int, flt: QueueFilter) -> int | None:
    """Id of the first matching sentence in project order, or None."""
    sql, params = _where(db, project_id, flt)
    row = db.execute(
        f"SELECT s.id FROM sentences s WHERE {sql} ORDER BY s.position LIMIT 1", params
    ).fetchone()
    return row[0] if row else None


def neighbour(
    db: Database, project_id: int, flt: QueueFilter, position: int, step: int = 1
) -> int | None:
    """Id of the next (``step=1``) or previous (``step=-1``) matching sentence, or None."""
    sql, params = _where(db, project_id, flt)
    op, order = (">", "ASC") if step > 0 else ("<", "DESC")
    row = db.execute(
        f"SELECT s.id FROM sentences s WHERE {sql} AND s.position {op} ?"
        f" ORDER BY s.position {order} LIMIT 1",
        [*params, position],
    ).fetchone()
    return row[0] if row else None


def next_in_queue(db: Database, project_id: int, flt: QueueFilter, position: int) -> int | None:
    """The next matching sentence after ``position``, wrapping round to the first one."""
    found = neighbour(db, project_id, flt, position, 1)
    if found is None:
        found = first(db, project_id, flt)
    return found


def matches(db: Database, project_id: int, flt: QueueFilter, sentence_id: int) -> bool:
    """Whether a sentence is in the filtered queue."""
    sql, params = _where(db, project_id, flt)
    return bool(
        db.execute(f"SELECT 1 FROM sentences s WHERE {sql} AND s.id = ?", [*params, sentence_id]).fetchone()
    )


def rank(db: Database, project_id: int, flt: QueueFilter, position: int) -> int:
    """How many matching sentences come before ``position`` (the 0-based place in the queue)."""
    sql, params = _where(db, project_id, flt)
    return db.execute(
        f"SELECT COUNT(*) FROM sentences s WHERE {sql} AND s.position < ?", [*params, position]
    ).fetchone()[0]


def by_number(db: Database, project_id: int, number: int) -> int:
    """Id of the project's sentence number ``number`` (1-based, in project order)."""
    total = db.execute("SELECT COUNT(*) FROM sentences WHERE project_id = ?", [project_id]).fetchone()[0]
    if total == 0:
        raise NotFound("This project has no sentences yet: import some on the Data page.")
    if not 1 <= number <= total:
        raise NotFound(f"There is no sentence {number}: this project has sentences 1 to {total}.")
    row = db.execute(
        "SELECT id FROM sentences WHERE project_id = ? ORDER BY position LIMIT 1 OFFSET ?",
        [project_id, number - 1],
    ).fetchone()
    return row[0]


def number_of(db: Database, sentence: Mapping[str, Any]) -> int:
    """The 1-based number of a sentence in its project (what "jump to sentence N" takes)."""
    return (
        db.execute(
            "SELECT COUNT(*) FROM sentences WHERE project_id = ? AND position < ?",
            [sentence["project_id"], sentence["position"]],
        ).fetchone()[0]
        + 1
    )


def sentence_rows(
    db: Database, project_id: int, flt: QueueFilter, offset: int = 0, limit: int = 100
) -> list[dict]:
    """One page of matching sentences with their gold spans, for the Data page's table.

    Each row: ``id``, ``number`` (1-based), ``text``, ``split``, ``status``, ``annotator``,
    ``updated_at``, ``spans`` (list of :class:`Span`) and ``entities`` (``"Disease: fever; …"``).
    """
    sql, params = _where(db, project_id, flt)
    rows = [
        dict(r)
        for r in db.query(
            "SELECT s.id, s.position, s.text, s.split, s.status, s.annotator, s.updated_at,"
            " (SELECT COUNT(*) FROM sentences t WHERE t.project_id = s.project_id"
            "   AND t.position < s.position) + 1 AS number"
            f" FROM sentences s WHERE {sql} ORDER BY s.position LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
    ]
    spans: dict[int, list[Span]] = {r["id"]: [] for r in rows}
    if rows:
        marks = ",".join("?" * len(rows))
        for r in db.query(
            f'SELECT sp.sentence_id, sp.start, sp."end", l.name FROM spans sp'
            f" JOIN labels l ON l.id = sp.label_id WHERE sp.origin = 'gold'"
            f" AND sp.sentence_id IN ({marks}) ORDER BY sp.start",
            list(spans),
        ):
            spans[r["sentence_id"]].append(Span(r["start"], r["end"], r["name"]))
    for r in rows:
        r["spans"] = spans[r["id"]]
        r["entities"] = "; ".join(f"{s.label}: {r['text'][s.start:s.end]}" for s in r["spans"])
    return rows


# ---------------------------------------------------------------------------------------------
# Progress


@dataclass
class Progress:
    """How far the labelling has come: overall, per split and per entity type."""

    total: int
    labelled: int
    splits: dict[str, dict[str, int]]
    #: entity type → ``{"spans": n, "sentences": m}`` over gold spans.
    per_label: dict[str, dict[str, int]]

    @property
    def fraction(self) -> float:
        """Labelled share of all sentences (0 when there are none)."""
        return self.labelled / self.total if self.total else 0.0

    def caption(self) -> str:
        """``"123 / 487 sentences labelled (25%)"``."""
        return f"{self.labelled} / {self.total} sentences labelled ({self.fraction:.0%})"

    def details(self) -> str:
        """Per split and per entity type in one line, e.g.
        ``"train 12/300 · dev 0/60 · test 0/147 — Chemical 30 spans in 21 sentences · …"``."""
        splits = " · ".join(
            f"{name} {v['labelled']}/{v['sentences']}" for name, v in self.splits.items() if v["sentences"]
        )
        kinds = " · ".join(
            f"{name} {v['spans']} span{'s' if v['spans'] != 1 else ''} in {v['sentences']} "
            f"sentence{'s' if v['sentences'] != 1 else ''}"
            for name, v in self.per_label.items()
        )
        return " — ".join(part for part in (splits, kinds) if part) or "No sentences yet."


def progress(db: Database, project_id: int) -> Progress:
    """Labelled / total, per split, and per-label span and sentence counts."""
    splits = {s: {"sentences": 0, "labelled": 0} for s in config.SPLITS}
    for r in db.query(
        "SELECT split, COUNT(*) AS n, SUM(status = 'labelled') AS done FROM sentences"
        " WHERE project_id = ? GROUP BY split",
        [project_id],
    ):
        splits[r["split"]] = {"sentences": r["n"], "labelled": r["done"] or 0}
    per_label = {
        r["name"]: {"spans": r["spans"], "sentences": r["sentences"]}
        for r in db.query(
            "SELECT l.name, COUNT(sp.id) AS spans, COUNT(DISTINCT sp.sentence_id) AS sentences"
            " FROM labels l LEFT JOIN spans sp ON sp.label_id = l.id AND sp.origin = 'gold'"
            " WHERE l.project_id = ? GROUP BY l.id ORDER BY l.position, l.id",
            [project_id],
        )
    }
    return Progress(
        total=sum(v["sentences"] for v in splits.values()),
        labelled=sum(v["labelled"] for v in splits.values()),
        splits=splits,
        per_label=per_label,
    )


# ---------------------------------------------------------------------------------------------
# What one browser tab knows


@dataclass
class UndoEntry:
    """The state of a sentence before one change: restoring it undoes the change."""

    sentence_id: int
    spans: list[Span]
    status: str


@dataclass
class Notice:
    """A message for the user after an action (``level``: success, info, warning, error)."""

    level: str
    text: str
    #: On a conflict: the spans this tab tried to save (shown so the user can redo them).
    unsaved: list[Span] | None = None


@dataclass
class LabelSession:
    """One tab's labelling state (kept in Streamlit's session state, never in a module global).

    Attributes:
        current: id of the sentence on screen.
        versions: sentence id → the version this tab last saw or wrote.
        own: sentence id → versions this tab wrote itself (its own quick successive edits
            never conflict with each other; anybody else's do).
        undo: changes this tab can undo, most recent last.
        ack: sequence number of the last widget action handled (echoed to the widget); an
            action with a number not above it was handled already and is ignored.
        notice: what to tell the user on the next render.
        acted: set by the page's callbacks: this script run follows the user's own action in
            this tab, so a ``?sentence=`` in the URL is this tab's own, possibly stale, one
            (the browser may send the URL of an earlier run), not a link to follow.
    """

    current: int | None = None
    versions: dict[int, int] = field(default_factory=dict)
    own: dict[int, set[int]] = field(default_factory=dict)
    undo: list[UndoEntry] = field(default_factory=list)
    ack: int = 0
    notice: Notice | None = None
    filter_key: tuple | None = None
    link_handled: str | None = None
    acted: bool = False
    #: Sentences this tab moved away from (accept, next, jump): "previous" walks back along it.
    trail: list[int] = field(default_factory=list)

    def move_to(self, sentence_id: int | None) -> None:
        """Open another sentence, remembering the one left for "previous"."""
        if sentence_id is not None and self.current is not None and sentence_id != self.current:
            self.trail.append(self.current)
            del self.trail[:-UNDO_DEPTH]
        self.current = sentence_id

    def seen(self, sentence: Mapping[str, Any]) -> None:
        """Record the version of a sentence as it is shown."""
        self.versions[sentence["id"]] = sentence["version"]

    def expected_version(self, sentence_id: int, base: int | None) -> int | None:
        """The version a save from this tab must find in the database.

        ``base`` is the version the widget was showing when the user acted. When the versions
        after it were all written by this tab (quick edits overtaking the page refresh), the
        tab's latest version is expected; when somebody else wrote one of them, ``base`` is
        expected, so the save fails with :class:`Conflict` instead of overwriting their work.
        """
        known = self.versions.get(sentence_id)
        if base is None:
            return known
        if known is None:
            return base
        own = self.own.get(sentence_id, set())
        if base <= known and all(v in own for v in range(base + 1, known + 1)):
            return known
        return base

    def wrote(self, sentence_id: int, version: int) -> None:
        self.versions[sentence_id] = version
        self.own.setdefault(sentence_id, set()).add(version)


# ---------------------------------------------------------------------------------------------
# Actions from the widget


@dataclass(frozen=True)
class Action:
    """One user action sent by the labelling widget (validated; the browser is not trusted)."""

    type: str
    sentence_id: int
    spans: tuple[Span, ...] | None = None
    version: int | None = None
    #: The widget's increasing sequence number; 0 for the page's buttons (never deduplicated).
    seq: int = 0


def parse_action(raw: Any) -> Action:
    """Validate the JSON the widget sends: ``{type, sentence_id, version, spans, seq}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise NerlabError("The labelling widget sent something that is not JSON.") from None
    if not isinstance(raw, Mapping):
        raise NerlabError("The labelling widget sent an action that is not an object.")
    kind = raw.get("type")
    if kind not in ACTIONS:
        raise NerlabError(f"Unknown labelling action {kind!r}.")
    sid = raw.get("sentence_id")
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise NerlabError("The labelling action names no sentence.")
    version = raw.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise NerlabError("The labelling action has a bad version number.")
    spans = None
    if raw.get("spans") is not None:
        if not isinstance(raw["spans"], list):
            raise NerlabError("The labelling action's spans must be a list.")
        items = []
        for sp in raw["spans"]:
            try:
                items.append(Span(int(sp["start"]), int(sp["end"]), str(sp["label"])))
            except (KeyError, TypeError, ValueError):
                raise NerlabError(f"Bad span from the labelling widget: {sp!r}.") from None
        spans = tuple(items)
    seq = raw.get("seq") or 0
    return Action(kind, sid, spans, version, int(seq) if isinstance(seq, (int, float)) else 0)


def snap_to_tokens(tokens: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Widen a character range to whole tokens (what the widget does with a mouse selection).

    Returns None when the range covers no token (only spaces).
    """
    inside = [(s, e) for s, e in tokens if s < end and e > start]
    if not inside:
        return None
    return inside[0][0], inside[-1][1]


def _saved_spans(db: Database, sentence_id: int) -> list[Span]:
    return projects.sentence_spans(db, sentence_id)


def _describe_conflict(db: Database, sentence_id: int) -> str:
    current = projects.get_sentence(db, sentence_id)
    saved = _saved_spans(db, sentence_id)
    who = current["annotator"] or "someone"
    entities = ", ".join(f"{s.label} “{current['text'][s.start:s.end]}”" for s in saved) or "no entities"
    return (
        f"Not saved: sentence {number_of(db, current)} was changed by {who} at "
        f"{current['updated_at']} (in another tab or by another user) after this tab loaded it. "
        f"Their version is shown now ({entities}; {current['status']}). "
        "Redo your change on it if it is still needed."
    )


def _save(
    db: Database,
    session: LabelSession,
    sentence: Mapping[str, Any],
    spans: Sequence[Span],
    status: str,
    annotator: str,
    base: int | None,
) -> bool:
    """Save with optimistic concurrency; on a conflict set the notice and return False."""
    sid = sentence["id"]
    before = UndoEntry(sid, _saved_spans(db, sid), sentence["status"])
    try:
        version = projects.save_annotation(
            db, sid, list(spans), annotator or "anonymous",
            expected_version=session.expected_version(sid, base), status=status,
        )
    except Conflict:
        session.notice = Notice("error", _describe_conflict(db, sid), unsaved=list(spans))
        session.seen(projects.get_sentence(db, sid))
        return False
    session.wrote(sid, version)
    if before.spans != sorted(spans) or before.status != status:
        session.undo.append(before)
        del session.undo[:-UNDO_DEPTH]
    return True


def apply_action(
    db: Database,
    project_id: int,
    session: LabelSession,
    action: Action,
    annotator: str,
    flt: QueueFilter,
) -> None:
    """Carry out one widget action: save at once, move through the queue, or undo.

    Sets ``session.notice`` to tell the user what happened (conflicts and invalid spans
    included) and ``session.current`` to the sentence to show next. Never raises for problems a
    user can cause; they become error notices.
    """
    if action.seq and action.seq <= session.ack:
        # Already carried out: when a new rerun interrupts the script run that handled a widget
        # action, Streamlit keeps the action's trigger and calls the callback again.
        return
    session.ack = max(session.ack, action.seq)
    session.notice = None
    try:
        if action.type == "undo":
            _undo(db, project_id, session, annotator)
            return
        sentence = projects.get_sentence(db, action.sentence_id)
        if sentence["project_id"] != project_id:
            raise NerlabError("That sentence belongs to another project; reload the page.")
        if action.type in ("edit", "accept", "reopen"):
            spans = list(action.spans) if action.spans is not None else _saved_spans(db, sentence["id"])
            status = {"edit": sentence["status"], "accept": "labelled", "reopen": "unlabelled"}[
                action.type
            ]
            unchanged = sorted(spans) == _saved_spans(db, sentence["id"]) and status == sentence["status"]
            if action.type == "edit" and unchanged:
                session.current = sentence["id"]  # nothing to save (e.g. a span dragged back)
                return
            if not _save(db, session, sentence, spans, status, annotator, action.version):
                session.current = sentence["id"]
                return
            if action.type == "accept":
                nxt = next_in_queue(db, project_id, flt, sentence["position"])
                session.current = sentence["id"]
                session.move_to(nxt if nxt is not None else sentence["id"])
                if nxt is None or nxt == sentence["id"]:
                    session.notice = Notice(
                        "success", "Saved. Nothing left in this queue: every sentence in it is done."
                    )
            else:
                session.current = sentence["id"]
        elif action.type == "prev" and _back(db, project_id, session, sentence["id"]):
            return
        elif action.type in ("next", "prev"):
            step = 1 if action.type == "next" else -1
            nxt = neighbour(db, project_id, flt, sentence["position"], step)
            if nxt is None:
                session.notice = Notice(
                    "info",
                    "This is the last sentence in the queue."
                    if step > 0
                    else "This is the first sentence in the queue.",
                )
                session.current = sentence["id"]
            elif step > 0:
                session.current = sentence["id"]
                session.move_to(nxt)
            else:  # walking back does not grow the trail (no ping-pong between two sentences)
                session.current = nxt
    except NerlabError as exc:
        session.notice = Notice("error", str(exc))


def _back(db: Database, project_id: int, session: LabelSession, here: int) -> bool:
    """Go back to the sentence this tab came from, if there is one; True when it did."""
    while session.trail:
        previous = session.trail.pop()
        if previous == here:
            continue
        row = db.execute("SELECT project_id FROM sentences WHERE id = ?", [previous]).fetchone()
        if row and row[0] == project_id:
            session.current = previous
            return True
    return False


def _undo(db: Database, project_id: int, session: LabelSession, annotator: str) -> None:
    if not session.undo:
        session.notice = Notice("info", "Nothing to undo in this tab.")
        return
    entry = session.undo.pop()
    try:
        sentence = projects.get_sentence(db, entry.sentence_id)
    except NotFound:
        session.notice = Notice("warning", "The sentence of the last change no longer exists.")
        return
    session.current = sentence["id"]
    sid = sentence["id"]
    try:
        version = projects.save_annotation(
            db, sid, entry.spans, annotator or "anonymous",
            expected_version=session.expected_version(sid, None), status=entry.status,
        )
    except Conflict:
        session.notice = Notice("error", _describe_conflict(db, sid))
        session.seen(projects.get_sentence(db, sid))
        return
    session.wrote(sid, version)
    session.notice = Notice("info", f"Undone: sentence {number_of(db, sentence)} is back as it was.")


# ---------------------------------------------------------------------------------------------
# What the widget is given


def label_legend(labels: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Entity types as the widget shows them: name, colour, hotkey, one-line guideline."""
    return [
        {
            "name": row["name"],
            "color": row["color"],
            "hotkey": row["hotkey"] or "",
            "description": (row["description"] or "").split("\n", 1)[0],
        }
        for row in labels
    ]


def widget_data(
    db: Database,
    sentence: Mapping[str, Any],
    labels: Sequence[Mapping[str, Any]],
    *,
    queue_index: int | None,
    queue_total: int,
    ack: int = 0,
) -> dict:
    """Everything the widget needs to draw one sentence (JSON-serialisable)."""
    tokens = json.loads(sentence["tokens"]) if sentence["tokens"] else tokenize(sentence["text"])
    return {
        "sentence_id": sentence["id"],
        "version": sentence["version"],
        "status": sentence["status"],
        "text": sentence["text"],
        "tokens": [list(t) for t in tokens],
        "spans": [s.to_dict() for s in _saved_spans(db, sentence["id"])],
        "labels": label_legend(labels),
        "number": number_of(db, sentence),
        "split": sentence["split"],
        "annotator": sentence["annotator"] or "",
        "updated_at": sentence["updated_at"],
        "queue_index": queue_index,
        "queue_total": queue_total,
        "ack": ack,
    }


# ---------------------------------------------------------------------------------------------
# Helpers of the Data page


def page_count(total: int, page_size: int) -> int:
    """Number of table pages (at least 1, so an empty table still has page 1)."""
    return max(1, -(-total // page_size))


def parse_numbers(text: str, maximum: int) -> list[int]:
    """Sentence numbers from ``"1-50, 75, 80-82"`` (1-based, inclusive ranges), sorted, unique.

    Raises :class:`NerlabError` naming the bad part, or a number outside ``1..maximum``.
    """
    numbers: set[int] = set()
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            raise NerlabError(f"{part!r} is not a sentence number or a range like 10-20.")
        lo, hi = int(bounds[0]), int(bounds[-1])
        if lo > hi:
            raise NerlabError(f"Range {part!r} goes backwards; write it as {hi}-{lo}.")
        if lo < 1 or hi > maximum:
            raise NerlabError(f"{part!r} is outside the project's sentences 1 to {maximum}.")
        numbers.update(range(lo, hi + 1))
    if not numbers:
        raise NerlabError("Give sentence numbers, e.g. 1-50, 75.")
    return sorted(numbers)


def ids_for_numbers(db: Database, project_id: int, numbers: Sequence[int]) -> list[int]:
    """Sentence ids of the given 1-based numbers (project order)."""
    ids = [r[0] for r in db.execute(
        "SELECT id FROM sentences WHERE project_id = ? ORDER BY position", [project_id]
    ).fetchall()]
    return [ids[n - 1] for n in numbers if 1 <= n <= len(ids)]


def export_filename(project_name: str, fmt: str, split: str | None) -> str:
    """A safe download name, e.g. ``BC5CDR_demo-test.conll`` or ``BC5CDR_demo-hf.zip``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", project_name).strip("_") or "project"
    stem += f"-{split}" if split else ""
    return stem + ("-hf.zip" if fmt == "hf" else f".{fmt}")


def export_file(
    db: Database, project_id: int, fmt: str, split: str | None, include_unlabelled: bool
) -> tuple[bytes, str, str]:
    """A project's export as ``(content, file name, MIME type)`` for a browser download.

    CoNLL and JSONL are text files; the Hugging Face ``datasets`` folder is zipped.
    """
    import io as _io
    import tempfile
    import zipfile
    from pathlib import Path

    from core import io

    file_name = export_filename(projects.get_project(db, project_id)["name"], fmt, split)
    if fmt in ("conll", "jsonl"):
        text = io.export(db, project_id, fmt, split=split, include_unlabelled=include_unlabelled)
        mime = "text/plain" if fmt == "conll" else "application/jsonl"
        return str(text).encode("utf-8"), file_name, mime
    if fmt == "hf":
        stem = file_name.removesuffix("-hf.zip")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / stem
            io.export(db, project_id, "hf", split=split, include_unlabelled=include_unlabelled, path=folder)
            buffer = _io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for file in sorted(folder.rglob("*")):
                    if file.is_file():
                        zf.write(file, file.relative_to(Path(tmp)))
            return buffer.getvalue(), file_name, "application/zip"
    raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(io.EXPORT_FORMATS)}.")


def deferred_export(
    project_id: int, fmt: str, split: str | None, include_unlabelled: bool
) -> Callable[[], bytes]:
    """A no-argument function building the export when called (Streamlit's lazy download).

    It opens its own connection: the download runs in another thread than the page.
    """

    def build() -> bytes:
        from core.db import get_db

        return export_file(get_db(), project_id, fmt, split, include_unlabelled)[0]

    return build
