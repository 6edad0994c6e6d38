"""The labelling recipe: queue and filters, progress, widget actions, concurrency, undo."""

from __future__ import annotations

import io as _io
import json
import zipfile

import pytest

from core.data import annotations, io, label_session, labeling, projects
from core.data.label_session import Action, LabelSession
from core.data.labeling import QueueFilter
from core.data.spans import Span
from core.errors import NerlabError, NotFound


@pytest.fixture
def small(db):
    """A project with five sentences: two labelled (train, dev), three unlabelled."""
    project = projects.create_project(db, "Small", labels=["Drug", "Disease"])
    pid = project["id"]
    records = [
        projects.SentenceRecord("Aspirin relieves headache .", [Span(0, 7, "Drug"), Span(17, 25, "Disease")],
                                split="train"),
        projects.SentenceRecord("Fever was treated with 50%_dose ibuprofen .", [Span(32, 41, "Drug")],
                                split="dev"),
        projects.SentenceRecord("The patient slept well .", labelled=False, split="train"),
        projects.SentenceRecord("Lithium caused tremor in two patients .", labelled=False, split="train"),
        projects.SentenceRecord("No adverse events were seen .", labelled=False, split="test"),
    ]
    projects.add_sentences(db, pid, records)
    ids = [r["id"] for r in db.query("SELECT id FROM sentences WHERE project_id = ? ORDER BY position", [pid])]
    return pid, ids


def test_filter_validation_and_description():
    with pytest.raises(NerlabError, match="Status filter"):
        QueueFilter(status="maybe")
    with pytest.raises(NerlabError, match="Split filter"):
        QueueFilter(split="validation")
    text = QueueFilter("all", "dev", "Drug", " aspirin ").describe()
    assert text == 'all sentences · dev · with Drug · containing "aspirin"'


def test_queue_order_filters_and_navigation(db, small):
    pid, ids = small
    unl = QueueFilter()
    assert labeling.count(db, pid, unl) == 3
    assert labeling.first(db, pid, unl) == ids[2]
    assert labeling.neighbour(db, pid, unl, 2, 1) == ids[3]
    assert labeling.neighbour(db, pid, unl, 2, -1) is None
    assert labeling.next_in_queue(db, pid, unl, 4) == ids[2]  # wraps round
    assert labeling.rank(db, pid, unl, 3) == 1
    assert labeling.matches(db, pid, unl, ids[3]) and not labeling.matches(db, pid, unl, ids[0])
    assert labeling.count(db, pid, QueueFilter("labelled")) == 2
    assert labeling.count(db, pid, QueueFilter("all", split="train")) == 3
    assert labeling.count(db, pid, QueueFilter("all", label="Disease")) == 1
    assert labeling.count(db, pid, QueueFilter("all", label="Nope")) == 0
    # Text search is case-insensitive and treats % and _ literally.
    assert labeling.count(db, pid, QueueFilter("all", text="LITHIUM")) == 1
    assert labeling.count(db, pid, QueueFilter("all", text="50%_d")) == 1
    assert labeling.count(db, pid, QueueFilter("all", text="%")) == 1
    assert labeling.count(db, pid, QueueFilter("all", text="_")) == 1


def test_jump_by_number(db, small):
    pid, ids = small
    assert labeling.by_number(db, pid, 1) == ids[0]
    assert labeling.by_number(db, pid, 5) == ids[4]
    with pytest.raises(NotFound, match="sentences 1 to 5"):
        labeling.by_number(db, pid, 6)
    assert labeling.number_of(db, projects.get_sentence(db, ids[3])) == 4
    empty = projects.create_project(db, "Empty")
    with pytest.raises(NotFound, match="no sentences yet"):
        labeling.by_number(db, empty["id"], 1)


def test_progress_counts(db, small):
    pid, _ = small
    prog = labeling.progress(db, pid)
    assert (prog.total, prog.labelled) == (5, 2)
    assert prog.splits["train"] == {"sentences": 3, "labelled": 1}
    assert prog.splits["test"] == {"sentences": 1, "labelled": 0}
    assert prog.per_label == {"Drug": {"spans": 2, "sentences": 2}, "Disease": {"spans": 1, "sentences": 1}}
    assert prog.caption() == "2 / 5 sentences labelled (40%)"
    assert prog.details() == (
        "train 1/3 · dev 1/1 · test 0/1 — Drug 2 spans in 2 sentences · Disease 1 span in 1 sentence"
    )
    assert labeling.progress(db, projects.create_project(db, "E")["id"]).fraction == 0.0


