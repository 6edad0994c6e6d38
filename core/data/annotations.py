"""Each annotator's own annotation of a sentence, and the gold a project trains on.

Every annotator keeps their own annotation of a sentence (its spans and its status, labelled
or not yet) in ``annotations`` and ``annotation_spans``; two annotators never overwrite each
other, and two tabs of one annotator are kept apart by the annotation's version (optimistic
concurrency, as before). The sentence's *gold* stays where training, evaluation and export
read it: the ``spans`` rows with origin ``gold`` and the sentence's ``status``. It follows from
the annotations (:func:`refresh_gold`), and ``sentences.gold_source`` says how:

- ``review``: a reviewer adjudicated it (:mod:`core.data.review`); it stands until a reviewer
  changes it;
- ``latest``: the project shares each sentence to one annotator (the default,
  :func:`share` = 1): the latest save sets the gold, as a correction would, and earlier
  annotations are kept (the Review page lists those that differ);
- ``single`` / ``agreed``: one labelled annotation, or several that agree exactly;
- ``disputed``: labelled annotations disagree and no reviewer has adjudicated: the sentence has
  no gold (status ``unlabelled``: training and evaluation leave it out) until a review.

How sentences are shared out (:func:`share`): ``1`` one annotator per sentence, ``N`` N
annotators per sentence (a sentence leaves the queues once N annotators labelled it, as
Argilla's task distribution), ``0`` everyone labels everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlite_utils import Database

from core.data.db import now
from core.data.spans import Span, SpanError, validate_spans
from core.errors import Conflict, NerlabError, NotFound

#: ``per_sentence`` value meaning "everyone labels every sentence".
EVERYONE = 0
#: The default: each sentence is labelled by one annotator (NERLab before teams).
ONE = 1
MAX_PER_SENTENCE = 50
#: The annotator recorded for imported labels that name nobody.
IMPORT = "import"
GOLD_SOURCES = ("single", "latest", "agreed", "disputed", "review")


# ----------------------------------------------------------------------------------- sharing


def share(db: Database, project_id: int) -> int:
    """How many annotators label each sentence of the project: 1 (default), N, or 0 (everyone)."""
    row = db.execute("SELECT per_sentence FROM team_settings WHERE project_id = ?",
                     [project_id]).fetchone()
    return ONE if row is None else int(row[0])


def set_share(db: Database, project_id: int, per_sentence: int) -> int:
    """Choose how the project's sentences are shared out; return the new value.

    The gold of every sentence with annotations is worked out again under the new rule."""
    if isinstance(per_sentence, bool) or not isinstance(per_sentence, int) or not (
            0 <= per_sentence <= MAX_PER_SENTENCE):
        raise NerlabError(f"Annotators per sentence: give a whole number from 1 to "
                          f"{MAX_PER_SENTENCE}, or 0 for everyone (got {per_sentence!r}).")
    if not db.execute("SELECT 1 FROM projects WHERE id = ?", [project_id]).fetchone():
        raise NotFound(f"No project with id {project_id}.")
    stamp = now()
    with db.atomic():
        db.execute(
            "INSERT INTO team_settings (project_id, per_sentence, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (project_id) DO UPDATE SET per_sentence = excluded.per_sentence,"
            " updated_at = excluded.updated_at", [project_id, per_sentence, stamp])
        for (sid,) in db.execute("SELECT DISTINCT a.sentence_id FROM annotations a JOIN sentences"
                                 " s ON s.id = a.sentence_id WHERE s.project_id = ?",
                                 [project_id]).fetchall():
            refresh_gold(db, sid, stamp, per_sentence=per_sentence, bump=False)
    return per_sentence


def describe_share(per_sentence: int) -> str:
    """``"one annotator per sentence"``, ``"3 annotators per sentence"``, ``"everyone labels
    every sentence"``."""
    if per_sentence == EVERYONE:
        return "everyone labels every sentence"
    if per_sentence == ONE:
        return "one annotator per sentence"
    return f"{per_sentence} annotators per sentence"


# -------------------------------------------------------------------------------------- read


def _spans(db: Database, annotation_ids: Sequence[int]) -> dict[int, list[Span]]:
    out: dict[int, list[Span]] = {i: [] for i in annotation_ids}
    for chunk in range(0, len(annotation_ids), 500):
        part = list(annotation_ids[chunk:chunk + 500])
        marks = ",".join("?" * len(part))
        for r in db.execute(
            f'SELECT a.annotation_id, a.start, a."end", l.name FROM annotation_spans a JOIN labels'
            f" l ON l.id = a.label_id WHERE a.annotation_id IN ({marks}) ORDER BY a.start, a.\"end\"",
            part,
        ):
            out[r[0]].append(Span(r[1], r[2], r[3]))
    return out


def _rows(db: Database, where: str, params: Sequence[Any]) -> list[dict]:
    rows = [dict(r) for r in db.query(
        "SELECT a.* FROM annotations a WHERE " + where + " ORDER BY a.seq, a.id", params)]
    spans = _spans(db, [r["id"] for r in rows])
    for r in rows:
        r["spans"] = spans[r["id"]]
    return rows


