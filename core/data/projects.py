"""Projects, entity types, sentences and their spans: the labelled data NERLab works on.

Every function takes an open :class:`sqlite_utils.Database` (see :func:`core.data.db.get_db`) and
either returns plain dicts/dataclasses or raises :class:`NerlabError` with a message a user can act
on. Multi-row writes happen in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import unicodedata
from collections.abc import Iterable, Sequence

from sqlite_utils import Database

from core import config
from core.data import suggestions
from core.data.db import now
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

_HOTKEYS = "123456789" + "qwertyuiopasdfghjklzxcvbnm"


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


def list_labels(db: Database, project_id: int) -> list[dict]:
    """The project's entity types in display order."""
    return list(db["labels"].rows_where("project_id = ?", [project_id], order_by="position, id"))


def label_by_name(db: Database, project_id: int) -> dict[str, dict]:
    return {row["name"]: row for row in list_labels(db, project_id)}


_LABEL_NAME_RE = re.compile(r"^[^\s\[\]{}:,\"']([^\[\]{}:,\"']*[^\s\[\]{}:,\"'])?$")


#: Unicode categories no entity type name may contain: control, format (zero-width and
#: direction marks), surrogates, private use, unassigned, line and paragraph separators.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _check_label_name(name: str) -> str:
    if not isinstance(name, str):
        raise NerlabError(f"An entity type name must be text, got {type(name).__name__}.")
    name = name.strip()
    if not name:
        raise NerlabError("An entity type needs a name.")
    bad = next((ch for ch in name if unicodedata.category(ch) in _INVISIBLE), None)
    if bad is not None:
        raise NerlabError(
            f"Entity type name {ascii(name)} is not allowed: it contains the control or invisible "
            f"character U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')}); names must be "
            "readable text."
        )
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in name):
        raise NerlabError(f"Entity type name {ascii(name)} is not allowed: it has no visible character.")
    if not _LABEL_NAME_RE.match(name) or len(name) > 40:
        raise NerlabError(
            f"Entity type name {name!r} is not allowed: use up to 40 characters without "
            "brackets, braces, colons, commas or quotes (they would break the model's answers)."
        )
    return name


def add_label(
    db: Database,
    project_id: int,
    name: str,
    color: str | None = None,
    hotkey: str | None = None,
    description: str = "",
) -> dict:
    """Add an entity type; colour and hotkey default to the next free ones."""
    name = _check_label_name(name)
    existing = list_labels(db, project_id)
    if any(row["name"] == name for row in existing):
        raise NerlabError(f"Entity type {name!r} already exists in this project.")
    used_keys = {row["hotkey"] for row in existing}
    if hotkey:
        hotkey = _check_hotkey(hotkey, used_keys, name)
    else:
        hotkey = next((k for k in _HOTKEYS if k not in used_keys), "")
    if not color:
        color = config.LABEL_COLOURS[len(existing) % len(config.LABEL_COLOURS)]
    _check_colour(color)
    db["labels"].insert(
        {
            "project_id": project_id,
            "name": name,
            "color": color,
            "hotkey": hotkey,
            "description": description.strip(),
            "position": len(existing),
        }
    )
    return label_by_name(db, project_id)[name]


def _check_hotkey(hotkey: str, used: set[str], name: str) -> str:
    hotkey = hotkey.strip().lower()
    if len(hotkey) != 1 or hotkey not in _HOTKEYS:
        raise NerlabError(f"Hotkey {hotkey!r} for {name!r} must be one digit 1-9 or one letter.")
    if hotkey in used:
        raise NerlabError(f"Hotkey {hotkey!r} is already used by another entity type.")
    return hotkey


def _check_colour(color: str) -> None:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        raise NerlabError(f"Colour {color!r} must look like #a1b2c3.")


def update_label(db: Database, label_id: int, **changes) -> dict:
    """Rename an entity type or change its colour, hotkey or guideline."""
    row = db["labels"].get(label_id)
    others = [r for r in list_labels(db, row["project_id"]) if r["id"] != label_id]
    update: dict = {}
    if "name" in changes and changes["name"] != row["name"]:
        name = _check_label_name(changes["name"])
        if any(r["name"] == name for r in others):
            raise NerlabError(f"Entity type {name!r} already exists in this project.")
        update["name"] = name
    if "hotkey" in changes and changes["hotkey"] != row["hotkey"]:
        update["hotkey"] = _check_hotkey(changes["hotkey"], {r["hotkey"] for r in others}, row["name"])
    if "color" in changes and changes["color"] != row["color"]:
        _check_colour(changes["color"])
        update["color"] = changes["color"]
    if "description" in changes:
        update["description"] = (changes["description"] or "").strip()
    if update:
        db["labels"].update(label_id, update)
    return db["labels"].get(label_id)