def test_progress_on_demo_matches_stats(db, demo):
    prog = labeling.progress(db, demo["id"])
    stats = projects.stats(db, demo["id"])
    assert (prog.total, prog.labelled) == (stats["sentences"], stats["labelled"]) == (547, 507)
    assert {k: v["spans"] for k, v in prog.per_label.items()} == stats["spans_per_label"]


def test_parse_action_rejects_bad_input():
    action = label_session.parse_action(
        {"type": "edit", "sentence_id": 3, "version": 2, "seq": 9,
         "spans": [{"start": 0, "end": 4, "label": "Drug"}]}
    )
    assert action == Action("edit", 3, (Span(0, 4, "Drug"),), 2, 9)
    assert label_session.parse_action(json.dumps({"type": "next", "sentence_id": 1})).spans is None
    for bad, message in [
        ("not json", "not JSON"),
        ([1, 2], "not an object"),
        ({"type": "explode", "sentence_id": 1}, "Unknown labelling action"),
        ({"type": "edit", "sentence_id": "1"}, "names no sentence"),
        ({"type": "edit", "sentence_id": 1, "version": "x"}, "bad version"),
        ({"type": "edit", "sentence_id": 1, "version": 0, "spans": {"a": 1}}, "must be a list"),
        ({"type": "edit", "sentence_id": 1, "version": 0, "spans": [{"start": 0}]}, "Bad span"),
        ({"type": "edit", "sentence_id": 1, "spans": []}, "does not say which version"),
    ]:
        with pytest.raises(NerlabError, match=message):
            label_session.parse_action(bad)




def _edit(session, sid, spans, version=None, kind="edit", seq=None):
    """A widget action; by default numbered after the tab's last one, as the widget does."""
    return Action(kind, sid, tuple(spans), version if version is not None else session.versions.get(sid),
                  session.ack + 1 if seq is None else seq)


def test_edit_saves_at_once_with_annotator_and_keeps_status(db, small):
    pid, ids = small
    session = LabelSession()
    sid = ids[3]
    session.seen(projects.get_sentence(db, sid))
    label_session.apply_action(db, pid, session, _edit(session, sid, [Span(0, 7, "Drug")], seq=5), "ann", QueueFilter())
    row = projects.get_sentence(db, sid)
    assert projects.sentence_spans(db, sid) == [Span(0, 7, "Drug")]
    assert (row["status"], row["annotator"], row["version"]) == ("unlabelled", "ann", 1)
    assert row["updated_at"]
    assert session.current == sid and session.ack == 5 and session.notice is None
    assert session.undo and session.undo[-1].spans == []


def test_an_edit_that_changes_nothing_is_not_saved(db, small):
    pid, ids = small
    tab = LabelSession()
    tab.seen(projects.get_sentence(db, ids[0]))
    spans = projects.sentence_spans(db, ids[0])
    label_session.apply_action(db, pid, tab, _edit(tab, ids[0], reversed(spans)), "a", QueueFilter())
    assert projects.get_sentence(db, ids[0])["version"] == 0 and not tab.undo and tab.notice is None


def test_accept_marks_done_and_opens_next_in_queue(db, small):
    pid, ids = small
    session = LabelSession()
    for sid in ids[2:]:
        session.seen(projects.get_sentence(db, sid))
    label_session.apply_action(db, pid, session, _edit(session, ids[2], [], kind="accept"), "ann", QueueFilter())
    assert projects.get_sentence(db, ids[2])["status"] == "labelled"
    assert session.current == ids[3]
    label_session.apply_action(db, pid, session, _edit(session, ids[3], [Span(15, 21, "Disease")], kind="accept"),
                          "ann", QueueFilter())
    assert session.current == ids[4]
    label_session.apply_action(db, pid, session, _edit(session, ids[4], [], kind="accept"), "ann", QueueFilter())
    assert "Nothing left in this queue" in session.notice.text
    assert labeling.count(db, pid, QueueFilter()) == 0