def get(db: Database, sentence_id: int, annotator: str) -> dict | None:
    """One annotator's annotation of a sentence (row with ``spans``), or None."""
    rows = _rows(db, "a.sentence_id = ? AND a.annotator = ?", [sentence_id, annotator])
    return rows[0] if rows else None


def of_sentence(db: Database, sentence_id: int) -> list[dict]:
    """Every annotation of a sentence, in the order they were last saved (oldest first)."""
    return _rows(db, "a.sentence_id = ?", [sentence_id])


def labelled_rows(db: Database, project_id: int) -> list[dict]:
    """Every labelled annotation of the project (rows with ``spans``), oldest save first."""
    return _rows(db, "a.status = 'labelled' AND a.sentence_id IN"
                     " (SELECT id FROM sentences WHERE project_id = ?)", [project_id])


def labelled_sets(db: Database, project_id: int) -> dict[int, dict[str, list[Span]]]:
    """sentence id → annotator → spans, for every labelled annotation of the project."""
    out: dict[int, dict[str, list[Span]]] = {}
    for r in labelled_rows(db, project_id):
        out.setdefault(r["sentence_id"], {})[r["annotator"]] = r["spans"]
    return out


def annotators(db: Database, project_id: int) -> list[dict]:
    """Who annotated the project: ``annotator``, ``labelled``, ``drafts``, ``last_at``."""
    return [dict(r) for r in db.query(
        "SELECT a.annotator, SUM(a.status = 'labelled') AS labelled,"
        " SUM(a.status = 'unlabelled') AS drafts, MAX(a.updated_at) AS last_at"
        " FROM annotations a JOIN sentences s ON s.id = a.sentence_id WHERE s.project_id = ?"
        " GROUP BY a.annotator ORDER BY a.annotator COLLATE NOCASE", [project_id])]


def working(db: Database, sentence: Mapping[str, Any], annotator: str,
            per_sentence: int | None = None) -> dict:
    """What the Label page shows ``annotator`` for a sentence and checks their save against.

    Their own annotation when they have one. Otherwise, when the project shares each sentence to
    one annotator, the sentence's gold (they correct it, as before teams); when several label
    each sentence, an empty sentence (each labels it on their own, without seeing the others').
    ``version`` is their annotation's version (0: none yet); ``own`` whether it is theirs.
    """
    mine = get(db, sentence["id"], annotator) if annotator else None
    if mine is not None:
        return {"spans": mine["spans"], "status": mine["status"], "version": mine["version"],
                "annotator": annotator, "updated_at": mine["updated_at"], "own": True}
    if per_sentence is None:
        per_sentence = share(db, sentence["project_id"])
    if per_sentence == ONE:
        gold = [Span(r[0], r[1], r[2]) for r in db.execute(
            'SELECT sp.start, sp."end", l.name FROM spans sp JOIN labels l ON l.id = sp.label_id'
            " WHERE sp.sentence_id = ? AND sp.origin = 'gold' ORDER BY sp.start",
            [sentence["id"]])]
        return {"spans": gold, "status": sentence["status"], "version": 0,
                "annotator": sentence["annotator"] or "", "updated_at": sentence["updated_at"],
                "own": False}
    return {"spans": [], "status": "unlabelled", "version": 0, "annotator": "",
            "updated_at": "", "own": False}


# ------------------------------------------------------------------------------------- write


def _label_ids(db: Database, project_id: int) -> dict[str, int]:
    return {r[0]: r[1] for r in db.execute("SELECT name, id FROM labels WHERE project_id = ?",
                                           [project_id])}


def _sentence(db: Database, sentence_id: int) -> dict:
    rows = list(db.query("SELECT * FROM sentences WHERE id = ?", [sentence_id]))
    if not rows:
        raise NotFound(f"No sentence with id {sentence_id}.")
    return dict(rows[0])


def check_spans(sentence: Mapping[str, Any], spans: Iterable[Span],
                labels: Mapping[str, int]) -> list[Span]:
    """The spans sorted, or a :class:`NerlabError` naming the first that does not fit."""
    try:
        ordered = validate_spans(sentence["text"], list(spans))
    except SpanError as exc:
        raise NerlabError(f"Sentence {sentence['id']}: {exc}") from None
    for span in ordered:
        if span.label not in labels:
            raise NerlabError(f"Sentence {sentence['id']}: unknown entity type {span.label!r}.")
    return ordered


