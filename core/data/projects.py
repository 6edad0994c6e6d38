"""Projects, entity types, sentences and their spans: the labelled data NERLab works on.

Every function takes an open :class:`sqlite_utils.Database` (see :func:`core.data.db.get_db`) and
either returns plain dicts/dataclasses or raises :class:`NerlabError` with a message a user can act
on. Multi-row writes happen in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence

from sqlite_utils import Database

from core import config
from core.data import annotations, suggestions
from core.data.db import now
from core.data.labels import (  # noqa: F401 - re-exported: callers import them from here
    _check_label_name,
    add_label,
    count_label_spans,
    delete_label,
    label_by_name,
    list_labels,
    update_label,
)
from core.data.records import (  # noqa: F401 - re-exported: callers import them from here
    SPLIT_SOURCES,
    AddResult,
    DuplicateConflict,
    SentenceRecord,
    anchored,
    move_spans,
)
from core.data.spans import Example, Span, SpanError, split_at_spans, tokenize, validate_spans
from core.data.splits import (  # noqa: F401 - re-exported
    SplitReport,
    assign_splits,
    carve_dev,
    locked_test_ids,
    set_split,
    split_counts,
    split_project,
)
from core.errors import Conflict, NerlabError, NotFound  # noqa: F401 - re-exported


def text_hash(text: str) -> str:
    """Content hash used to de-duplicate sentences within a project (whitespace-insensitive)."""
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()


def create_project(
    db: Database,
    name: str,
    labels: Sequence[str] = (),
    description: str = "",
    fixed_labels: bool = False,
) -> dict:
    """Create a project with the given entity types and return its row."""
    name = name.strip()
    if not name:
        raise NerlabError("A project needs a name.")
    if db["projects"].count_where("name = ?", [name]):
        raise NerlabError(f"A project called {name!r} already exists.")
    with db.atomic():
        db["projects"].insert(
            {
                "name": name,
                "description": description,
                "fixed_labels": int(fixed_labels),
                "created_at": now(),
            }
        )
        project = get_project(db, name)
        for label in labels:
            add_label(db, project["id"], label)
    return project


def get_project(db: Database, ref: str | int) -> dict:
    """Return a project row by name or id, or raise :class:`NotFound`."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and not _name_exists(db, ref)):
        rows = list(db["projects"].rows_where("id = ?", [int(ref)]))
    else:
        rows = list(db["projects"].rows_where("name = ?", [ref]))
    if not rows:
        raise NotFound(f"No project {ref!r}. Existing: {', '.join(list_project_names(db)) or 'none'}.")
    return rows[0]


def _name_exists(db: Database, name: str) -> bool:
    return bool(db["projects"].count_where("name = ?", [name]))


def list_project_names(db: Database) -> list[str]:
    return [r["name"] for r in db.query("SELECT name FROM projects ORDER BY name")]


def list_projects(db: Database) -> list[dict]:
    """All projects with their counts (sentences, labelled, runs, best micro-F1 on test)."""
    rows = db.query(
        """
        SELECT p.*,
          (SELECT COUNT(*) FROM sentences s WHERE s.project_id = p.id) AS sentences,
          (SELECT COUNT(*) FROM sentences s WHERE s.project_id = p.id
              AND s.status = 'labelled') AS labelled,
          (SELECT COUNT(*) FROM runs r WHERE r.project_id = p.id) AS runs
        FROM projects p ORDER BY p.created_at, p.id
        """
    )
    return [dict(r) for r in rows]


def rename_project(db: Database, project_id: int, name: str) -> dict:
    """Give a project another name (unique); return its row."""
    name = name.strip()
    if not name:
        raise NerlabError("A project needs a name.")
    current = get_project(db, project_id)
    if name != current["name"] and _name_exists(db, name):
        raise NerlabError(f"A project called {name!r} already exists.")
    db.execute("UPDATE projects SET name = ? WHERE id = ?", [name, project_id])
    db.conn.commit()
    return get_project(db, project_id)


