"""Review: the sentences where annotators disagree, their versions side by side, and the
reviewer's adjudication, which becomes the sentence's gold (recorded with the reviewer).

A sentence is *disputed* when two or more annotators labelled it differently. A reviewer accepts
one annotator's version or a merged one (:func:`adjudicate`); the gold then stays the
reviewer's (``sentences.gold_source = 'review'``, ``reviewed_by``, ``reviewed_at``, and a row
in ``reviews``) until a reviewer changes it or withdraws the review (:func:`withdraw`). A
reviewed sentence whose annotations change afterwards and still disagree is listed again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sqlite_utils import Database

from core.data import annotations, projects
from core.data.db import now
from core.data.spans import Span
from core.errors import NerlabError

#: ``choice`` of a review that took no single annotator's version.
MERGED = "merged"


def _differ(spans_by_annotator: Mapping[str, Sequence[Span]]) -> bool:
    return len({tuple(v) for v in spans_by_annotator.values()}) > 1


def disputed(db: Database, project_id: int) -> list[dict]:
    """The sentences to review, in project order: ``id``, ``number`` (1-based), ``text``,
    ``annotators`` (names), ``reviewed_by`` (set when annotations changed after a review)."""
    rows = annotations.labelled_rows(db, project_id)
    by_sentence: dict[int, list[dict]] = {}
    for r in rows:
        by_sentence.setdefault(r["sentence_id"], []).append(r)
    candidates = [sid for sid, anns in by_sentence.items()
                  if len(anns) > 1 and _differ({a["annotator"]: a["spans"] for a in anns})]
    if not candidates:
        return []
    info = {r["id"]: dict(r) for r in db.query(
        "SELECT s.id, s.text, s.position, s.reviewed_by, s.reviewed_at,"
        " (SELECT r.seen_seq FROM reviews r WHERE r.sentence_id = s.id ORDER BY r.id DESC"
        "   LIMIT 1) AS seen_seq,"
        " (SELECT COUNT(*) FROM sentences t WHERE t.project_id = s.project_id"
        "   AND t.position < s.position) + 1 AS number"
        f" FROM sentences s WHERE s.id IN ({','.join('?' * len(candidates))})", candidates)}
    out = []
    for sid in candidates:
        row = info[sid]
        anns = by_sentence[sid]
        if row["reviewed_at"] and all(a["seq"] <= (row["seen_seq"] or 0) for a in anns):
            continue  # reviewed, and nobody changed their annotation since
        out.append({"id": sid, "number": row["number"], "text": row["text"],
                    "annotators": [a["annotator"] for a in anns],
                    "reviewed_by": row["reviewed_by"], "position": row["position"]})
    return sorted(out, key=lambda r: r["position"])


def summary(db: Database, project_id: int) -> dict[str, int]:
    """``multi`` (sentences labelled by two or more), ``disputed`` (to review), ``reviewed``."""
    sets = annotations.labelled_sets(db, project_id)
    reviewed = db.execute("SELECT COUNT(*) FROM sentences WHERE project_id = ? AND"
                          " gold_source = 'review'", [project_id]).fetchone()[0]
    return {"multi": sum(1 for v in sets.values() if len(v) > 1),
            "disputed": len(disputed(db, project_id)), "reviewed": reviewed}


def versions(db: Database, sentence_id: int) -> list[dict]:
    """Each annotator's labelled version of a sentence: ``annotator``, ``spans``,
    ``updated_at``, oldest save first."""
    return [{"annotator": a["annotator"], "spans": a["spans"], "updated_at": a["updated_at"]}
            for a in annotations.of_sentence(db, sentence_id) if a["status"] == "labelled"]


def candidates(found: Sequence[Mapping[str, Any]]) -> list[tuple[Span, list[str]]]:
    """Every span any version has, with who marked it, in text order: what a merged version is
    chosen from."""
    who: dict[Span, list[str]] = {}
    for v in found:
        for span in v["spans"]:
            who.setdefault(span, []).append(v["annotator"])
    return sorted(who.items(), key=lambda item: (item[0].start, item[0].end, item[0].label))


def majority(found: Sequence[Mapping[str, Any]]) -> list[Span]:
    """The spans more than half of the versions marked (a starting point for a merge); of two
    that overlap, the one more annotators marked (then the earlier) is kept."""
    votes = Counter(span for v in found for span in v["spans"])
    chosen: list[Span] = []
    for span, n in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0].start, kv[0].end)):
        if n * 2 > len(found) and not any(span.start < c.end and c.start < span.end
                                          for c in chosen):
            chosen.append(span)
    return sorted(chosen)


def adjudicate(db: Database, sentence_id: int, spans: Sequence[Span], reviewer: str,
               choice: str = MERGED) -> None:
    """Make ``spans`` the sentence's gold, adjudicated by ``reviewer``; ``choice`` records
    what was taken (``annotator:NAME`` or :data:`MERGED`)."""
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise NerlabError("A review needs the reviewer's name.")
    sentence = projects.get_sentence(db, sentence_id)
    labels = {n: r["id"] for n, r in projects.label_by_name(db, sentence["project_id"]).items()}
    ordered = annotations.check_spans(sentence, spans, labels)
    stamp = now()
    with db.atomic():
        db.execute(
            "UPDATE sentences SET status = 'labelled', annotator = ?, gold_source = 'review',"
            " reviewed_by = ?, reviewed_at = ?, version = version + 1, updated_at = ?"
            " WHERE id = ?", [reviewer, reviewer, stamp, stamp, sentence_id])
        db.execute("DELETE FROM spans WHERE sentence_id = ? AND origin = 'gold'", [sentence_id])
        db.conn.executemany(
            'INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
            " created_at, updated_at) VALUES (?,?,?,?,'gold',?,?,?)",
            [(sentence_id, s.start, s.end, labels[s.label], reviewer, stamp, stamp)
             for s in ordered])
        seen = db.execute("SELECT COALESCE(MAX(seq), 0) FROM annotations WHERE sentence_id = ?",
                          [sentence_id]).fetchone()[0]
        db.execute("INSERT INTO reviews (sentence_id, reviewer, choice, spans, seen_seq,"
                   " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   [sentence_id, reviewer, choice, json.dumps([s.to_dict() for s in ordered]),
                    seen, stamp])


def withdraw(db: Database, sentence_id: int, reviewer: str) -> None:
    """Take a review back: the gold follows the annotations again (recorded as a review row
    with choice ``withdrawn``)."""
    stamp = now()
    with db.atomic():
        db.execute("UPDATE sentences SET gold_source = NULL, reviewed_by = NULL,"
                   " reviewed_at = NULL WHERE id = ?", [sentence_id])
        annotations.refresh_gold(db, sentence_id, stamp)
        db.execute("INSERT INTO reviews (sentence_id, reviewer, choice, created_at)"
                   " VALUES (?, ?, 'withdrawn', ?)", [sentence_id, reviewer or "", stamp])


def history(db: Database, sentence_id: int) -> list[dict]:
    """The sentence's reviews, newest first: ``reviewer``, ``choice``, ``spans``, ``created_at``."""
    return [dict(r, spans=json.loads(r["spans"])) for r in db.query(
        "SELECT reviewer, choice, spans, created_at FROM reviews WHERE sentence_id = ?"
        " ORDER BY id DESC", [sentence_id])]
