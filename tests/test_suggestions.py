"""Suggestions in the labelling queue: stored, shown, taken, accepted, counted; queue orders."""

from __future__ import annotations

import pytest

from core.data import label_session, labeling, projects, suggestions
from core.data.label_session import Action, LabelSession
from core.data.labeling import QueueFilter
from core.data.spans import Span
from core.data.suggestions import Suggested
from core.errors import NerlabError


@pytest.fixture
def small(db):
    """Five unlabelled sentences and one labelled one, entity types Drug and Disease."""
    project = projects.create_project(db, "Small", labels=["Drug", "Disease"])
    pid = project["id"]
    texts = ["Aspirin relieves headache .", "Lithium caused tremor in two patients .",
             "The patient slept well .", "Ibuprofen and fever .", "Nothing here at all ."]
    records = [projects.SentenceRecord(t, labelled=False) for t in texts]
    records.append(projects.SentenceRecord("Heparin stops clots .", [Span(0, 7, "Drug")]))
    projects.add_sentences(db, pid, records)
    ids = [r["id"] for r in db.query("SELECT id FROM sentences WHERE project_id = ? ORDER BY position",
                                     [pid])]
    return pid, ids


def _suggest(db, pid, ids, source="auto", run_id=None):
    items = [
        Suggested(ids[0], (Span(0, 7, "Drug"), Span(17, 25, "Disease")), (0.9, 0.6), 0.6),
        Suggested(ids[1], (Span(0, 7, "Drug"), Span(15, 21, "Disease")), (0.8, None), 0.3),
        Suggested(ids[2], (), (), 0.95),
        Suggested(ids[3], (Span(0, 9, "Drug"), Span(3, 9, "Disease"), Span(14, 19, "Nope")),
                  (0.5, 0.5, 0.5), 0.1),
    ]
    return suggestions.store(db, pid, items, source=source, run_id=run_id, model="Auto CRF")


def test_store_keeps_only_fitting_spans_and_never_a_labelled_sentence(db, small):
    pid, ids = small
    assert _suggest(db, pid, ids) == 4
    row = suggestions.get(db, ids[3])
    # The overlapping span and the unknown entity type are dropped.
    assert row["spans"] == [(Span(0, 9, "Drug"), 0.5)] and row["confidence"] == 0.1
    # A labelled sentence gets none; its gold spans are untouched.
    assert suggestions.store(db, pid, [Suggested(ids[5], (Span(8, 13, "Drug"),))],
                             source="auto", run_id=None, model="x") == 0
    assert suggestions.get(db, ids[5]) is None
    # Suggested spans are not gold: training data, counts and filters ignore them.
    assert projects.sentence_spans(db, ids[0]) == []
    assert [e.id for e in projects.examples(db, pid)] == [ids[5]]
    drug = projects.label_by_name(db, pid)["Drug"]["id"]
    assert projects.count_label_spans(db, drug) == 1
    assert labeling.count(db, pid, QueueFilter("all", label="Drug")) == 1


