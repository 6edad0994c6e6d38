"""Projects, entity types, sentences and their spans: the labelled data NERLab works on.

Every function takes an open :class:`sqlite_utils.Database` (see :func:`core.data.db.get_db`) and
either returns plain dicts/dataclasses or raises :class:`NerlabError` with a message a user can act
on. Multi-row writes happen in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlite_utils import Database

from core import config
from core.data.db import now
from core.data.spans import Example, Span, SpanError, validate_spans
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


def _check_label_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise NerlabError("An entity type needs a name.")
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
    return db["spans"].count_where("label_id = ?", [label_id])


def delete_label(db: Database, label_id: int) -> int:
    """Delete an entity type and its spans; return how many spans went with it."""
    n = count_label_spans(db, label_id)
    with db.atomic():
        db.execute("DELETE FROM spans WHERE label_id = ?", [label_id])
        db.execute("DELETE FROM labels WHERE id = ?", [label_id])
    return n


@dataclass
class SentenceRecord:
    """A sentence to add: its text, optional token offsets and optional gold spans."""

    text: str
    spans: list[Span] = field(default_factory=list)
    tokens: list[tuple[int, int]] | None = None
    split: str | None = None
    labelled: bool | None = None
    source: str = ""
    line: int | None = None  # where it came from in its file, for error messages


@dataclass
class AddResult:
    added: int = 0
    duplicates: int = 0
    new_labels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.added} sentence(s) added"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate(s) skipped")
        if self.new_labels:
            parts.append("new entity type(s): " + ", ".join(self.new_labels))
        return "; ".join(parts) + "."


def add_sentences(
    db: Database,
    project_id: int,
    records: Iterable[SentenceRecord],
    split: str | None = None,
    allow_new_labels: bool | None = None,
    annotator: str | None = "import",
) -> AddResult:
    """Add sentences (with their spans) in one transaction; nothing is written on error.

    Sentences whose text is already in the project are skipped. Entity types not yet in the
    project are added unless the project has a fixed label set (or ``allow_new_labels`` is
    False), in which case the whole import is rejected with the first offending line.
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
        where = f"line {rec.line}: " if rec.line else ""
        if not rec.text.strip():
            raise NerlabError(f"{where}empty sentence.")
        try:
            rec.spans = validate_spans(rec.text, rec.spans)
        except SpanError as exc:
            raise NerlabError(f"{where}{exc}") from None
        if rec.split is not None and rec.split not in config.SPLITS:
            raise NerlabError(f"{where}split {rec.split!r} is not one of {', '.join(config.SPLITS)}.")
        for span in rec.spans:
            if span.label not in labels and span.label not in result.new_labels:
                if not allow_new_labels:
                    raise NerlabError(
                        f"{where}entity type {span.label!r} is not in this project's fixed label "
                        f"set ({', '.join(labels) or 'none'})."
                    )
                _check_label_name(span.label)
                result.new_labels.append(span.label)
    stamp = now()
    with db.atomic():
        for name in result.new_labels:
            add_label(db, project_id, name)
        labels = label_by_name(db, project_id)
        seen = {
            r["hash"] for r in db.query("SELECT hash FROM sentences WHERE project_id = ?", [project_id])
        }
        position = db.execute(
            "SELECT COALESCE(MAX(position), -1) + 1 FROM sentences WHERE project_id = ?", [project_id]
        ).fetchone()[0]
        for rec in records:
            digest = text_hash(rec.text)
            if digest in seen:
                result.duplicates += 1
                continue
            seen.add(digest)
            labelled = rec.labelled if rec.labelled is not None else bool(rec.spans)
            cursor = db.execute(
                "INSERT INTO sentences (project_id, position, text, tokens, split, source, hash,"
                " status, annotator, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    project_id,
                    position,
                    rec.text,
                    json.dumps(rec.tokens) if rec.tokens else None,
                    rec.split or split or "train",
                    rec.source,
                    digest,
                    "labelled" if labelled else "unlabelled",
                    annotator if labelled else None,
                    stamp,
                    stamp,
                ],
            )
            position += 1
            sentence_id = cursor.lastrowid
            db.conn.executemany(
                'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (sentence_id, s.start, s.end, labels[s.label]["id"], "gold", annotator, stamp, stamp)
                    for s in rec.spans
                ],
            )
            result.added += 1
    return result


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
    stamp = now()
    with db.atomic():
        cur = db.execute(
            "UPDATE sentences SET status = ?, annotator = ?, version = version + 1, updated_at = ?"
            " WHERE id = ?" + (" AND version = ?" if expected_version is not None else ""),
            [status, annotator, stamp, sentence_id]
            + ([expected_version] if expected_version is not None else []),
        )
        if cur.rowcount == 0:
            current = get_sentence(db, sentence_id)
            raise Conflict(
                f"Sentence {sentence['position'] + 1} was changed by {current['annotator'] or 'someone'} "
                f"at {current['updated_at']} after you opened it; reload it to see their version."
            )
        db.execute("DELETE FROM spans WHERE sentence_id = ? AND origin = 'gold'", [sentence_id])
        db.conn.executemany(
            'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            [
                (sentence_id, s.start, s.end, labels[s.label]["id"], "gold", annotator, stamp, stamp)
                for s in ordered
            ],
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


