"""Agreement worked out by hand (exact, overlap, per type, against the adjudicated gold), review
turning a disagreement into gold, and ``nerlab agreement``."""

from __future__ import annotations

import json

import pytest

from core.cli.main import main
from core.data import annotations, projects, review
from core.data.records import SentenceRecord
from core.data.spans import Span
from core.evaluation import agreement
from core.evaluation.agreement import exact_matches, overlap_matches

S1 = "Aspirin relieves severe headache in adults ."
S2 = "Lithium caused tremor ."
ASPIRIN, SEVERE_HEADACHE, HEADACHE = Span(0, 7, "Drug"), Span(17, 32, "Disease"), Span(24, 32, "Disease")
LITHIUM, TREMOR = Span(0, 7, "Drug"), Span(15, 21, "Disease")


@pytest.fixture
def three(db):
    """Alice, Bob and Carol on two sentences, everyone labelling everything."""
    p = projects.create_project(db, "Agree", labels=["Drug", "Disease"])
    pid = p["id"]
    projects.add_sentences(db, pid, [SentenceRecord(S1, labelled=False),
                                     SentenceRecord(S2, labelled=False)])
    s1, s2 = [r[0] for r in db.execute("SELECT id FROM sentences ORDER BY position")]
    annotations.set_share(db, pid, annotations.EVERYONE)
    save = projects.save_annotation
    save(db, s1, [ASPIRIN, SEVERE_HEADACHE], "alice")
    save(db, s1, [ASPIRIN, HEADACHE], "bob")
    save(db, s1, [Span(0, 7, "Disease"), HEADACHE], "carol")  # Aspirin with the wrong type
    save(db, s2, [LITHIUM, TREMOR], "alice")
    save(db, s2, [LITHIUM], "bob")
    return pid, s1, s2


def test_span_matching_by_hand():
    assert exact_matches([ASPIRIN, SEVERE_HEADACHE], [ASPIRIN, HEADACHE]) == 1
    assert overlap_matches([ASPIRIN, SEVERE_HEADACHE], [ASPIRIN, HEADACHE]) == 2
    # Overlap needs the same type ...
    assert overlap_matches([Span(0, 7, "Drug")], [Span(0, 7, "Disease")]) == 0
    # ... and matches one to one: one long span over two short ones is one match.
    assert overlap_matches([Span(0, 10, "X")], [Span(0, 4, "X"), Span(6, 10, "X")]) == 1
    # Touching is not overlapping.
    assert overlap_matches([Span(0, 4, "X")], [Span(4, 8, "X")]) == 0


def test_pairwise_f1_exact_overlap_and_per_type_by_hand(db, three):
    pid, _s1, _s2 = three
    rep = agreement.report(db, pid)
    pairs = {(p["a"], p["b"]): p for p in rep["pairs"]}
    ab = pairs[("alice", "bob")]
    # S1: 1 exact match of 2+2 spans, 2 overlapping; S2: 1 match of 2+1 spans.
    assert ab["sentences"] == 2
    assert ab["exact"] == {"f1": round(2 * 2 / 7, 4), "matched": 2, "spans_a": 4, "spans_b": 3}
    assert ab["overlap"]["f1"] == round(2 * 3 / 7, 4)
    assert ab["per_type"]["Drug"]["exact"]["f1"] == 1.0
    assert ab["per_type"]["Disease"]["exact"]["f1"] == 0.0  # "severe headache" vs "headache"; tremor alone
    assert ab["per_type"]["Disease"]["overlap"]["f1"] == round(2 * 1 / 3, 4)
    ac = pairs[("alice", "carol")]  # S1 only: no exact match; headache overlaps, Aspirin's type differs
    assert (ac["sentences"], ac["exact"]["f1"], ac["overlap"]["f1"]) == (1, 0.0, 0.5)
    assert ac["per_type"]["Drug"]["overlap"] == {"f1": 0.0, "matched": 0, "spans_a": 1, "spans_b": 0}
    bc = pairs[("bob", "carol")]
    assert (bc["exact"]["f1"], bc["overlap"]["f1"]) == (0.5, 0.5)
    # All pairs pooled: matched 2+0+1 of 7+4+4 spans.
    assert rep["all_pairs"]["exact"]["f1"] == round(2 * 3 / 15, 4)
    assert rep["all_pairs"]["overlap"]["f1"] == round(2 * (3 + 1 + 1) / 15, 4)
    assert (rep["multi"], rep["disputed"], rep["reviewed"]) == (2, 2, 0)
    assert rep["vs_gold"] == [] and rep["gold_sentences"] == 0


