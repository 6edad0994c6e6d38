"""Projects, entity types, annotations and splits on a real SQLite file."""

from __future__ import annotations

import pytest

from core.data import projects
from core.data.db import get_db
from core.data.projects import SentenceRecord
from core.data.spans import Span
from core.errors import Conflict, NerlabError


def test_database_is_wal_and_migrations_are_idempotent(home):
    db = get_db()
    assert db.journal_mode == "wal"
    applied = db.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0]
    again = get_db()
    assert again.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0] == applied
    for table in ("projects", "labels", "sentences", "spans", "templates", "runs",
                  "run_metrics", "predictions", "evaluations"):
        assert table in again.table_names()


def test_labels_get_colours_and_hotkeys_and_are_validated(db):
    p = projects.create_project(db, "p", labels=["PER", "ORG"])
    rows = projects.list_labels(db, p["id"])
    assert [(r["name"], r["hotkey"]) for r in rows] == [("PER", "1"), ("ORG", "2")]
    assert rows[0]["color"] != rows[1]["color"]
    with pytest.raises(NerlabError, match="already exists"):
        projects.add_label(db, p["id"], "PER")
    with pytest.raises(NerlabError, match="not allowed"):
        projects.add_label(db, p["id"], "bad[name]")
    with pytest.raises(NerlabError, match="already used"):
        projects.update_label(db, rows[1]["id"], hotkey="1")
    renamed = projects.update_label(db, rows[1]["id"], name="Organisation", color="#123456")
    assert (renamed["name"], renamed["color"]) == ("Organisation", "#123456")


def test_delete_label_reports_and_removes_its_spans(db):
    p = projects.create_project(db, "p", labels=["A", "B"])
    projects.add_sentences(db, p["id"], [
        SentenceRecord("x y z", spans=[Span(0, 1, "A"), Span(2, 3, "B")]),
        SentenceRecord("a b", spans=[Span(0, 1, "A")]),
    ])
    label_a = projects.label_by_name(db, p["id"])["A"]
    assert projects.count_label_spans(db, label_a["id"]) == 2
    assert projects.delete_label(db, label_a["id"]) == 2
    assert projects.stats(db, p["id"])["spans_per_label"] == {"B": 1}


def test_save_annotation_refuses_a_stale_version(db):
    p = projects.create_project(db, "p", labels=["Chemical"])
    projects.add_sentences(db, p["id"], [SentenceRecord("Aspirin helps.")])
    sid = projects.examples(db, p["id"], labelled_only=False)[0].id
    v0 = projects.get_sentence(db, sid)["version"]
    v1 = projects.save_annotation(db, sid, [Span(0, 7, "Chemical")], "tab-a", expected_version=v0)
    assert v1 == v0 + 1
    # A second tab of the same annotator that loaded version v0 must not overwrite the first's.
    with pytest.raises(Conflict, match="changed by tab-a"):
        projects.save_annotation(db, sid, [], "tab-a", expected_version=v0)
    assert projects.sentence_spans(db, sid) == [Span(0, 7, "Chemical")]
    row = projects.get_sentence(db, sid)
    assert (row["status"], row["annotator"]) == ("labelled", "tab-a")


def test_save_annotation_validates_spans(db):
    p = projects.create_project(db, "p", labels=["Chemical"])
    projects.add_sentences(db, p["id"], [SentenceRecord("Aspirin helps.")])
    sid = projects.examples(db, p["id"], labelled_only=False)[0].id
    with pytest.raises(NerlabError, match="unknown entity type 'Drug'"):
        projects.save_annotation(db, sid, [Span(0, 7, "Drug")], "me")
    with pytest.raises(NerlabError, match="overlap"):
        projects.save_annotation(db, sid, [Span(0, 7, "Chemical"), Span(3, 9, "Chemical")], "me")
    assert projects.get_sentence(db, sid)["status"] == "unlabelled"


