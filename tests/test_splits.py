"""Random splits move only what nobody placed: test stays test, hand-set and import-placed
sentences stay, training sentences are what dev is carved from; every move is reported."""

from __future__ import annotations

import sqlite3

import pytest

from core.data import io, projects
from core.data.db import get_db, migrations
from core.data.projects import SentenceRecord


def _sources(db, pid) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in db.query("SELECT split, split_source FROM sentences WHERE project_id = ?", [pid]):
        out.setdefault(r["split"], set()).add(r["split_source"])
    return out


@pytest.fixture
def imported(db):
    """200 test sentences imported with --split test, 400 train sentences imported as train."""
    p = projects.create_project(db, "p", labels=["A"])
    train = "".join(f"train{i} B-A\nword O\n\n" for i in range(400)).encode()
    test = "".join(f"test{i} B-A\nword O\n\n" for i in range(200)).encode()
    io.import_bytes(db, p["id"], train, "conll", name="train.conll", split="train")
    io.import_bytes(db, p["id"], test, "conll", name="test.conll", split="test")
    return p["id"]


def test_split_never_moves_imported_test_sentences(db, imported):
    """Before: `nerlab split` moved all 200 imported test sentences into train/dev, silently."""
    assert _sources(db, imported) == {"train": {"import"}, "test": {"import"}}
    report = projects.split_project(db, imported, seed=0)
    assert report.counts["test"] == 200  # none left test, none joined it (test share 0: filled)
    assert report.test == 0 and report.dev == 0.1
    assert set(report.moved) == {"train → dev"} and 20 <= report.n_moved <= 60
    assert report.counts == {"train": 400 - report.n_moved, "dev": report.n_moved, "test": 200}
    assert "test never moves without --reassign" in report.summary()
    # Same seed, same split: nothing more moves.
    again = projects.split_project(db, imported, seed=0)
    assert again.n_moved == 0 and again.counts == report.counts


def test_hand_placed_sentences_stay_unless_reassigned(db):
    p = projects.create_project(db, "p")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"Sentence number {i}.") for i in range(300)])
    ids = [r["id"] for r in db.query("SELECT id FROM sentences ORDER BY position")]
    projects.set_split(db, ids[:10], "dev")
    projects.set_split(db, ids[10:15], "train")
    report = projects.split_project(db, p["id"], dev=0.1, test=0.2, seed=3)
    assert report.kept == {"dev sentence(s) placed by hand (they move only with --reassign)": 10,
                           "train sentence(s) placed by hand (they move only with --reassign)": 5}
    rows = {r["id"]: r for r in db.query("SELECT id, split, split_source FROM sentences")}
    assert all(rows[i]["split"] == "dev" and rows[i]["split_source"] == "hand" for i in ids[:10])
    assert all(rows[i]["split"] == "train" for i in ids[10:15])  # hand-set train stays train
    moved = projects.split_project(db, p["id"], dev=0.1, test=0.2, seed=3, reassign=True)
    assert moved.kept == {} and _sources(db, p["id"]).keys() >= {"train", "dev", "test"}
    assert all(s == {"random"} for s in _sources(db, p["id"]).values())


def test_scored_test_sentences_stay_even_with_reassign(db):
    p = projects.create_project(db, "p")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"Sentence {i}.") for i in range(50)], split="test")
    sid = db.execute("SELECT id FROM sentences LIMIT 1").fetchone()[0]
    run_id = db["runs"].insert({"project_id": p["id"], "kind": "zero-shot", "created_at": "t"}).last_pk
    db["predictions"].insert({"run_id": run_id, "sentence_id": sid, "split": "test", "created_at": "t"})
    report = projects.split_project(db, p["id"], dev=0.5, test=0.0, reassign=True)
    assert projects.get_sentence(db, sid)["split"] == "test"
    assert report.kept == {"test sentence(s) already scored as test data (they never leave test)": 1}


def test_a_fresh_project_gets_the_usual_shares(db):
    p = projects.create_project(db, "p")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"Sentence number {i}.") for i in range(400)])
    report = projects.split_project(db, p["id"], seed=7)
    assert (report.dev, report.test) == (0.1, 0.2)
    assert 20 <= report.counts["dev"] <= 60 and 50 <= report.counts["test"] <= 110
    assert _sources(db, p["id"])["test"] == {"random"}


def test_splits_from_a_file_are_recorded_as_import(db):
    p = projects.create_project(db, "p")
    data = b'{"text": "One.", "split": "dev"}\n{"text": "Two."}\n{"text": "Three.", "split": "test"}\n'
    io.import_bytes(db, p["id"], data, "jsonl")
    rows = {r["text"]: (r["split"], r["split_source"]) for r in db.query("SELECT * FROM sentences")}
    assert rows == {"One.": ("dev", "import"), "Two.": ("train", "default"), "Three.": ("test", "import")}


def test_carve_dev_skips_hand_placed_training_sentences(db):
    p = projects.create_project(db, "p")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"s {i} .", labelled=True) for i in range(20)])
    ids = [r["id"] for r in db.query("SELECT id FROM sentences ORDER BY position")]
    projects.set_split(db, ids[:18], "train")
    assert projects.carve_dev(db, p["id"], 0.5) == 1  # of the two nobody placed
    assert {r["split_source"] for r in db.query("SELECT split_source FROM sentences WHERE split = 'dev'")} == {"random"}


def test_migration_keeps_an_existing_database_working(home):
    """A database made before split_source existed opens, and its old sentences keep their place."""
    path = home / "old.db"
    conn = sqlite3.connect(path)
    from sqlite_utils import Database

    old = Database(conn)
    migrations.apply(old, stop_before="m_io_001_split_source")
    assert "split_source" not in old["sentences"].columns_dict
    old["projects"].insert({"name": "legacy", "created_at": "t"})
    for i, split in enumerate(("train", "dev", "test")):
        old["sentences"].insert({"project_id": 1, "position": i, "text": f"s{i}", "split": split,
                                 "hash": f"h{i}", "created_at": "t", "updated_at": "t"})
    conn.close()
    db = get_db(path)
    rows = {r["split"]: r["split_source"] for r in db.query("SELECT split, split_source FROM sentences")}
    assert rows == {"train": "default", "dev": "import", "test": "import"}
    report = projects.split_project(db, 1, dev=0.5, test=0.5 - 1e-9, seed=0)
    assert report.counts["test"] >= 1 and report.counts["dev"] >= 1  # old dev/test stayed
