"""Teams in the store: the migration keeps every label, each annotator keeps their own annotation,
the gold follows the project's sharing rule, queues per annotator, import per annotator."""

from __future__ import annotations

import json

import pytest
from sqlite_utils import Database

from core.data import annotations, io, labeling, projects
from core.data.db import get_db, migrations
from core.data.labeling import QueueFilter
from core.data.records import SentenceRecord
from core.data.spans import Span
from core.errors import Conflict, NerlabError

TEAM_MIGRATION = "m_team_001_annotations_and_users"


def _old_database(path) -> Database:
    """A database as NERLab left it before teams: labels only as the sentence's gold."""
    db = Database(path)
    db.execute("PRAGMA foreign_keys = ON")
    migrations.apply(db, stop_before=TEAM_MIGRATION)
    assert not db["annotations"].exists() and "gold_source" not in db["sentences"].columns_dict
    t = "2025-01-02T03:04:05+00:00"
    db.execute("INSERT INTO projects (id, name, created_at) VALUES (1, 'Old', ?)", [t])
    db.execute("INSERT INTO labels (id, project_id, name, color) VALUES (1, 1, 'Drug', '#ffffff')")
    db.execute("INSERT INTO labels (id, project_id, name, color) VALUES (2, 1, 'Disease', '#000000')")
    rows = [  # id, text, status, annotator, version
        (1, "Aspirin relieves headache .", "labelled", "maria", 4),
        (2, "Lithium caused tremor .", "labelled", None, 0),      # imported: the spans say who
        (3, "Fever was seen .", "labelled", None, 0),             # labelled, no entities, nobody
        (4, "Ibuprofen helps .", "unlabelled", "joe", 2),         # a draft with a span
        (5, "Nothing here yet .", "unlabelled", None, 0),         # not labelled at all
    ]
    for sid, text, status, who, version in rows:
        db.execute(
            "INSERT INTO sentences (id, project_id, position, text, hash, status, annotator,"
            " version, created_at, updated_at) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
            [sid, sid, text, f"h{sid}", status, who, version, t, t])
    spans = [  # sentence, start, end, label, origin, annotator
        (1, 0, 7, 1, "gold", "maria"), (1, 17, 25, 2, "gold", "maria"),
        (2, 0, 7, 1, "gold", "bc5cdr"), (2, 15, 21, 2, "gold", "bc5cdr"),
        (4, 0, 9, 1, "gold", "joe"),
        (5, 0, 7, 1, "suggested", "crf"),  # a model's suggestion is not a label
    ]
    for sid, start, end, label, origin, who in spans:
        db.execute('INSERT INTO spans (sentence_id, start, "end", label_id, origin, annotator,'
                   " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [sid, start, end, label, origin, who, t, t])
    db.conn.commit()
    return db


def test_migration_of_a_database_with_labels_keeps_them_all(tmp_path):
    path = tmp_path / "nerlab.db"
    old = _old_database(path)
    before_gold = {sid: projects.sentence_spans(old, sid) for sid in range(1, 6)}
    before_rows = {r["id"]: (r["status"], r["annotator"], r["version"])
                   for r in old.query("SELECT * FROM sentences")}
    old.conn.close()

    db = get_db(path)  # opening it migrates it
    assert not migrations.pending(db)
    # The gold that training and evaluation read is untouched ...
    assert {sid: projects.sentence_spans(db, sid) for sid in range(1, 6)} == before_gold
    assert {r["id"]: (r["status"], r["annotator"], r["version"])
            for r in db.query("SELECT * FROM sentences")} == before_rows
    # ... and every label is now the annotation of its recorded annotator.
    found = {(a["sentence_id"], a["annotator"]): (a["status"], a["spans"])
             for sid in range(1, 6) for a in annotations.of_sentence(db, sid)}
    assert found == {
        (1, "maria"): ("labelled", [Span(0, 7, "Drug"), Span(17, 25, "Disease")]),
        (2, "bc5cdr"): ("labelled", [Span(0, 7, "Drug"), Span(15, 21, "Disease")]),
        (3, "import"): ("labelled", []),
        (4, "joe"): ("unlabelled", [Span(0, 9, "Drug")]),
    }
    assert sum(len(s) for s in before_gold.values()) == db.execute(
        "SELECT COUNT(*) FROM annotation_spans").fetchone()[0]
    assert [e.id for e in projects.examples(db, 1)] == [1, 2, 3]
    # A second annotator now adds their own annotation; Maria's stays.
    projects.save_annotation(db, 1, [Span(0, 7, "Drug")], "li", expected_version=0)
    assert {a["annotator"] for a in annotations.of_sentence(db, 1)} == {"maria", "li"}
    assert annotations.get(db, 1, "maria")["spans"] == [Span(0, 7, "Drug"), Span(17, 25, "Disease")]


@pytest.fixture
def team(db):
    p = projects.create_project(db, "Team", labels=["Drug", "Disease"])
    projects.add_sentences(db, p["id"], [
        SentenceRecord("Aspirin relieves headache .", labelled=False),
        SentenceRecord("Lithium caused tremor .", labelled=False),
        SentenceRecord("Fever was seen .", labelled=False),
    ])
    ids = [r[0] for r in db.execute("SELECT id FROM sentences ORDER BY position")]
    return p["id"], ids


def test_gold_follows_the_sharing_rule(db, team):
    pid, (s1, s2, _s3) = team
    annotations.set_share(db, pid, annotations.EVERYONE)
    projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "alice", expected_version=0)
    row = projects.get_sentence(db, s1)
    assert (row["status"], row["gold_source"]) == ("labelled", "single")  # only one so far
    projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "bob", expected_version=0)
    assert projects.get_sentence(db, s1)["gold_source"] == "agreed"
    projects.save_annotation(db, s1, [Span(17, 25, "Disease")], "carol", expected_version=0)
    row = projects.get_sentence(db, s1)
    assert (row["status"], row["gold_source"]) == ("unlabelled", "disputed")
    assert [e.id for e in projects.examples(db, pid)] == []  # no gold: not trained on
    # A draft (not accepted) does not count.
    projects.save_annotation(db, s2, [Span(0, 7, "Drug")], "alice", expected_version=0,
                             status="unlabelled")
    assert projects.get_sentence(db, s2)["status"] == "unlabelled"
    # One annotator per sentence: the latest save is the gold.
    annotations.set_share(db, pid, annotations.ONE)
    row = projects.get_sentence(db, s1)
    assert (row["status"], row["annotator"], row["gold_source"]) == ("labelled", "carol", "latest")
    assert projects.sentence_spans(db, s1) == [Span(17, 25, "Disease")]
    with pytest.raises(NerlabError, match="whole number"):
        annotations.set_share(db, pid, -1)