def test_an_action_handled_twice_is_carried_out_once(db, small):
    """Streamlit calls the widget's callback again when a new rerun interrupts the run that
    handled it; the second call must not accept the next sentence or move on again."""
    pid, ids = small
    session = LabelSession()
    for sid in ids[2:]:
        session.seen(projects.get_sentence(db, sid))
    accept = _edit(session, ids[2], [Span(0, 7, "Drug")], kind="accept")
    label_session.apply_action(db, pid, session, accept, "ann", QueueFilter())
    version = projects.get_sentence(db, ids[2])["version"]
    assert session.current == ids[3] and session.trail == [ids[2]]
    label_session.apply_action(db, pid, session, accept, "ann", QueueFilter())
    assert session.current == ids[3] and session.trail == [ids[2]]
    assert projects.get_sentence(db, ids[2])["version"] == version
    assert projects.get_sentence(db, ids[3])["status"] == "unlabelled"
    # The page's buttons carry no number: each click counts.
    label_session.apply_action(db, pid, session, Action("prev", ids[3]), "a", QueueFilter("all"))
    label_session.apply_action(db, pid, session, Action("prev", ids[2]), "a", QueueFilter("all"))
    assert session.current == ids[1]


def test_next_prev_and_reopen(db, small):
    pid, ids = small
    session = LabelSession(current=ids[2])
    flt = QueueFilter("all")
    label_session.apply_action(db, pid, session, Action("next", ids[2]), "a", flt)
    assert session.current == ids[3]
    label_session.apply_action(db, pid, session, Action("prev", ids[3]), "a", flt)
    label_session.apply_action(db, pid, session, Action("prev", ids[2]), "a", flt)
    assert session.current == ids[1]
    label_session.apply_action(db, pid, session, Action("prev", ids[1]), "a", flt)
    assert session.current == ids[0]
    label_session.apply_action(db, pid, session, Action("prev", ids[0]), "a", flt)
    assert session.current == ids[0] and "first sentence" in session.notice.text
    session.seen(projects.get_sentence(db, ids[0]))
    label_session.apply_action(db, pid, session, Action("reopen", ids[0], None, session.versions[ids[0]]), "a", flt)
    assert projects.get_sentence(db, ids[0])["status"] == "unlabelled"
    assert len(projects.sentence_spans(db, ids[0])) == 2  # spans kept


def test_previous_goes_back_to_the_sentence_just_accepted(db, small):
    pid, ids = small
    tab = LabelSession(current=ids[2])
    flt = QueueFilter()  # not done yet: an accepted sentence leaves this queue
    tab.seen(projects.get_sentence(db, ids[2]))
    label_session.apply_action(db, pid, tab, _edit(tab, ids[2], [], kind="accept"), "a", flt)
    label_session.apply_action(db, pid, tab, Action("next", ids[3]), "a", flt)
    assert tab.current == ids[4]
    label_session.apply_action(db, pid, tab, Action("prev", ids[4]), "a", flt)
    assert tab.current == ids[3]
    label_session.apply_action(db, pid, tab, Action("prev", ids[3]), "a", flt)
    assert tab.current == ids[2]  # out of the queue now, but where this tab came from
    label_session.apply_action(db, pid, tab, Action("prev", ids[2]), "a", flt)
    assert tab.current == ids[2] and "first sentence" in tab.notice.text


def test_two_tabs_of_one_annotator_never_overwrite_each_other(db, small):
    pid, ids = small
    sid = ids[3]
    tab_a, tab_b = LabelSession(), LabelSession()
    for tab in (tab_a, tab_b):
        tab.seen(projects.get_sentence(db, sid))
    flt = QueueFilter()
    label_session.apply_action(db, pid, tab_a, _edit(tab_a, sid, [Span(0, 7, "Drug")]), "alice", flt)
    label_session.apply_action(db, pid, tab_b, _edit(tab_b, sid, [Span(15, 21, "Disease")]), "alice", flt)
    assert projects.sentence_spans(db, sid) == [Span(0, 7, "Drug")]  # the first tab's work kept
    assert tab_b.notice.level == "error"
    assert "changed by alice" in tab_b.notice.text and "Drug “Lithium”" in tab_b.notice.text
    assert tab_b.notice.unsaved == [Span(15, 21, "Disease")]
    # Tab B now shows the version tab A saved; an edit made on it saves.
    label_session.apply_action(db, pid, tab_b, _edit(tab_b, sid, [Span(0, 7, "Drug"), Span(15, 21, "Disease")]),
                          "alice", flt)
    assert tab_b.notice is None
    assert len(projects.sentence_spans(db, sid)) == 2


