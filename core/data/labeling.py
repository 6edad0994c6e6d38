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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from core import config
from core.data.spans import Span
from core.errors import NerlabError, NotFound

STATUSES = ("unlabelled", "labelled", "all")
#: The queue's order: project order, a fixed shuffle, or the suggesting model's confidence in
#: each sentence, lowest first (sentences without a suggestion come last, in project order).
ORDERS = ("position", "random", "confidence")
ORDER_TITLES = {"position": "in order", "random": "random", "confidence": "least confident first"}


@dataclass(frozen=True)
class QueueFilter:
    """Which sentences the queue walks through, and in which order.

    Attributes:
        status: ``"unlabelled"`` (the default queue), ``"labelled"`` or ``"all"``.
        split: only this split (``train``/``dev``/``test``), or None for all.
        label: only sentences with at least one gold span of this entity type.
        text: only sentences containing this text (case-insensitive for ASCII letters).
        order: ``"position"`` (project order), ``"random"`` (the same shuffle for everybody,
            from each sentence's content hash) or ``"confidence"`` (least confident first).
        annotator: whose queue it is. Where several annotators label each sentence
            (``share`` other than 1), ``"unlabelled"`` is their own queue: the sentences they
            have not labelled that still need an annotator (fewer than ``share`` labelled them;
            every sentence for ``share`` 0, "everyone"), not reviewed yet; ``"labelled"`` the
            sentences they labelled. With ``share`` 1 (one annotator per sentence, the default)
            the status is the sentence's own, as for a single user.
        share: how many annotators label each sentence (see :mod:`core.data.annotations`).
    """

    status: str = "unlabelled"
    split: str | None = None
    label: str | None = None
    text: str = ""
    order: str = "position"
    annotator: str | None = None
    share: int = 1

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise NerlabError(f"Status filter {self.status!r} is not one of {', '.join(STATUSES)}.")
        if self.split is not None and self.split not in config.SPLITS:
            raise NerlabError(f"Split filter {self.split!r} is not one of {', '.join(config.SPLITS)}.")
        if self.order not in ORDERS:
            raise NerlabError(f"Queue order {self.order!r} is not one of {', '.join(ORDERS)}.")

    def describe(self) -> str:
        """A short human description, e.g. ``unlabelled · train · with Disease · "lithium"``."""
        parts = [self.status if self.status != "all" else "all sentences"]
        if self.split:
            parts.append(self.split)
        if self.label:
            parts.append(f"with {self.label}")
        if self.text.strip():
            parts.append(f'containing "{self.text.strip()}"')
        if self.order != "position":
            parts.append(ORDER_TITLES[self.order])
        return " · ".join(parts)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(db: Database, project_id: int, flt: QueueFilter) -> tuple[str, list[Any]]:
    """SQL condition (on alias ``s``) and its parameters for a filter."""
    where = ["s.project_id = ?"]
    params: list[Any] = [project_id]
    if flt.status != "all" and flt.annotator and flt.share != 1:
        mine = ("EXISTS (SELECT 1 FROM annotations a WHERE a.sentence_id = s.id"
                " AND a.annotator = ? AND a.status = 'labelled')")
        if flt.status == "labelled":
            where.append(mine)
            params.append(flt.annotator)
        else:
            where.append(f"NOT {mine} AND s.reviewed_at IS NULL")
            params.append(flt.annotator)
            if flt.share > 1:
                where.append("(SELECT COUNT(*) FROM annotations a WHERE a.sentence_id = s.id"
                             " AND a.status = 'labelled') < ?")
                params.append(flt.share)
    elif flt.status != "all":
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


def _order(flt: QueueFilter) -> tuple[str, str]:
    """``(join, key)``: what to join to ``sentences s`` and the SQL expression the queue is
    sorted by (ties, and the position order itself, go by position)."""
    if flt.order == "random":
        return "", "s.hash"
    if flt.order == "confidence":
        return " LEFT JOIN suggestions sg ON sg.sentence_id = s.id", "COALESCE(sg.confidence, 2.0)"
    return "", "s.position"