def test_display_merges_untaken_suggestions_for_their_source_only(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    sentence = projects.get_sentence(db, ids[0])
    spans, info = suggestions.display(db, sentence, "auto")
    assert spans == [{"start": 0, "end": 7, "label": "Drug", "suggested": True, "confidence": 0.9},
                     {"start": 17, "end": 25, "label": "Disease", "suggested": True,
                      "confidence": 0.6}]
    assert info["pending"] and info["model"] == "Auto CRF" and info["confidence"] == 0.6
    assert suggestions.display(db, sentence, "run:3") == ([], None)
    assert suggestions.display(db, sentence, "off") == ([], None)
    # A draft gold span wins over a suggested span it overlaps.
    projects.save_annotation(db, ids[0], [Span(0, 16, "Disease")], "ann", status="unlabelled")
    spans, _ = suggestions.display(db, projects.get_sentence(db, ids[0]), "auto")
    assert [(s["start"], s["label"], s.get("suggested", False)) for s in spans] == [
        (0, "Disease", False), (17, "Disease", True)]


def test_enter_accepts_suggestions_as_gold_with_the_annotator(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    session = LabelSession(current=ids[0], suggest_from="auto")
    sentence = projects.get_sentence(db, ids[0])
    session.seen(sentence)
    shown = suggestions.get(db, ids[0])["id"]
    spans = [Span(0, 7, "Drug"), Span(17, 25, "Disease")]
    action = Action("accept", ids[0], tuple(spans), sentence["version"], 1, shown)
    label_session.apply_action(db, pid, session, action, "ana", QueueFilter())
    row = projects.get_sentence(db, ids[0])
    assert row["status"] == "labelled" and row["annotator"] == "ana"
    assert projects.sentence_spans(db, ids[0]) == spans
    stored = suggestions.get(db, ids[0])
    assert stored["taken_by"] == "ana" and stored["reviewed_at"]
    # The suggested spans are kept as the record of what was shown.
    assert [s for s, _ in stored["spans"]] == spans
    info = suggestions.summary(db, pid)
    assert info["reviewed"] == 1 and info["unchanged"] == 1
    assert info["spans"] == {"suggested": 2, "accepted": 2, "changed": 0, "removed": 0, "added": 0}
    # Once accepted, the page draws them as gold (not dashed).
    spans_now, info_now = suggestions.display(db, row, "auto")
    assert all("suggested" not in s for s in spans_now) and not info_now["pending"]
    # A later suggest job never replaces a taken suggestion.
    assert suggestions.store(db, pid, [Suggested(ids[0], ())], source="auto", run_id=None,
                             model="y") == 0


def test_removed_changed_and_added_spans_are_counted(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    session = LabelSession(suggest_from="auto")
    flt = QueueFilter()
    for sid in ids[:3]:
        session.seen(projects.get_sentence(db, sid))
    shown = suggestions.get(db, ids[1])["id"]
    # Sentence 2: remove "Lithium", change "tremor" to Drug, add "patients".
    first = Action("edit", ids[1], (Span(15, 21, "Drug"),), 0, 1, shown)
    label_session.apply_action(db, pid, session, first, "bo", flt)
    assert suggestions.get(db, ids[1])["taken_at"] and not suggestions.get(db, ids[1])["reviewed_at"]
    # The widget now draws the draft; the kept suggestion is no longer pending.
    data = label_session.widget_data(db, projects.get_sentence(db, ids[1]), [], queue_index=0,
                                     queue_total=1, suggest_from="auto")
    assert data["spans"] == [{"start": 15, "end": 21, "label": "Drug"}]
    assert data["suggestion"]["pending"] is False
    second = Action("accept", ids[1], (Span(15, 21, "Drug"), Span(29, 37, "Disease")), 1, 2, None)
    label_session.apply_action(db, pid, session, second, "bo", flt)
    # Sentence 3: the model suggested nothing; the page's Accept button takes that as it is.
    session.current = ids[2]
    label_session.apply_action(db, pid, session, Action("accept", ids[2], None,
                                                        session.versions[ids[2]]), "bo", flt)
    info = suggestions.summary(db, pid)
    assert info["reviewed"] == 2 and info["unchanged"] == 1
    assert info["spans"] == {"suggested": 2, "accepted": 0, "changed": 1, "removed": 1, "added": 1}
    assert info["edits_per_sentence"] == 1.5
    assert info["by_model"]["Auto CRF"]["reviewed"] == 2
    assert "1 removed" in suggestions.describe(info)
    assert projects.stats(db, pid)["suggestions"]["reviewed"] == 2


def test_removing_every_suggestion_is_saved_and_undo_brings_them_back(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    session = LabelSession(suggest_from="auto")
    session.seen(projects.get_sentence(db, ids[0]))
    shown = suggestions.get(db, ids[0])["id"]
    label_session.apply_action(db, pid, session, Action("edit", ids[0], (), 0, 1, shown), "c",
                               QueueFilter())
    # Nothing gold, but the suggestions were dismissed: the page must not show them again.
    assert suggestions.display(db, projects.get_sentence(db, ids[0]), "auto")[0] == []
    label_session.apply_action(db, pid, session, Action("undo", ids[0]), "c", QueueFilter())
    spans, info = suggestions.display(db, projects.get_sentence(db, ids[0]), "auto")
    assert len(spans) == 2 and info["pending"]


def test_an_action_for_a_replaced_suggestion_does_not_take_the_new_one(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    old = suggestions.get(db, ids[0])["id"]
    suggestions.store(db, pid, [Suggested(ids[0], (Span(0, 7, "Drug"),), (0.7,), 0.7)],
                      source="auto", run_id=None, model="Auto CRF")
    session = LabelSession(suggest_from="auto")
    session.seen(projects.get_sentence(db, ids[0]))
    label_session.apply_action(db, pid, session,
                               Action("edit", ids[0], (Span(0, 7, "Drug"),), 0, 1, old), "d",
                               QueueFilter())
    assert projects.sentence_spans(db, ids[0]) == [Span(0, 7, "Drug")]
    assert suggestions.get(db, ids[0])["taken_at"] is None


def test_queue_orders(db, small):
    pid, ids = small
    unl = QueueFilter()
    assert labeling.first(db, pid, unl) == ids[0]
    _suggest(db, pid, ids)
    low = QueueFilter(order="confidence")
    # 0.1, 0.3, 0.6, 0.95, then the sentence without a suggestion.
    expected = [ids[3], ids[1], ids[0], ids[2], ids[4]]
    assert labeling.first(db, pid, low) == expected[0]
    walk = [expected[0]]
    for _ in range(4):
        sid = walk[-1]
        pos = projects.get_sentence(db, sid)["position"]
        walk.append(labeling.neighbour(db, pid, low, pos, 1, sid))
    assert walk == expected
    last = projects.get_sentence(db, expected[-1])
    assert labeling.neighbour(db, pid, low, last["position"], 1, last["id"]) is None
    assert labeling.next_in_queue(db, pid, low, last["position"], last["id"]) == expected[0]
    mid = projects.get_sentence(db, ids[0])
    assert labeling.neighbour(db, pid, low, mid["position"], -1, mid["id"]) == ids[1]
    assert labeling.rank(db, pid, low, mid["position"], mid["id"]) == 2
    assert "least confident first" in low.describe()
    # Random: a fixed shuffle of the same sentences.
    rnd = QueueFilter(order="random")
    order = [labeling.first(db, pid, rnd)]
    while len(order) < 5:
        here = projects.get_sentence(db, order[-1])
        order.append(labeling.neighbour(db, pid, rnd, here["position"], 1, here["id"]))
    assert sorted(order) == sorted(ids[:5])
    with pytest.raises(NerlabError, match="Queue order"):
        QueueFilter(order="sideways")


def test_accept_in_confidence_order_opens_the_next_least_confident(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    flt = QueueFilter(order="confidence")
    session = LabelSession(current=ids[3], suggest_from="auto")
    session.seen(projects.get_sentence(db, ids[3]))
    label_session.apply_action(db, pid, session, Action("accept", ids[3], None, 0), "e", flt)
    assert session.current == ids[1]


def test_settings_and_sources(db, small):
    pid, _ = small
    assert suggestions.get_settings(db, pid) == {"suggest_from": "", "auto_every": 10}
    assert suggestions.set_settings(db, pid, suggest_from="run:4", auto_every=25) == {
        "suggest_from": "run:4", "auto_every": 25}
    assert suggestions.parse_source("run:4") == ("run", 4)
    with pytest.raises(NerlabError, match="not off, auto or run"):
        suggestions.set_settings(db, pid, suggest_from="bogus")
    with pytest.raises(NerlabError, match="whole number"):
        suggestions.set_settings(db, pid, auto_every=0)


def test_clear_pending_keeps_taken_suggestions(db, small):
    pid, ids = small
    _suggest(db, pid, ids)
    suggestions.take(db, suggestions.get(db, ids[0])["id"], "f")
    assert suggestions.clear_pending(db, pid) == 3
    assert suggestions.get(db, ids[0]) is not None and suggestions.get(db, ids[1]) is None
    assert db.execute("SELECT COUNT(*) FROM spans WHERE origin = 'suggested'").fetchone()[0] == 2


def test_compare_outcomes():
    s = [Span(0, 5, "A"), Span(10, 15, "B"), Span(20, 25, "A"), Span(30, 35, "A")]
    g = [Span(0, 5, "A"), Span(10, 15, "A"), Span(20, 27, "A"), Span(40, 45, "B")]
    out = suggestions.compare(s, g)
    assert (out.accepted, out.changed, out.removed, out.added) == (1, 2, 1, 1)
    assert out.edits == 4