def test_two_annotators_on_one_sentence_keep_both_annotations(db, small):
    """Before teams the second annotator's save was refused (or overwrote the first): now each
    keeps their own annotation; with one annotator per sentence the latest save is the gold."""
    pid, ids = small
    sid = ids[3]
    tab_a, tab_b = LabelSession(), LabelSession()
    for tab in (tab_a, tab_b):
        tab.seen(projects.get_sentence(db, sid))
    flt = QueueFilter()
    label_session.apply_action(db, pid, tab_a, _edit(tab_a, sid, [Span(0, 7, "Drug")], kind="accept"),
                               "alice", flt)
    label_session.apply_action(db, pid, tab_b, _edit(tab_b, sid, [Span(15, 21, "Disease")], kind="accept"),
                               "bob", flt)
    assert tab_a.notice is None and tab_b.notice is None
    kept = {a["annotator"]: a["spans"] for a in annotations.of_sentence(db, sid)}
    assert kept == {"alice": [Span(0, 7, "Drug")], "bob": [Span(15, 21, "Disease")]}
    row = projects.get_sentence(db, sid)
    assert (row["status"], row["annotator"], row["gold_source"]) == ("labelled", "bob", "latest")
    assert projects.sentence_spans(db, sid) == [Span(15, 21, "Disease")]


def test_quick_edits_of_one_tab_do_not_conflict_with_each_other(db, small):
    pid, ids = small
    sid = ids[3]
    tab = LabelSession()
    tab.seen(projects.get_sentence(db, sid))
    base = tab.versions[sid]
    # Both edits were made on the page showing version `base` (the second before the refresh).
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Drug")], version=base), "a", QueueFilter())
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Drug"), Span(15, 21, "Disease")],
                                                version=base, seq=2), "a", QueueFilter())
    assert tab.notice is None
    assert len(projects.sentence_spans(db, sid)) == 2
    # ... but an edit based on a version another tab of theirs replaced is refused.
    projects.save_annotation(db, sid, [], "a", expected_version=2, status="unlabelled")
    tab.versions[sid] = 3  # the page refreshed and showed the other tab's version
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Drug")], version=2, seq=3), "a",
                          QueueFilter())
    assert tab.notice.level == "error" and projects.sentence_spans(db, sid) == []


def test_invalid_spans_from_the_browser_are_refused(db, small):
    pid, ids = small
    sid = ids[3]
    tab = LabelSession()
    tab.seen(projects.get_sentence(db, sid))
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Drug"), Span(3, 9, "Disease")]), "a",
                          QueueFilter())
    assert tab.notice.level == "error" and "overlap" in tab.notice.text
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Gene")]), "a", QueueFilter())
    assert "unknown entity type 'Gene'" in tab.notice.text
    assert projects.get_sentence(db, sid)["version"] == 0
    other = projects.create_project(db, "Other", labels=["X"])
    label_session.apply_action(db, other["id"], tab, _edit(tab, sid, []), "a", QueueFilter())
    assert "another project" in tab.notice.text


def test_undo_goes_back_change_by_change(db, small):
    pid, ids = small
    tab = LabelSession()
    flt = QueueFilter()
    for sid in ids:
        tab.seen(projects.get_sentence(db, sid))
    label_session.apply_action(db, pid, tab, _edit(tab, ids[3], [Span(0, 7, "Drug")]), "a", flt)
    label_session.apply_action(db, pid, tab, _edit(tab, ids[3], [Span(0, 7, "Drug")], kind="accept"), "a", flt)
    assert tab.current == ids[4]
    label_session.apply_action(db, pid, tab, Action("undo", tab.current), "a", flt)
    assert tab.current == ids[3]  # back to the accepted sentence, not done any more
    assert projects.get_sentence(db, ids[3])["status"] == "unlabelled"
    assert projects.sentence_spans(db, ids[3]) == [Span(0, 7, "Drug")]
    label_session.apply_action(db, pid, tab, Action("undo", tab.current), "a", flt)
    assert projects.sentence_spans(db, ids[3]) == []
    label_session.apply_action(db, pid, tab, Action("undo", tab.current), "a", flt)
    assert tab.notice.text == "Nothing to undo in this tab."


def test_undo_does_not_overwrite_another_tabs_later_save(db, small):
    pid, ids = small
    sid = ids[3]
    tab = LabelSession()
    tab.seen(projects.get_sentence(db, sid))
    label_session.apply_action(db, pid, tab, _edit(tab, sid, [Span(0, 7, "Drug")]), "a", QueueFilter())
    projects.save_annotation(db, sid, [Span(15, 21, "Disease")], "a", expected_version=1, status="labelled")
    label_session.apply_action(db, pid, tab, Action("undo", sid), "a", QueueFilter())
    assert tab.notice.level == "error" and "changed by a" in tab.notice.text
    assert projects.sentence_spans(db, sid) == [Span(15, 21, "Disease")]