def footprint(db: Database, project_id: int) -> dict:
    """What deleting a project removes: counts of its rows, and its run folders' size."""
    row = db.execute(
        "SELECT (SELECT COUNT(*) FROM sentences WHERE project_id = :p),"
        " (SELECT COUNT(*) FROM sentences WHERE project_id = :p AND status = 'labelled'),"
        " (SELECT COUNT(*) FROM spans sp JOIN sentences s ON s.id = sp.sentence_id"
        "   WHERE s.project_id = :p),"
        " (SELECT COUNT(*) FROM runs WHERE project_id = :p),"
        " (SELECT COUNT(*) FROM templates WHERE project_id = :p)", {"p": project_id},
    ).fetchone()
    counts = dict(zip(("sentences", "labelled", "spans", "runs", "templates"), row, strict=True))
    size = 0
    for (run_id,) in db.execute("SELECT id FROM runs WHERE project_id = ?", [project_id]):
        folder = config.runs_dir() / str(run_id)
        if folder.is_dir():
            size += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    counts["run_files_mb"] = round(size / 2**20, 1)
    return counts


def delete_project(db: Database, project_id: int) -> dict:
    """Delete a project with its sentences, labels, templates, runs and their folders on disk;
    return what went (:func:`footprint`). Refused while one of its runs is queued or running."""
    gone = footprint(db, project_id)
    busy = [r[0] for r in db.execute("SELECT id FROM runs WHERE project_id = ? AND status IN"
                                     " ('queued', 'running')", [project_id])]
    if busy:
        raise NerlabError(f"Run(s) {', '.join(map(str, busy))} of this project are queued or "
                          "running: stop them first.")
    run_ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE project_id = ?", [project_id])]
    with db.atomic():
        db.execute("DELETE FROM projects WHERE id = ?", [project_id])
    for run_id in run_ids:
        shutil.rmtree(config.runs_dir() / str(run_id), ignore_errors=True)
    return gone


