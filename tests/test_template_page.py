"""The Template page (AppTest): edit, live preview after the chat template, save versions, check."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import projects, templates
from core.spans import Span

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages/3_Template.py")


@pytest.fixture
def page(home, monkeypatch, shared_models_dir):
    """The Template page on a small project (no demo), previewing with the bundled tokenizer."""
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    from core.db import get_db

    db = get_db()
    p = projects.create_project(db, "Pharma", labels=["Chemical", "Disease"])
    projects.add_sentences(db, p["id"], [
        projects.SentenceRecord("Lithium causes tremor.", [Span(0, 7, "Chemical"), Span(15, 21, "Disease")]),
        projects.SentenceRecord("salt water and salt", [Span(15, 19, "Chemical")]),
        projects.SentenceRecord("Nothing to see here.", [], labelled=True),
    ])
    at = AppTest.from_file(PAGE, default_timeout=120)
    return at, db, p


@pytest.mark.slow
def test_preview_shows_the_chat_prompt_target_and_token_counts(page):
    at, db, p = page
    at.run()
    assert not at.exception
    assert templates.get_template(db, p["id"]).version == 1  # the default was created
    prompt, target = at.code[0].value, at.code[1].value
    assert prompt.startswith("<|im_start|>system\n") and prompt.rstrip().endswith("<|im_start|>assistant")
    assert "Sentence: Lithium causes tremor." in prompt and "- Chemical\n- Disease" in prompt
    assert target == '[{"type": "Chemical", "text": "Lithium"}, {"type": "Disease", "text": "tremor"}]<|im_end|>'
    counts = [int(m.value) for m in at.metric]
    assert counts[0] > 40 and counts[1] > 10 and counts[2] == counts[0] + counts[1]
    assert any("Over 3 labelled sentences" in c.value for c in at.caption)
    assert not at.warning

    # The format switch changes the target at once (unsaved: a live preview).
    at.radio(key="template_format").set_value("inline_tags").run()
    assert at.code[1].value == "[Chemical: Lithium] causes [Disease: tremor].<|im_end|>"
    assert not at.button(key="template_save").disabled

    # Too long for the chosen maximum: warned, with the sentence named.
    at.number_input(key="template_max_length").set_value(64).run()
    assert any("more than the maximum length of 64" in w.value for w in at.warning)
    assert any("3 of 3 examples exceed" in w.value for w in at.warning)


@pytest.mark.slow
def test_errors_block_saving_and_saves_make_versions(page):
    at, db, p = page
    at.run()
    at.text_area(key="template_instruction").set_value("Types: {labels}\nText: {sentense}").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Unknown placeholder {sentense}" in e and "line 2" in e for e in errors)
    assert any("must contain {sentence}" in e for e in errors)
    assert at.button(key="template_save").disabled
    assert templates.get_template(db, p["id"]).version == 1

    at.text_area(key="template_instruction").set_value("Types: {labels}\n{examples}\nText: {sentence}").run()
    at.number_input(key="template_n_examples").set_value(1).run()
    assert not at.error
    assert "Examples:\nSentence: " in at.code[0].value  # a retrieved example, not the sentence itself
    at.button(key="template_save").click().run()
    assert not at.exception
    saved = templates.get_template(db, p["id"])
    assert (saved.version, saved.n_examples) == (2, 1)
    assert any("Saved 'default' v2" in s.value for s in at.success)
    assert at.selectbox(key="template_version").value == 2
    assert at.button(key="template_save").disabled  # nothing to save now

    # Going back to v1 loads it into the editor; saving it again makes v3.
    at.selectbox(key="template_version").set_value(1).run()
    assert at.text_area(key="template_instruction").value == templates.DEFAULT_INSTRUCTION
    assert at.button(key="template_save").disabled


@pytest.mark.slow
def test_round_trip_check_lists_the_sentences_that_fail(page):
    at, db, p = page
    at.run()
    at.checkbox(key="template_check_all").check().run()
    at.button(key="template_check").click().run()
    assert not at.exception
    assert any("JSON list" in e.value and "1 of 3 labelled sentences do not round-trip" in e.value for e in at.error)
    assert any("Inline tags" in s.value and "all 3 labelled sentences round-trip" in s.value for s in at.success)
    frame = at.dataframe[0].value
    assert list(frame["sentence"]) == [2] and "occurs 2 times" in frame["why"][0]


@pytest.mark.slow
def test_new_template_and_unknown_model(page):
    at, db, p = page
    at.run()
    at.text_input(key="template_new_name").set_value("short").run()
    at.button(key="template_create").click().run()
    assert not at.exception
    assert at.selectbox(key="template_name").value == "short"
    assert [t["name"] for t in templates.list_templates(db, p["id"])] == ["default", "short"]
    at.selectbox(key="template_model").set_value("Other (Hugging Face id or local folder)…").run()
    at.text_input(key="template_model_other").set_value(str(ROOT / "no-such-model")).run()
    assert not at.exception
    assert any("plain prompt" in w.value for w in at.warning)
    assert at.code[0].value.rstrip().endswith("Answer:")


def test_page_without_projects_says_what_to_do(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("Create a project" in i.value for i in at.info)