def test_widget_data_and_legend(db, small):
    pid, ids = small
    labels = projects.list_labels(db, pid)
    projects.update_label(db, labels[0]["id"], description="Medicines.\nMore detail here.")
    labels = projects.list_labels(db, pid)
    data = label_session.widget_data(db, projects.get_sentence(db, ids[0]), labels, queue_index=None,
                                queue_total=3, ack=7)
    assert data["text"] == "Aspirin relieves headache ."
    assert data["spans"] == [{"start": 0, "end": 7, "label": "Drug"}, {"start": 17, "end": 25, "label": "Disease"}]
    assert data["tokens"][0] == [0, 7] and data["number"] == 1 and data["ack"] == 7
    assert data["labels"][0] == {"name": "Drug", "color": labels[0]["color"], "hotkey": "1",
                                 "description": "Medicines."}
    json.dumps(data)  # what the component is given must be JSON


def test_sentence_rows_pages_and_entities(db, small):
    pid, ids = small
    rows = labeling.sentence_rows(db, pid, QueueFilter("all"), offset=0, limit=2)
    assert [r["number"] for r in rows] == [1, 2]
    assert rows[0]["entities"] == "Drug: Aspirin; Disease: headache"
    rows = labeling.sentence_rows(db, pid, QueueFilter("unlabelled"), offset=1, limit=10)
    assert [r["id"] for r in rows] == ids[3:]
    assert rows[0]["number"] == 4 and rows[0]["entities"] == ""
    assert labeling.page_count(0, 50) == 1 and labeling.page_count(101, 50) == 3


def test_parse_numbers_and_ids(db, small):
    pid, ids = small
    assert labeling.parse_numbers("1-2, 4; 4", 5) == [1, 2, 4]
    assert labeling.ids_for_numbers(db, pid, [1, 5]) == [ids[0], ids[4]]
    for bad, message in [("x", "not a sentence number"), ("3-1", "backwards"), ("0-2", "outside"),
                         ("6", "outside"), (" , ", "Give sentence numbers")]:
        with pytest.raises(NerlabError, match=message):
            labeling.parse_numbers(bad, 5)


def test_export_files(db, small):
    pid, _ = small
    data, name, mime = io.export_file(db, pid, "conll", None, False)
    assert name == "Small.conll" and mime == "text/plain"
    assert data.decode().startswith("# split = train\n")  # what the project knows, then the tokens
    assert "\nAspirin\tB-Drug\n" in data.decode()
    data, name, _ = io.export_file(db, pid, "jsonl", "train", True)
    assert name == "Small-train.jsonl" and len(data.decode().splitlines()) == 3
    assert io.export_filename("BC5CDR demo / v2", "hf", "test") == "BC5CDR_demo_v2-test-hf.zip"
    with pytest.raises(NerlabError, match="Unknown export format"):
        io.export_file(db, pid, "xml", None, False)


def test_deferred_export_uses_its_own_connection(home, db, small):
    pid, _ = small
    build = io.deferred_export(pid, "jsonl", "dev", False)
    lines = build().decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["Fever was treated with 50%_dose ibuprofen ."]


@pytest.mark.slow
def test_hf_export_is_a_zip_of_a_datasets_folder(db, small):
    pid, _ = small
    data, name, mime = io.export_file(db, pid, "hf", None, False)
    assert name == "Small-hf.zip" and mime == "application/zip"
    names = zipfile.ZipFile(_io.BytesIO(data)).namelist()
    assert "Small/dataset_dict.json" in names


def test_a_save_from_a_tab_that_never_saw_the_sentence_is_refused(db, demo):
    """Every save is checked against a version: an action naming none, from a tab that has not
    shown the sentence, is not applied unchecked."""
    sid = projects.examples(db, demo["id"], split="train", labelled_only=False)[-1].id
    session = label_session.LabelSession()
    action = label_session.Action("accept", sid, (), None, 1)
    label_session.apply_action(db, demo["id"], session, action, "ann", labeling.QueueFilter())
    assert session.notice.level == "error" and "reload" in session.notice.text
    assert projects.get_sentence(db, sid)["version"] == 0