def add_sentences(
    db: Database,
    project_id: int,
    records: Iterable[SentenceRecord],
    split: str | None = None,
    allow_new_labels: bool | None = None,
    annotator: str | None = "import",
    update: bool = False,
    as_annotator: str | None = None,
) -> AddResult:
    """Add sentences (with their spans) in one transaction; nothing is written on error.

    A sentence whose text (whitespace aside) is already in the project, or earlier in
    ``records``, is a duplicate: the first copy is kept, and the report lists every duplicate
    whose labels differ from it. With ``update`` a labelled record replaces the annotation of
    the copy already in the project instead (as :func:`save_annotation` would), and the report
    says what changed. Entity types not yet in the project are added unless the project has a
    fixed label set (or ``allow_new_labels`` is False), in which case the whole import is
    rejected with the first offending line. A record with spans but no tokens of its own is
    stored with the default tokens cut where a span starts or ends inside one.

    Every labelled record (or one with spans) becomes the annotation of its annotator (the
    file's, else ``annotator``). With ``as_annotator`` the file holds one person's labels: each
    labelled record becomes ``as_annotator``'s annotation, of a new sentence or of the copy
    already in the project (whose other annotations stay as they are), so that labels made
    elsewhere can be compared (:mod:`core.evaluation.agreement`).
    """
    if as_annotator is not None:
        as_annotator = as_annotator.strip()
        if not as_annotator:
            raise NerlabError("Give the annotator's name (--annotator NAME).")
        if update:
            raise NerlabError("--annotator and --update do not go together: --annotator already "
                              "adds or replaces that person's annotations.")
    project = db["projects"].get(project_id)
    if allow_new_labels is None:
        allow_new_labels = not project["fixed_labels"]
    if split is not None and split not in config.SPLITS:
        raise NerlabError(f"Split {split!r} is not one of {', '.join(config.SPLITS)}.")
    records = list(records)
    labels = label_by_name(db, project_id)
    result = AddResult(annotator=as_annotator)
    for rec in records:
        if as_annotator is not None:
            rec.annotator = as_annotator
        _check_record(rec, labels, result, allow_new_labels)
    stamp = now()
    with db.atomic():
        for name in result.new_labels:
            add_label(db, project_id, name)
        labels = label_by_name(db, project_id)
        stored = {r["hash"]: dict(r, number=i) for i, r in enumerate(db.query(
            "SELECT id, hash, text, tokens, status FROM sentences WHERE project_id = ?"
            " ORDER BY position", [project_id]), start=1)}
        before = len(stored)
        kept: dict[str, tuple[str, list[Span], bool, int | None, int | None]] = {}
        position = db.execute(
            "SELECT COALESCE(MAX(position), -1) + 1 FROM sentences WHERE project_id = ?", [project_id]
        ).fetchone()[0]
        for rec in records:
            digest = text_hash(rec.text)
            labelled = rec.labelled if rec.labelled is not None else bool(rec.spans)
            if digest in kept or digest in stored:
                result.duplicates += 1
                if as_annotator is not None and digest in stored and digest not in kept:
                    row = stored[digest]
                    if labelled or rec.spans:
                        result.annotations += _annotate(
                            db, row, move_spans(rec.text, row["text"], rec.spans), labels,
                            as_annotator, "labelled" if labelled else "unlabelled", rec, stamp)
                    kept[digest] = (row["text"], rec.spans, labelled, row["number"], rec.line)
                    continue
                if as_annotator is not None:
                    continue  # a second copy in the file: the first one was this person's
                if digest not in kept:  # the first copy of this file: compare with the project's
                    row = stored[digest]
                    old = sentence_spans(db, row["id"])
                    kept[digest] = (row["text"], old, row["status"] == "labelled", row["number"], None)
                    if update and labelled:
                        new = move_spans(rec.text, row["text"], rec.spans)
                        _update(db, row, old, new, labels, rec.annotator or annotator, stamp, result)
                        kept[digest] = (row["text"], new, True, row["number"], rec.line)
                        continue
                text, spans, was_labelled, number, line = kept[digest]
                if (labelled or rec.spans) and (labelled != was_labelled or
                                                anchored(rec.text, rec.spans) != anchored(text, spans)):
                    result.conflicts.append(DuplicateConflict(rec.line, number, line, rec.unit))
                continue
            result.added += 1
            kept[digest] = (rec.text, rec.spans, labelled, before + result.added, rec.line)
            who = rec.annotator or (annotator if labelled else None)
            created = rec.created_at or rec.updated_at or stamp
            cursor = db.execute(
                "INSERT INTO sentences (project_id, position, text, tokens, split, split_source,"
                " source, hash, status, annotator, gold_source, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [project_id, position, rec.text, json.dumps(rec.tokens) if rec.tokens else None,
                 rec.split or split or "train", _split_source(rec, split), rec.source, digest,
                 "labelled" if labelled else "unlabelled", who,
                 "single" if labelled or rec.spans else None, created, rec.updated_at or created],
            )
            position += 1
            owner = rec.annotator or annotator or annotations.IMPORT
            db.conn.executemany(
                'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                [(cursor.lastrowid, s.start, s.end, labels[s.label]["id"], "gold",
                  owner, created, rec.updated_at or created) for s in rec.spans],
            )
            if labelled or rec.spans:  # the label is its annotator's annotation
                annotations.write(db, cursor.lastrowid, owner, rec.spans,
                                  "labelled" if labelled else "unlabelled",
                                  {n: r["id"] for n, r in labels.items()},
                                  rec.updated_at or created, created_at=created)
                result.annotations += as_annotator is not None
    return result