def test_splits_are_reproducible_and_scored_test_sentences_stay(db):
    p = projects.create_project(db, "p")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"Sentence number {i}.") for i in range(400)])
    counts = projects.assign_splits(db, p["id"], dev=0.1, test=0.2, seed=7)
    assert sum(counts.values()) == 400
    assert 20 <= counts["dev"] <= 60 and 50 <= counts["test"] <= 110
    first = {e.id: e.split for e in projects.examples(db, p["id"], labelled_only=False)}
    projects.assign_splits(db, p["id"], dev=0.1, test=0.2, seed=7)
    assert {e.id: e.split for e in projects.examples(db, p["id"], labelled_only=False)} == first

    # Score one test sentence: it may not leave test, neither by re-splitting nor by hand.
    test_id = next(i for i, s in first.items() if s == "test")
    run_id = db["runs"].insert({"project_id": p["id"], "kind": "zero-shot", "created_at": "t"}).last_pk
    db["predictions"].insert({"run_id": run_id, "sentence_id": test_id, "split": "test", "created_at": "t"})
    projects.assign_splits(db, p["id"], dev=0.5, test=0.0, seed=1)
    assert projects.get_sentence(db, test_id)["split"] == "test"
    with pytest.raises(NerlabError, match="stay in test"):
        projects.set_split(db, [test_id], "train")


def test_bad_split_ratios(db):
    p = projects.create_project(db, "p")
    with pytest.raises(NerlabError, match="must be in"):
        projects.assign_splits(db, p["id"], dev=0.6, test=0.6)


def test_demo_project_is_created_once(db):
    from core.data.demo import ensure_demo_project

    p = ensure_demo_project(db)
    again = ensure_demo_project(db)
    assert p["id"] == again["id"]
    s = projects.stats(db, p["id"])
    assert s["splits"]["train"] == {"sentences": 340, "labelled": 300}
    assert s["splits"]["dev"]["labelled"] == 60
    assert s["splits"]["test"]["sentences"] >= 140
    assert set(s["spans_per_label"]) == {"Chemical", "Disease"}
    labels = projects.list_labels(db, p["id"])
    assert all(r["description"] for r in labels)


def test_carve_dev_moves_a_seeded_share_of_labelled_train_and_never_test(db):
    p = projects.create_project(db, "carve", labels=["A"])
    projects.add_sentences(db, p["id"], [SentenceRecord(f"sentence number {i} .", labelled=True) for i in range(40)],
                  split="train")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"test sentence {i} .", labelled=True) for i in range(10)],
                  split="test")
    assert projects.carve_dev(db, p["id"], 0.1, seed=3) == 4
    assert projects.split_counts(db, p["id"]) == {"train": 36, "dev": 4, "test": 10}
    again = projects.create_project(db, "carve2", labels=["A"])
    projects.add_sentences(db, again["id"], [SentenceRecord(f"sentence number {i} .", labelled=True)
                                    for i in range(40)], split="train")
    projects.carve_dev(db, again["id"], 0.1, seed=3)
    dev = lambda pid: sorted(r["text"] for r in db.query(  # noqa: E731
        "SELECT text FROM sentences WHERE project_id = ? AND split = 'dev'", [pid]))
    assert dev(p["id"]) == dev(again["id"])  # the same seed picks the same sentences


def test_rename_and_delete_a_project_with_what_goes(db, home):
    from core import config

    p = projects.create_project(db, "old name", labels=["A"])
    projects.add_sentences(db, p["id"], [projects.SentenceRecord("A b .", [Span(0, 1, "A")]),
                                          projects.SentenceRecord("c d .", labelled=False)])
    assert projects.rename_project(db, p["id"], "  new name ")["name"] == "new name"
    projects.create_project(db, "taken")
    with pytest.raises(NerlabError, match="already exists"):
        projects.rename_project(db, p["id"], "taken")
    run_id = db["runs"].insert({"project_id": p["id"], "kind": "crf", "status": "running",
                                "created_at": "t"}).last_pk
    folder = config.runs_dir() / str(run_id)
    folder.mkdir(parents=True)
    (folder / "crf.model").write_bytes(b"x" * 2048)
    with pytest.raises(NerlabError, match="stop them first"):
        projects.delete_project(db, p["id"])
    db.execute("UPDATE runs SET status = 'finished' WHERE id = ?", [run_id])
    gone = projects.delete_project(db, p["id"])
    assert (gone["sentences"], gone["labelled"], gone["spans"], gone["runs"]) == (2, 1, 1, 1)
    assert not folder.exists() and "new name" not in projects.list_project_names(db)
    assert db["spans"].count == 0