def locked_test_ids(db: Database, project_id: int) -> set[int]:
    """Sentences that have been scored as test data: they never leave the test split."""
    return {
        r["sentence_id"]
        for r in db.query(
            "SELECT DISTINCT p.sentence_id FROM predictions p JOIN sentences s ON s.id = p.sentence_id"
            " WHERE s.project_id = ? AND p.split = 'test'",
            [project_id],
        )
    }


def assign_splits(
    db: Database, project_id: int, dev: float = 0.1, test: float = 0.2, seed: int = 0
) -> dict[str, int]:
    """Assign every sentence to train/dev/test reproducibly (same seed → same split).

    The assignment depends only on each sentence's content hash and the seed, so adding
    sentences later does not reshuffle the old ones. Sentences already scored as test data stay
    in test. Returns the count per split.
    """
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise NerlabError(f"Split ratios dev={dev} and test={test} must be in [0, 1) and sum below 1.")
    locked = locked_test_ids(db, project_id)
    rows = list(db.query("SELECT id, hash FROM sentences WHERE project_id = ?", [project_id]))
    updates = []
    for r in rows:
        if r["id"] in locked:
            updates.append(("test", r["id"]))
            continue
        u = random.Random(f"{seed}:{r['hash']}").random()
        updates.append(("test" if u < test else "dev" if u < test + dev else "train", r["id"]))
    with db.atomic():
        db.conn.executemany("UPDATE sentences SET split = ? WHERE id = ?", updates)
    return split_counts(db, project_id)


def carve_dev(db: Database, project_id: int, share: float = 0.1, seed: int = 0) -> int:
    """Move a reproducible ``share`` of the labelled training sentences to dev (at least one);
    test is never touched. Returns how many moved. What a project imported as train + test
    files needs before it can be trained."""
    if not 0 < share < 1:
        raise NerlabError(f"The dev share must be between 0 and 1, got {share}.")
    rows = list(db.query("SELECT id, hash FROM sentences WHERE project_id = ? AND split = 'train'"
                         " AND status = 'labelled'", [project_id]))
    if len(rows) < 2:
        raise NerlabError("There are too few labelled training sentences to set some aside as dev.")
    rows.sort(key=lambda r: random.Random(f"{seed}:{r['hash']}").random())
    chosen = [r["id"] for r in rows[: max(1, round(share * len(rows)))]]
    with db.atomic():
        db.conn.executemany("UPDATE sentences SET split = 'dev' WHERE id = ?", [(i,) for i in chosen])
    return len(chosen)


def set_split(db: Database, sentence_ids: Sequence[int], split: str) -> int:
    """Move sentences to a split; refuses to move scored test sentences out of test."""
    if split not in config.SPLITS:
        raise NerlabError(f"Split {split!r} is not one of {', '.join(config.SPLITS)}.")
    if not sentence_ids:
        return 0
    project_id = get_sentence(db, sentence_ids[0])["project_id"]
    if split != "test":
        stuck = locked_test_ids(db, project_id) & set(sentence_ids)
        if stuck:
            raise NerlabError(
                f"{len(stuck)} of these sentences have been scored as test data and stay in test "
                "(moving them would leak test data into training)."
            )
    with db.atomic():
        db.conn.executemany(
            "UPDATE sentences SET split = ? WHERE id = ?", [(split, i) for i in sentence_ids]
        )
    return len(sentence_ids)


def split_counts(db: Database, project_id: int) -> dict[str, int]:
    counts = dict.fromkeys(config.SPLITS, 0)
    for r in db.query(
        "SELECT split, COUNT(*) AS n FROM sentences WHERE project_id = ? GROUP BY split", [project_id]
    ):
        counts[r["split"]] = r["n"]
    return counts


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
    }