def count_label_spans(db: Database, label_id: int) -> int:
    """Gold spans of an entity type (a model's suggestions are not counted)."""
    return db["spans"].count_where("label_id = ? AND origin = 'gold'", [label_id])


def delete_label(db: Database, label_id: int) -> int:
    """Delete an entity type and its spans; return how many spans went with it."""
    n = count_label_spans(db, label_id)
    with db.atomic():
        db.execute("DELETE FROM spans WHERE label_id = ?", [label_id])
        db.execute("DELETE FROM labels WHERE id = ?", [label_id])
    return n


def add_sentences(
    db: Database,
    project_id: int,
    records: Iterable[SentenceRecord],
    split: str | None = None,
    allow_new_labels: bool | None = None,
    annotator: str | None = "import",
    update: bool = False,
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
    """
    project = db["projects"].get(project_id)
    if allow_new_labels is None:
        allow_new_labels = not project["fixed_labels"]
    if split is not None and split not in config.SPLITS:
        raise NerlabError(f"Split {split!r} is not one of {', '.join(config.SPLITS)}.")
    records = list(records)
    labels = label_by_name(db, project_id)
    result = AddResult()
    for rec in records:
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
                " source, hash, status, annotator, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [project_id, position, rec.text, json.dumps(rec.tokens) if rec.tokens else None,
                 rec.split or split or "train", _split_source(rec, split), rec.source, digest,
                 "labelled" if labelled else "unlabelled", who, created, rec.updated_at or created],
            )
            position += 1
            db.conn.executemany(
                'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                [(cursor.lastrowid, s.start, s.end, labels[s.label]["id"], "gold",
                  rec.annotator or annotator, created, rec.updated_at or created) for s in rec.spans],
            )
    return result


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
    """Apply a re-imported annotation to a sentence already in the project (``--update``)."""
    before, after = anchored(row["text"], old), anchored(row["text"], new)
    if before == after and row["status"] == "labelled":
        return
    try:
        ordered = validate_spans(row["text"], new)
    except SpanError as exc:
        raise NerlabError(f"Sentence {row['number']}: {exc}") from None
    tokens = [tuple(t) for t in json.loads(row["tokens"])] if row["tokens"] else None
    cut = split_at_spans(tokens or tokenize(row["text"]), ordered)
    if cut != (tokens or tokenize(row["text"])):
        db.execute("UPDATE sentences SET tokens = ? WHERE id = ?", [json.dumps(cut), row["id"]])
    _write_annotation(db, row["id"], ordered, labels, annotator or "import", "labelled", stamp)
    result.updated += 1
    result.updated_numbers.append(row["number"])
    result.spans_added += len(after - before)
    result.spans_removed += len(before - after)


def _write_annotation(db: Database, sentence_id: int, ordered: Sequence[Span], labels: dict,
                      annotator: str, status: str, stamp: str,
                      expected_version: int | None = None) -> int:
    """Replace a sentence's gold spans and status (inside the caller's transaction); returns how
    many sentence rows changed (0: somebody saved it since ``expected_version``)."""
    cur = db.execute(
        "UPDATE sentences SET status = ?, annotator = ?, version = version + 1, updated_at = ?"
        " WHERE id = ?" + (" AND version = ?" if expected_version is not None else ""),
        [status, annotator, stamp, sentence_id]
        + ([expected_version] if expected_version is not None else []),
    )
    if cur.rowcount == 0:
        return 0
    db.execute("DELETE FROM spans WHERE sentence_id = ? AND origin = 'gold'", [sentence_id])
    db.conn.executemany(
        'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
        " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
        [(sentence_id, s.start, s.end, labels[s.label]["id"], "gold", annotator, stamp, stamp)
         for s in ordered],
    )
    return cur.rowcount


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
    """Replace a sentence's gold spans and status in one transaction; return the new version.

    With ``expected_version`` the save is refused with :class:`Conflict` when somebody saved the
    sentence since it was loaded, so two tabs never silently overwrite each other.
    """
    sentence = get_sentence(db, sentence_id)
    try:
        ordered = validate_spans(sentence["text"], list(spans))
    except SpanError as exc:
        raise NerlabError(f"Sentence {sentence_id}: {exc}") from None
    labels = label_by_name(db, sentence["project_id"])
    for span in ordered:
        if span.label not in labels:
            raise NerlabError(f"Sentence {sentence_id}: unknown entity type {span.label!r}.")
    with db.atomic():
        if not _write_annotation(db, sentence_id, ordered, labels, annotator, status, now(),
                                 expected_version):
            current = get_sentence(db, sentence_id)
            raise Conflict(
                f"Sentence {sentence['position'] + 1} was changed by {current['annotator'] or 'someone'} "
                f"at {current['updated_at']} after you opened it; reload it to see their version."
            )
        # Read inside the transaction: after it, another process may have saved a newer one.
        return db.execute("SELECT version FROM sentences WHERE id = ?", [sentence_id]).fetchone()[0]


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