def _annotate(db: Database, row: dict, spans: list[Span], labels: dict, who: str, status: str,
              rec: SentenceRecord, stamp: str) -> int:
    """``who``'s annotation (from a file) of a sentence already in the project; 1 when it was
    added or changed, 0 when it was there already."""
    try:
        ordered = validate_spans(row["text"], spans)
    except SpanError as exc:
        raise NerlabError(f"{rec.where()}: {exc}") from None
    mine = annotations.get(db, row["id"], who)
    if mine is not None and mine["spans"] == ordered and mine["status"] == status:
        return 0
    _cut_tokens(db, row, ordered)
    annotations.write(db, row["id"], who, ordered, status, {n: r["id"] for n, r in labels.items()},
                      rec.updated_at or stamp, created_at=rec.created_at)
    annotations.refresh_gold(db, row["id"], stamp)
    return 1


def _cut_tokens(db: Database, row: dict, ordered: Sequence[Span]) -> None:
    """Cut the stored tokens where a span starts or ends inside one."""
    tokens = [tuple(t) for t in json.loads(row["tokens"])] if row["tokens"] else None
    cut = split_at_spans(tokens or tokenize(row["text"]), ordered)
    if cut != (tokens or tokenize(row["text"])):
        db.execute("UPDATE sentences SET tokens = ? WHERE id = ?", [json.dumps(cut), row["id"]])


def _check_record(rec: SentenceRecord, labels: dict, result: AddResult, allow_new: bool) -> None:
    """Validate one record before anything is written; say which line is wrong."""
    where = f"{rec.unit} {rec.line}: " if rec.line else ""
    if not rec.text.strip():
        raise NerlabError(f"{where}empty sentence.")
    if "\x00" in rec.text:
        raise NerlabError(f"{where}the sentence contains a NUL character (is this a binary file?).")
    try:
        rec.spans = validate_spans(rec.text, rec.spans)
    except SpanError as exc:
        raise NerlabError(f"{where}{exc}") from None
    if rec.split is not None and rec.split not in config.SPLITS:
        raise NerlabError(f"{where}split {rec.split!r} is not one of {', '.join(config.SPLITS)}.")
    for span in rec.spans:
        if span.label not in labels and span.label not in result.new_labels:
            if not allow_new:
                raise NerlabError(
                    f"{where}entity type {span.label!r} is not in this project's fixed label "
                    f"set ({', '.join(labels) or 'none'})."
                )
            try:
                _check_label_name(span.label)
            except NerlabError as exc:
                raise NerlabError(f"{where}{exc}") from None
            result.new_labels.append(span.label)
    if rec.spans:  # the tokens must agree with the labels: cut where a span starts or ends inside one
        base = rec.tokens if rec.tokens is not None else tokenize(rec.text)
        cut = split_at_spans(base, rec.spans)
        if cut != base:
            rec.tokens = cut


def _split_source(rec: SentenceRecord, split: str | None) -> str:
    if rec.split and rec.split_source in SPLIT_SOURCES and (
            rec.split_source != "default" or rec.split == "train"):
        return rec.split_source  # NERLab's own export says how the split was set
    if rec.split or split:
        return "import"
    return "default"


def _update(db: Database, row: dict, old: list[Span], new: list[Span], labels: dict,
            annotator: str | None, stamp: str, result: AddResult) -> None:
    """Apply a re-imported annotation to a sentence already in the project (``--update``): it
    becomes the annotation of the file's annotator (else ``import``), and the gold follows."""
    before, after = anchored(row["text"], old), anchored(row["text"], new)
    if before == after and row["status"] == "labelled":
        return
    try:
        ordered = validate_spans(row["text"], new)
    except SpanError as exc:
        raise NerlabError(f"Sentence {row['number']}: {exc}") from None
    _cut_tokens(db, row, ordered)
    annotations.write(db, row["id"], annotator or annotations.IMPORT, ordered, "labelled",
                      {n: r["id"] for n, r in labels.items()}, stamp)
    annotations.refresh_gold(db, row["id"], stamp)
    result.updated += 1
    result.updated_numbers.append(row["number"])
    result.spans_added += len(after - before)
    result.spans_removed += len(before - after)


def get_sentence(db: Database, sentence_id: int) -> dict:
    rows = list(db["sentences"].rows_where("id = ?", [sentence_id]))
    if not rows:
        raise NotFound(f"No sentence with id {sentence_id}.")
    return rows[0]


