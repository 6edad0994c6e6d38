"""AppTest tests of the Data and Label pages on a real SQLite database (the demo project)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import projects
from core.data.spans import Span

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "views/1_Data.py")
LABEL = str(ROOT / "views/2_Label.py")


def _run(path: str, **query: str) -> AppTest:
    at = AppTest.from_file(path, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _widget(at: AppTest) -> dict:
    """The data the Label page gave the labelling widget."""
    (element,) = at.get("bidi_component")
    return json.loads(element.proto.json)


def _db():
    from core.data.db import get_db

    return get_db()


def _demo_id(db) -> int:
    return projects.get_project(db, "BC5CDR demo")["id"]


# --------------------------------------------------------------------------------------- Label


def test_label_page_opens_the_first_sentence_to_label(home):
    at = _run(LABEL)
    data = _widget(at)
    db = _db()
    first = db.execute(
        "SELECT id FROM sentences WHERE status = 'unlabelled' ORDER BY position LIMIT 1"
    ).fetchone()[0]
    assert data["sentence_id"] == first and data["status"] == "unlabelled"
    assert data["queue_index"] == 0 and data["queue_total"] == 40
    assert [lab["name"] for lab in data["labels"]] == ["Chemical", "Disease"]
    assert at.query_params["sentence"] == [str(first)] or at.query_params["sentence"] == str(first)
    assert "507 / 547 sentences labelled" in at.get("progress")[0].proto.text
    details = at.caption[0].value
    assert details.startswith("train 300/340 · dev 60/60 · test 147/147 — Chemical ")


def test_switching_project_in_the_sidebar_opens_its_queue(home):
    at = _run(LABEL)
    at.number_input(key="label_jump").set_value(500).run()
    db = _db()
    small = projects.create_project(db, "Tiny", labels=["A"])
    projects.add_sentences(db, small["id"], [projects.SentenceRecord("Just one .", labelled=False)])
    at.run()  # the sidebar now offers the new project
    at.selectbox(key="shell_project").set_value(small["id"]).run()
    assert not at.exception, at.exception
    assert _widget(at)["text"] == "Just one ."


def test_label_page_filters(home):
    at = _run(LABEL)
    at.selectbox(key="label_status").set_value("labelled").run()
    assert _widget(at)["status"] == "labelled" and _widget(at)["number"] == 1
    at.selectbox(key="label_split").set_value("dev").run()
    data = _widget(at)
    assert data["split"] == "dev" and data["queue_total"] == 60
    at.selectbox(key="label_entity").set_value("Disease").run()
    data = _widget(at)
    assert any(s["label"] == "Disease" for s in data["spans"])
    at.selectbox(key="label_split").set_value("all").run()
    at.selectbox(key="label_entity").set_value("any").run()
    at.text_input(key="label_search").set_value("lithium").run()
    data = _widget(at)
    assert "lithium" in data["text"].lower()
    at.text_input(key="label_search").set_value("no such words anywhere").run()
    assert not at.get("bidi_component")
    assert any("No sentence matches" in s.value for s in at.success)


def test_accept_next_undo_and_jump(home):
    at = _run(LABEL)
    first = _widget(at)["sentence_id"]
    at.button(key="label_accept").click().run()
    db = _db()
    assert projects.get_sentence(db, first)["status"] == "labelled"
    assert projects.get_sentence(db, first)["annotator"]
    second = _widget(at)["sentence_id"]
    assert second != first and _widget(at)["queue_total"] == 39
    at.button(key="label_undo").click().run()
    assert _widget(at)["sentence_id"] == first
    assert projects.get_sentence(db, first)["status"] == "unlabelled"
    at.button(key="label_next").click().run()
    assert _widget(at)["sentence_id"] == second
    at.button(key="label_prev").click().run()
    assert _widget(at)["sentence_id"] == first
    at.number_input(key="label_jump").set_value(12).run()
    at.button(key="label_go").click().run()
    assert _widget(at)["number"] == 12
    assert _widget(at)["queue_index"] is None  # labelled, so outside the "not done" queue
    at.number_input(key="label_jump").set_value(546).run()
    at.button(key="label_go").click().run()
    assert _widget(at)["number"] == 546


def test_a_stale_url_after_an_action_does_not_pull_the_tab_back(home):
    """Quick keys: the browser may send the URL of an earlier run with the next action; the
    sentence in it is where the tab was, not a link to follow."""
    at = _run(LABEL)
    first = _widget(at)["sentence_id"]
    at.button(key="label_accept").click().run()
    second = _widget(at)["sentence_id"]
    at.query_params["sentence"] = str(first)  # the URL as it was before the accept
    at.button(key="label_accept").click().run()
    third = _widget(at)["sentence_id"]
    assert third not in (first, second)
    assert projects.get_sentence(_db(), second)["status"] == "labelled"


def test_deep_link_opens_a_sentence(home, demo):
    db = _db()
    sid = db.execute("SELECT id FROM sentences WHERE split = 'test' ORDER BY position LIMIT 1").fetchone()[0]
    at = _run(LABEL, sentence=str(sid))
    assert _widget(at)["sentence_id"] == sid and _widget(at)["split"] == "test"
    at = _run(LABEL, sentence="999999")
    assert any("does not exist" in w.value for w in at.warning)


def test_deep_link_to_another_project_switches_project(home):
    db = _db()
    at = _run(LABEL)  # creates the demo project
    other = projects.create_project(db, "Other", labels=["X"])
    projects.add_sentences(db, other["id"], [
        projects.SentenceRecord("First sentence here .", labelled=False),
        projects.SentenceRecord("Second sentence , already done .", labelled=True),
    ])
    sid = db.execute("SELECT id FROM sentences WHERE project_id = ? ORDER BY position DESC",
                     [other["id"]]).fetchone()[0]
    at = _run(LABEL, sentence=str(sid))
    assert _widget(at)["sentence_id"] == sid  # although it is not in the "not done" queue
    assert at.session_state["project_id"] == other["id"]
    assert at.query_params["project"] in ([str(other["id"])], str(other["id"]))  # a reload keeps it
    # The Evaluate page's links carry both ids.
    at = _run(LABEL, sentence=str(sid), project=str(other["id"]))
    assert _widget(at)["sentence_id"] == sid and at.session_state["project_id"] == other["id"]
    # The same tab follows a later link too, without the filters pulling it back.
    demo_sid = db.execute("SELECT id FROM sentences WHERE split = 'dev' LIMIT 1").fetchone()[0]
    at.query_params["sentence"] = str(demo_sid)
    at.run()
    assert _widget(at)["sentence_id"] == demo_sid


def test_conflict_with_another_tab_is_shown_not_overwritten(home):
    at = _run(LABEL)
    sid = _widget(at)["sentence_id"]
    me = at.session_state["annotator"]
    db = _db()
    text = projects.get_sentence(db, sid)["text"]
    start = text.index("plasma")
    # Another tab of the same annotator saves first.
    projects.save_annotation(db, sid, [Span(start, start + 6, "Chemical")], me,
                             expected_version=0, status="unlabelled")
    at.button(key="label_accept").click().run()
    errors = " ".join(e.value for e in at.error)
    assert f"changed by {me}" in errors and "Not saved" in errors
    row = projects.get_sentence(db, sid)
    assert (row["status"], row["annotator"]) == ("unlabelled", me)
    data = _widget(at)
    assert data["sentence_id"] == sid and data["spans"] == [{"start": start, "end": start + 6, "label": "Chemical"}]
    at.button(key="label_accept").click().run()  # now on their version: saves
    assert projects.get_sentence(db, sid)["status"] == "labelled"


def test_label_page_without_sentences_or_projects(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    at = _run(LABEL)
    assert any("Create a project" in i.value for i in at.info)
    projects.create_project(_db(), "Blank", labels=["A"])
    # Entered from the home page, as in the app, so the page link to the Data page resolves.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/2_Label.py").run()
    assert not at.exception, at.exception
    assert any("no sentences yet" in i.value for i in at.info)


# ---------------------------------------------------------------------------------------- Data


def test_data_page_renders_and_filters_the_table(home):
    at = _run(DATA)
    assert "547 of 547 sentences match" in at.caption[0].value
    at.selectbox(key="data_status").set_value("unlabelled").run()
    assert "40 of 547" in at.caption[0].value
    at.selectbox(key="data_status").set_value("all").run()
    at.selectbox(key="data_entity").set_value("Disease").run()
    at.text_input(key="data_search").set_value("lithium").run()
    caption = at.caption[0].value
    n = int(caption.split(" of ")[0])
    assert 0 < n < 547
    frame = at.dataframe[0].value
    assert all("lithium" in t.lower() for t in frame["Sentence"])
    assert all("Disease:" in e for e in frame["Entities"])
    assert list(frame["Open"])[0].startswith("Label?sentence=")


def test_data_page_entity_types_add_rename_delete(home):
    at = _run(DATA)
    at.text_input(key="data_new_name").set_value("Gene")
    at.text_input(key="data_new_hotkey").set_value("g")
    at.text_input(key="data_new_desc").set_value("Genes and proteins.")
    at.button(key="FormSubmitter:data_add_label-Add entity type").click().run()
    assert not at.exception
    assert any("Added Gene (hotkey g)" in s.value for s in at.success)
    db = _db()
    pid = _demo_id(db)
    gene = projects.label_by_name(db, pid)["Gene"]
    assert (gene["hotkey"], gene["description"]) == ("g", "Genes and proteins.")

    # Rename Disease, change its hotkey; the Label page's filter follows.
    disease = projects.label_by_name(db, pid)["Disease"]
    at.selectbox(key="data_edit_choice").set_value(disease["id"]).run()
    at.text_input(key=f"data_edit_name_{disease['id']}").set_value("Condition")
    at.text_input(key=f"data_edit_hotkey_{disease['id']}").set_value("c")
    at.button(key=f"FormSubmitter:data_edit_{disease['id']}-Save changes").click().run()
    assert "Condition" in projects.label_by_name(db, pid)
    assert projects.label_by_name(db, pid)["Condition"]["hotkey"] == "c"
    label_at = _run(LABEL)
    assert "Condition" in label_at.selectbox(key="label_entity").options

    # A clash is refused with a message that says why.
    at.selectbox(key="data_edit_choice").set_value(disease["id"]).run()
    at.text_input(key=f"data_edit_hotkey_{disease['id']}").set_value("1")
    at.button(key=f"FormSubmitter:data_edit_{disease['id']}-Save changes").click().run()
    assert any("already used" in e.value for e in at.error)

    # Delete asks first, saying how many spans go with it.
    spans = projects.count_label_spans(db, disease["id"])
    at.selectbox(key="data_edit_choice").set_value(disease["id"]).run()
    at.button(key="data_delete").click().run()
    warning = " ".join(w.value for w in at.warning)
    assert f"the {spans} span(s)" in warning
    at.button(key="data_delete_no").click().run()
    assert "Condition" in projects.label_by_name(db, pid)
    at.button(key="data_delete").click().run()
    at.button(key="data_delete_yes").click().run()
    assert not at.exception, at.exception
    assert "Condition" not in projects.label_by_name(db, pid)
    assert any(f"and {spans} span(s)" in s.value for s in at.success)


def test_data_page_splits(home):
    at = _run(DATA)
    at.text_input(key="data_move_numbers").set_value("1-10")
    at.selectbox(key="data_move_split").set_value("dev")
    at.button(key="data_move").click().run()
    assert any("Moved 10 sentence(s) to dev" in s.value for s in at.success)
    db = _db()
    pid = _demo_id(db)
    assert projects.split_counts(db, pid)["dev"] == 70
    at.text_input(key="data_move_numbers").set_value("5-1").run()
    at.button(key="data_move").click().run()
    assert any("backwards" in e.value for e in at.error)
    at.button(key="data_assign").click().run()
    counts = projects.split_counts(db, pid)
    assert sum(counts.values()) == 547 and counts["test"] > counts["dev"] > 0


@pytest.mark.parametrize("fmt", ["conll", "jsonl"])
def test_data_page_export_controls(home, fmt):
    at = _run(DATA)
    at.selectbox(key="data_export_format").set_value(fmt).run()
    at.selectbox(key="data_export_split").set_value("test").run()
    assert any("147 sentence(s) will be exported" in c.value for c in at.caption)
    assert not at.exception