def test_review_turns_a_disagreement_into_gold(db, three):
    pid, s1, s2 = three
    assert [r["id"] for r in review.disputed(db, pid)] == [s1, s2]
    assert projects.get_sentence(db, s1)["status"] == "unlabelled"  # no gold while disputed
    found = review.versions(db, s1)
    assert [v["annotator"] for v in found] == ["alice", "bob", "carol"]
    assert review.candidates(found)[0] == (Span(0, 7, "Disease"), ["carol"])
    assert review.majority(found) == [ASPIRIN, HEADACHE]

    review.adjudicate(db, s1, found[1]["spans"], "rita", choice="annotator:bob")
    row = projects.get_sentence(db, s1)
    assert (row["status"], row["gold_source"], row["reviewed_by"], row["annotator"]) == (
        "labelled", "review", "rita", "rita")
    assert projects.sentence_spans(db, s1) == [ASPIRIN, HEADACHE]
    assert [e.id for e in projects.examples(db, pid)] == [s1]  # training reads the adjudicated gold
    assert review.history(db, s1)[0]["choice"] == "annotator:bob"
    assert [r["id"] for r in review.disputed(db, pid)] == [s2]
    # Every annotation is kept, and agreement against the gold now has a reference.
    assert len(annotations.of_sentence(db, s1)) == 3
    vs = {g["annotator"]: g for g in agreement.report(db, pid)["vs_gold"]}
    assert vs["bob"]["exact"]["f1"] == 1.0
    assert (vs["alice"]["exact"]["precision"], vs["alice"]["exact"]["recall"]) == (0.5, 0.5)
    assert vs["alice"]["overlap"]["f1"] == 1.0
    assert vs["carol"]["exact"]["f1"] == 0.5

    # A merged version is edited by hand; overlapping spans are refused.
    with pytest.raises(projects.NerlabError, match="overlap"):
        review.adjudicate(db, s2, [LITHIUM, Span(3, 9, "Drug")], "rita")
    review.adjudicate(db, s2, [LITHIUM, TREMOR], "rita")
    assert review.disputed(db, pid) == []
    # An annotator who changes their mind after the review puts the sentence back on the list;
    # the reviewer's gold stands until a reviewer acts.
    projects.save_annotation(db, s1, [ASPIRIN], "alice")
    assert [r["id"] for r in review.disputed(db, pid)] == [s1]
    assert projects.sentence_spans(db, s1) == [ASPIRIN, HEADACHE]
    review.withdraw(db, s1, "rita")
    assert projects.get_sentence(db, s1)["gold_source"] == "disputed"


def test_nerlab_agreement_prints_and_writes_json(home, capsys):
    from core.data.db import get_db

    db = get_db()
    p = projects.create_project(db, "Cli", labels=["Drug", "Disease"])
    projects.add_sentences(db, p["id"], [SentenceRecord(S2, labelled=False)])
    sid = db.execute("SELECT id FROM sentences").fetchone()[0]
    assert main(["agreement", "Cli"]) == 0
    assert "nothing to compare" in capsys.readouterr().out
    annotations.set_share(db, p["id"], 2)
    projects.save_annotation(db, sid, [LITHIUM, TREMOR], "alice")
    projects.save_annotation(db, sid, [LITHIUM], "bob")
    assert main(["agreement", "Cli"]) == 0
    out = capsys.readouterr().out
    assert "alice – bob" in out and "0.667" in out and "2 annotators per sentence" in out
    assert main(["agreement", "Cli", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pairs"][0]["exact"]["f1"] == round(2 / 3, 4) and data["disputed"] == 1
    assert main(["agreement", "Nope"]) == 1
    assert "No project 'Nope'" in capsys.readouterr().err