def sentence_spans(db: Database, sentence_id: int, origin: str = "gold") -> list[Span]:
    """The sentence's spans of one origin, sorted."""
    rows = db.query(
        'SELECT s.start, s."end", l.name FROM spans s JOIN labels l ON l.id = s.label_id'
        " WHERE s.sentence_id = ? AND s.origin = ? ORDER BY s.start",
        [sentence_id, origin],
    )
    return [Span(r["start"], r["end"], r["name"]) for r in rows]


def save_annotation(
    db: Database,
    sentence_id: int,
    spans: Sequence[Span],
    annotator: str,
    expected_version: int | None = None,
    status: str = "labelled",
) -> int:
    """Save ``annotator``'s annotation of a sentence (its gold follows); return the version of
    their annotation. See :func:`core.data.annotations.save`: with ``expected_version`` a save
    from a tab of theirs that missed a later save of theirs is refused with :class:`Conflict`."""
    return annotations.save(db, sentence_id, spans, annotator, expected_version, status)


def examples(
    db: Database,
    project_id: int,
    split: str | None = None,
    labelled_only: bool = True,
) -> list[Example]:
    """Sentences with their gold spans, in project order, for training and evaluation."""
    where = ["s.project_id = ?"]
    params: list = [project_id]
    if split:
        where.append("s.split = ?")
        params.append(split)
    if labelled_only:
        where.append("s.status = 'labelled'")
    rows = list(
        db.query(
            f"SELECT s.id, s.text, s.tokens, s.split FROM sentences s WHERE {' AND '.join(where)}"
            " ORDER BY s.position",
            params,
        )
    )
    spans_by_sentence: dict[int, list[Span]] = {r["id"]: [] for r in rows}
    for r in db.query(
        'SELECT sp.sentence_id, sp.start, sp."end", l.name FROM spans sp'
        " JOIN labels l ON l.id = sp.label_id JOIN sentences s ON s.id = sp.sentence_id"
        f" WHERE sp.origin = 'gold' AND {' AND '.join(where)} ORDER BY sp.start",
        params,
    ):
        spans_by_sentence[r["sentence_id"]].append(Span(r["start"], r["end"], r["name"]))
    return [
        Example(
            id=r["id"],
            text=r["text"],
            spans=tuple(spans_by_sentence[r["id"]]),
            split=r["split"],
            tokens=tuple(tuple(t) for t in json.loads(r["tokens"])) if r["tokens"] else None,
        )
        for r in rows
    ]


def stats(db: Database, project_id: int) -> dict:
    """Counts for the home page, the Label page and ``nerlab stats``."""
    per_split = {
        s: {"sentences": 0, "labelled": 0} for s in config.SPLITS
    }
    for r in db.query(
        "SELECT split, COUNT(*) AS n, SUM(status = 'labelled') AS done FROM sentences"
        " WHERE project_id = ? GROUP BY split",
        [project_id],
    ):
        per_split[r["split"]] = {"sentences": r["n"], "labelled": r["done"] or 0}
    per_label = {
        r["name"]: r["n"]
        for r in db.query(
            "SELECT l.name, COUNT(sp.id) AS n FROM labels l LEFT JOIN spans sp"
            " ON sp.label_id = l.id AND sp.origin = 'gold' WHERE l.project_id = ?"
            " GROUP BY l.id ORDER BY l.position, l.id",
            [project_id],
        )
    }
    total = sum(v["sentences"] for v in per_split.values())
    labelled = sum(v["labelled"] for v in per_split.values())
    runs = db["runs"].count_where("project_id = ?", [project_id])
    return {
        "sentences": total,
        "labelled": labelled,
        "unlabelled": total - labelled,
        "splits": per_split,
        "spans_per_label": per_label,
        "spans": sum(per_label.values()),
        "runs": runs,
        "suggestions": suggestions.summary(db, project_id),
    }