def _place(db: Database, project_id: int, flt: QueueFilter, position: int,
           sentence_id: int | None) -> tuple[Any, int]:
    """``(key, position)`` of a sentence in the queue's order (it need not match the filter)."""
    join, key = _order(flt)
    if key == "s.position":
        return position, position
    if sentence_id is None:
        row = db.execute(f"SELECT {key} FROM sentences s{join} WHERE s.project_id = ? AND"
                         " s.position = ?", [project_id, position]).fetchone()
    else:
        row = db.execute(f"SELECT {key} FROM sentences s{join} WHERE s.id = ?",
                         [sentence_id]).fetchone()
    return (row[0] if row else None), position


def first(db: Database, project_id: int, flt: QueueFilter) -> int | None:
    """Id of the first matching sentence in the queue's order, or None."""
    sql, params = _where(db, project_id, flt)
    join, key = _order(flt)
    row = db.execute(
        f"SELECT s.id FROM sentences s{join} WHERE {sql} ORDER BY {key}, s.position LIMIT 1", params
    ).fetchone()
    return row[0] if row else None


def neighbour(
    db: Database, project_id: int, flt: QueueFilter, position: int, step: int = 1,
    sentence_id: int | None = None,
) -> int | None:
    """Id of the next (``step=1``) or previous (``step=-1``) matching sentence in the queue's
    order after the sentence at ``position`` (``sentence_id`` names it, for the orders other
    than project order), or None."""
    sql, params = _where(db, project_id, flt)
    join, key = _order(flt)
    op, order = (">", "ASC") if step > 0 else ("<", "DESC")
    here = _place(db, project_id, flt, position, sentence_id)
    if here[0] is None:
        return None
    row = db.execute(
        f"SELECT s.id FROM sentences s{join} WHERE {sql} AND ({key}, s.position) {op} (?, ?)"
        f" ORDER BY {key} {order}, s.position {order} LIMIT 1",
        [*params, *here],
    ).fetchone()
    return row[0] if row else None


def next_in_queue(db: Database, project_id: int, flt: QueueFilter, position: int,
                  sentence_id: int | None = None) -> int | None:
    """The next matching sentence after ``position``, wrapping round to the first one."""
    found = neighbour(db, project_id, flt, position, 1, sentence_id)
    if found is None:
        found = first(db, project_id, flt)
    return found


def matches(db: Database, project_id: int, flt: QueueFilter, sentence_id: int) -> bool:
    """Whether a sentence is in the filtered queue."""
    sql, params = _where(db, project_id, flt)
    return bool(
        db.execute(f"SELECT 1 FROM sentences s WHERE {sql} AND s.id = ?", [*params, sentence_id]).fetchone()
    )


def rank(db: Database, project_id: int, flt: QueueFilter, position: int,
         sentence_id: int | None = None) -> int:
    """How many matching sentences come before ``position`` in the queue's order (the 0-based
    place in the queue)."""
    sql, params = _where(db, project_id, flt)
    join, key = _order(flt)
    here = _place(db, project_id, flt, position, sentence_id)
    return db.execute(
        f"SELECT COUNT(*) FROM sentences s{join} WHERE {sql} AND ({key}, s.position) < (?, ?)",
        [*params, *here],
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
    ``updated_at``, ``gold_source`` (see :mod:`core.data.annotations`), ``annotations`` (how many
    annotators labelled it), ``spans`` (list of :class:`Span`) and ``entities``
    (``"Disease: fever; …"``).
    """
    sql, params = _where(db, project_id, flt)
    rows = [
        dict(r)
        for r in db.query(
            "SELECT s.id, s.position, s.text, s.split, s.status, s.annotator, s.updated_at,"
            " s.gold_source, (SELECT COUNT(*) FROM annotations a WHERE a.sentence_id = s.id"
            "   AND a.status = 'labelled') AS annotations,"
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