def test_each_annotator_sees_their_own_work_and_their_own_queue(db, team):
    pid, (s1, s2, s3) = team
    annotations.set_share(db, pid, 2)
    projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "alice", expected_version=0)
    sentence = projects.get_sentence(db, s1)
    assert annotations.working(db, sentence, "alice")["spans"] == [Span(0, 7, "Drug")]
    assert annotations.working(db, sentence, "bob") == {  # blind: bob does not see alice's
        "spans": [], "status": "unlabelled", "version": 0, "annotator": "", "updated_at": "",
        "own": False}

    def queue(who: str, status: str = "unlabelled") -> list[int]:
        flt = QueueFilter(status=status, annotator=who, share=2)
        return [r["id"] for r in labeling.sentence_rows(db, pid, flt)]

    assert queue("alice") == [s2, s3] and queue("alice", "labelled") == [s1]
    assert queue("bob") == [s1, s2, s3]
    projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "bob", expected_version=0)
    assert queue("carol") == [s2, s3]  # s1 has its two annotators
    # One annotator per sentence: the queue is the sentences nobody finished, as before teams,
    # and a second annotator corrects the gold they see.
    annotations.set_share(db, pid, annotations.ONE)
    assert [r["id"] for r in labeling.sentence_rows(db, pid, QueueFilter(annotator="carol"))] == [s2, s3]
    assert annotations.working(db, sentence, "carol")["spans"] == [Span(0, 7, "Drug")]


def test_one_annotators_two_tabs_conflict_two_annotators_do_not(db, team):
    pid, (s1, *_rest) = team
    v = projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "alice", expected_version=0)
    assert v == 1
    with pytest.raises(Conflict, match="changed by alice"):
        projects.save_annotation(db, s1, [], "alice", expected_version=0)
    assert projects.save_annotation(db, s1, [], "bob", expected_version=0) == 1


def test_import_per_annotator_adds_their_annotations(db, team, tmp_path):
    pid, (s1, s2, _s3) = team
    projects.save_annotation(db, s1, [Span(0, 7, "Drug")], "alice", expected_version=0)
    lines = [
        {"text": "Aspirin  relieves headache .", "spans": [
            {"start": 0, "end": 7, "label": "Drug"}, {"start": 18, "end": 26, "label": "Disease"}]},
        {"text": "Lithium caused tremor .", "spans": []},
        {"text": "A new sentence about aspirin .", "spans": [{"start": 21, "end": 28, "label": "Drug"}]},
    ]
    path = tmp_path / "bob.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    result = io.import_file(db, pid, path, as_annotator="bob")
    assert (result.added, result.duplicates, result.annotations) == (1, 2, 3)
    assert "3 annotation(s) by bob" in result.summary() and "2 already in the project" in result.summary()
    # Bob's copy of s1 (other whitespace) lands on the stored text; Alice's stays.
    assert annotations.get(db, s1, "bob")["spans"] == [Span(0, 7, "Drug"), Span(17, 25, "Disease")]
    assert annotations.get(db, s1, "alice")["spans"] == [Span(0, 7, "Drug")]
    assert annotations.get(db, s2, "bob")["status"] == "labelled"
    new = db.execute("SELECT id FROM sentences WHERE text LIKE 'A new%'").fetchone()[0]
    assert projects.get_sentence(db, new)["annotator"] == "bob"
    # Importing the same file again changes nothing.
    assert io.import_file(db, pid, path, as_annotator="bob").annotations == 0
    with pytest.raises(NerlabError, match="do not go together"):
        io.import_file(db, pid, path, as_annotator="bob", update=True)


def test_deleting_an_entity_type_removes_it_from_every_annotation(db, team):
    pid, (s1, *_rest) = team
    projects.save_annotation(db, s1, [Span(0, 7, "Drug"), Span(17, 25, "Disease")], "alice")
    projects.delete_label(db, projects.label_by_name(db, pid)["Disease"]["id"])
    assert annotations.get(db, s1, "alice")["spans"] == [Span(0, 7, "Drug")]
