"""AppTest: the Label page's suggestions and queue order, the Data page's *Predict a file*."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import projects, suggestions
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.data.spans import Span, tokenize
from core.data.suggestions import Suggested
from core.jobs import launcher
from core.prediction import bulk

ROOT = Path(__file__).resolve().parent.parent
DATA = str(ROOT / "views/1_Data.py")
LABEL = str(ROOT / "views/2_Label.py")


def _run(path: str, **query: str) -> AppTest:
    at = AppTest.from_file(path, default_timeout=90)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def _widget(at: AppTest) -> dict:
    (element,) = at.get("bidi_component")
    return json.loads(element.proto.json)


@pytest.fixture
def crf(home):
    """The demo project with a finished CRF run (a real worker)."""
    db = get_db()
    demo = ensure_demo_project(db)
    run_id, _ = launcher.submit_baseline(db, demo["id"], "crf", {"max_iterations": 30})
    assert launcher.wait(db, run_id, timeout_s=240, poll_s=0.2)["status"] == "finished"
    return db, demo["id"], run_id


def _queue(db, pid) -> list[dict]:
    return [dict(r) for r in db.query("SELECT * FROM sentences WHERE project_id = ? AND status ="
                                      " 'unlabelled' ORDER BY position", [pid])]


def _first_words(text: str, label: str) -> Span:
    (a, b), (_c, d) = tokenize(text)[:2]
    return Span(a, d, label)


def test_suggestions_are_shown_dashed_and_the_accept_button_keeps_them(crf):
    db, pid, run_id = crf
    queue = _queue(db, pid)
    first = queue[0]
    span = _first_words(first["text"], "Chemical")
    suggestions.set_settings(db, pid, suggest_from=f"run:{run_id}")
    suggestions.store(db, pid, [Suggested(first["id"], (span,), (0.42,), 0.42)], source="run",
                      run_id=run_id, model=f"#{run_id} crf")
    at = _run(LABEL)
    data = _widget(at)
    assert data["sentence_id"] == first["id"]
    assert data["spans"] == [{**span.to_dict(), "suggested": True, "confidence": 0.42}]
    assert data["suggestion"]["pending"] and data["suggestion"]["model"] == f"#{run_id} crf"
    assert at.selectbox(key="label_suggest_from").value == f"run:{run_id}"
    assert any("Suggestions from" in c.value for c in at.caption)
    at.button(key="label_accept").click().run()
    assert not at.exception, at.exception
    row = projects.get_sentence(get_db(), first["id"])
    assert row["status"] == "labelled" and projects.sentence_spans(get_db(), first["id"]) == [span]
    stats = projects.stats(get_db(), pid)["suggestions"]
    assert stats["reviewed"] == 1 and stats["spans"]["accepted"] == 1
    # The next sentence had no suggestion: the CRF made one at once.
    nxt = _widget(at)
    assert nxt["sentence_id"] == queue[1]["id"]
    assert nxt["suggestion"] is not None and nxt["suggestion"]["model"].startswith(f"#{run_id}")


def test_least_confident_first_and_turning_suggestions_off(crf):
    db, pid, run_id = crf
    queue = _queue(db, pid)
    suggestions.set_settings(db, pid, suggest_from=f"run:{run_id}")
    confidences = {q["id"]: 0.9 for q in queue}
    confidences[queue[7]["id"]] = 0.05
    confidences[queue[3]["id"]] = 0.2
    suggestions.store(db, pid, [Suggested(sid, (), (), c) for sid, c in confidences.items()],
                      source="run", run_id=run_id, model="m")
    at = _run(LABEL)
    at.selectbox(key="label_order").set_value("confidence").run()
    assert not at.exception, at.exception
    assert _widget(at)["sentence_id"] == queue[7]["id"]
    at.button(key="label_next").click().run()
    assert _widget(at)["sentence_id"] == queue[3]["id"]
    at.selectbox(key="label_suggest_from").set_value("off").run()
    assert not at.exception, at.exception
    assert suggestions.get_settings(get_db(), pid)["suggest_from"] == "off"
    assert _widget(at)["suggestion"] is None
    assert any("No suggestions" in c.value for c in at.caption)


def test_the_automatic_crf_starts_from_the_label_page(home):
    db = get_db()
    pid = ensure_demo_project(db)["id"]
    suggestions.set_settings(db, pid, suggest_from="auto", auto_every=25)
    at = _run(LABEL)
    auto = [r for r in db.query("SELECT * FROM runs WHERE project_id = ?", [pid])]
    assert len(auto) == 1 and json.loads(auto[0]["config"])["auto"] is True
    assert at.number_input(key="label_auto_every").value == 25
    assert launcher.wait(db, auto[0]["id"], timeout_s=240, poll_s=0.2)["status"] == "finished"
    at.run()
    assert not at.exception, at.exception
    data = _widget(at)
    assert data["suggestion"] is not None and "Automatic CRF" in data["suggestion"]["model"]
    assert any("trained on 300 sentences" in c.value for c in at.caption)
    at.number_input(key="label_auto_every").set_value(5).run()
    assert suggestions.get_settings(get_db(), pid)["auto_every"] == 5


def test_data_page_predicts_pasted_sentences_without_adding_them(crf):
    db, pid, run_id = crf
    before = projects.stats(db, pid)["sentences"]
    at = _run(DATA)
    at.selectbox(key="data_predict_run").set_value(run_id)
    at.text_area(key="data_predict_paste").input(
        "Lithium caused severe hypotension.\nAspirin and fever .").run()
    at.button(key="data_predict_start").click().run()
    assert not at.exception, at.exception
    job = at.session_state["data_predict_job"]
    assert launcher.wait(db, job, timeout_s=240, poll_s=0.2)["status"] == "finished"
    at.run()
    assert not at.exception, at.exception
    rows = [json.loads(line) for line in bulk.output_text(job).splitlines()]
    assert [r["text"] for r in rows] == ["Lithium caused severe hypotension.", "Aspirin and fever ."]
    assert "# text = Aspirin and fever ." in bulk.output_text(job, "conll")
    assert projects.stats(get_db(), pid)["sentences"] == before
    labels = [b.proto.label for b in at.get("download_button")]
    assert "JSONL" in labels and "CONLL" in labels