def write(db: Database, sentence_id: int, annotator: str, ordered: Sequence[Span], status: str,
          labels: Mapping[str, int], stamp: str, expected_version: int | None = None,
          created_at: str | None = None) -> int | None:
    """Store ``annotator``'s annotation (inside the caller's transaction); return its new
    version, or None when ``expected_version`` (0: no annotation yet) is not what is stored."""
    if not annotator or not annotator.strip():
        raise NerlabError("An annotation needs the annotator's name.")
    if status not in ("labelled", "unlabelled"):
        raise NerlabError(f"Status {status!r} is not labelled or unlabelled.")
    row = db.execute("SELECT id, version FROM annotations WHERE sentence_id = ? AND annotator = ?",
                     [sentence_id, annotator]).fetchone()
    if expected_version is not None and (row[1] if row else 0) != expected_version:
        return None
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM annotations").fetchone()[0]
    if row is None:
        version = (expected_version or 0) + 1
        cur = db.execute(
            "INSERT INTO annotations (sentence_id, annotator, status, version, seq, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [sentence_id, annotator, status, version, seq, created_at or stamp, stamp])
        annotation_id = cur.lastrowid
    else:
        annotation_id, version = row[0], row[1] + 1
        db.execute("UPDATE annotations SET status = ?, version = ?, seq = ?, updated_at = ?"
                   " WHERE id = ?", [status, version, seq, stamp, annotation_id])
        db.execute("DELETE FROM annotation_spans WHERE annotation_id = ?", [annotation_id])
    db.conn.executemany(
        'INSERT INTO annotation_spans (annotation_id, start, "end", label_id) VALUES (?,?,?,?)',
        [(annotation_id, s.start, s.end, labels[s.label]) for s in ordered])
    return version


def save(db: Database, sentence_id: int, spans: Sequence[Span], annotator: str,
         expected_version: int | None = None, status: str = "labelled") -> int:
    """Save ``annotator``'s annotation of a sentence and work out its gold again, in one
    transaction; return the annotation's new version.

    With ``expected_version`` (the version of their annotation the tab showed, 0 for none) the
    save is refused with :class:`Conflict` when another tab of theirs saved since.
    """
    sentence = _sentence(db, sentence_id)
    labels = _label_ids(db, sentence["project_id"])
    ordered = check_spans(sentence, spans, labels)
    stamp = now()
    with db.atomic():
        version = write(db, sentence_id, annotator, ordered, status, labels, stamp,
                        expected_version)
        if version is None:
            current = get(db, sentence_id, annotator)
            raise Conflict(
                f"Sentence {sentence['position'] + 1} was changed by {annotator} at "
                f"{current['updated_at'] if current else 'another moment'} (in another tab) "
                "after you opened it; reload it to see that version.")
        refresh_gold(db, sentence_id, stamp)
        return version


def remove(db: Database, sentence_id: int, annotator: str,
           expected_version: int | None = None) -> None:
    """Delete ``annotator``'s annotation (undoing their first save) and work out the gold again;
    :class:`Conflict` when another tab of theirs saved since ``expected_version``."""
    with db.atomic():
        row = db.execute("SELECT id, version FROM annotations WHERE sentence_id = ? AND"
                         " annotator = ?", [sentence_id, annotator]).fetchone()
        if row is None:
            return
        if expected_version is not None and row[1] != expected_version:
            raise Conflict(f"Your annotation of sentence id {sentence_id} changed in another tab.")
        db.execute("DELETE FROM annotations WHERE id = ?", [row[0]])
        refresh_gold(db, sentence_id, now())


# -------------------------------------------------------------------------------------- gold


def _gold_from(annotations: list[dict], per_sentence: int) -> tuple[dict | None, str, str | None]:
    """``(annotation whose spans are the gold, status, gold_source)`` under the sharing rule."""
    if not annotations:
        return None, "unlabelled", None
    labelled = [a for a in annotations if a["status"] == "labelled"]
    latest = annotations[-1]
    if per_sentence == ONE:
        several = len({tuple(a["spans"]) for a in labelled}) > 1
        return latest, latest["status"], "latest" if several else "single"
    if not labelled:
        return latest, "unlabelled", None
    if len({tuple(a["spans"]) for a in labelled}) == 1:
        return labelled[-1], "labelled", "agreed" if len(labelled) > 1 else "single"
    return labelled[-1], "unlabelled", "disputed"


def refresh_gold(db: Database, sentence_id: int, stamp: str, per_sentence: int | None = None,
                 bump: bool = True) -> None:
    """Work out a sentence's gold from its annotations (inside the caller's transaction).

    A reviewed sentence keeps its reviewer's gold. ``bump`` raises the sentence's version (a
    save); a change of the sharing rule does not."""
    sentence = _sentence(db, sentence_id)
    if sentence["gold_source"] == "review":
        return
    if per_sentence is None:
        per_sentence = share(db, sentence["project_id"])
    source, status, gold_source = _gold_from(of_sentence(db, sentence_id), per_sentence)
    spans = source["spans"] if source else []
    who = source["annotator"] if source else None
    labels = _label_ids(db, sentence["project_id"])
    db.execute(
        "UPDATE sentences SET status = ?, annotator = ?, gold_source = ?, updated_at = ?"
        + (", version = version + 1" if bump else "") + " WHERE id = ?",
        [status, who, gold_source, stamp if bump else sentence["updated_at"], sentence_id])
    db.execute("DELETE FROM spans WHERE sentence_id = ? AND origin = 'gold'", [sentence_id])
    db.conn.executemany(
        'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator, created_at,'
        " updated_at) VALUES (?,?,?,?,'gold',?,?,?)",
        [(sentence_id, s.start, s.end, labels[s.label], who, stamp, stamp) for s in spans
         if s.label in labels])
