"""The Template page (AppTest): edit, live preview after the chat template, save versions, check."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import projects
from core.data.spans import Span
from core.models import loader
from core.prompts import render
from core.prompts.store import get_template, list_templates
from core.prompts.template import DEFAULT_INSTRUCTION, default_template

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "views/3_Template.py")


@pytest.fixture
def page(home, monkeypatch, shared_models_dir):
    """The Template page on a small project (no demo), previewing with the bundled tokenizer."""
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    from core.data.db import get_db

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
    assert get_template(db, p["id"]).version == 1  # the default was created
    prompt, target = at.code[0].value, at.code[1].value
    assert prompt.startswith("<|im_start|>system\n") and prompt.rstrip().endswith("<|im_start|>assistant")
    assert "Sentence: Lithium causes tremor." in prompt and "- Chemical\n- Disease" in prompt
    assert target == '[{"type": "Chemical", "text": "Lithium"}, {"type": "Disease", "text": "tremor"}]<|im_end|>'
    counts = [int(m.value) for m in at.metric]
    assert counts[0] > 40 and counts[1] > 10 and counts[2] == counts[0] + counts[1]
    assert any("Over 3 labelled training sentences" in c.value for c in at.caption)
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
    assert get_template(db, p["id"]).version == 1

    at.text_area(key="template_instruction").set_value("Types: {labels}\n{examples}\nText: {sentence}").run()
    at.number_input(key="template_n_examples").set_value(1).run()
    assert not at.error
    assert "Examples:\nSentence: " in at.code[0].value  # a retrieved example, not the sentence itself
    at.button(key="template_save").click().run()
    assert not at.exception
    saved = get_template(db, p["id"])
    assert (saved.version, saved.n_examples) == (2, 1)
    assert any("Saved 'default' v2" in t.value for t in at.toast)
    assert at.selectbox(key="template_version").value == 2
    assert at.button(key="template_save").disabled  # nothing to save now

    diff = next(c.value for c in at.code if c.value.startswith("--- default v1"))
    assert "+Types: {labels}" in diff and "-retrieved examples: 0 (tfidf)" in diff

    # Going back to v1 loads it into the editor; saving it brings it back as v3.
    at.selectbox(key="template_version").set_value(1).run()
    assert at.text_area(key="template_instruction").value == DEFAULT_INSTRUCTION
    assert not at.button(key="template_save").disabled
    at.button(key="template_save").click().run()
    latest = get_template(db, p["id"])
    assert latest.version == 3 and latest.instruction == DEFAULT_INSTRUCTION
    assert at.selectbox(key="template_version").value == 3


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
    assert [t["name"] for t in list_templates(db, p["id"])] == ["default", "short"]
    at.selectbox(key="template_model").set_value("Other (Hugging Face id or local folder)…").run()
    at.text_input(key="template_model_other").set_value(str(ROOT / "no-such-model")).run()
    assert not at.exception
    assert any("plain prompt" in w.value for w in at.warning)
    assert at.code[0].value.rstrip().endswith("Answer:")


@pytest.mark.slow
def test_parser_tryout_reads_a_broken_output(page):
    at, db, p = page
    at.run()
    at.text_area(key="template_try_output").set_value(
        "```json\n[{'type': 'chemical', 'text': 'Lithium'}, {'type': 'Drug', 'text': 'x'}, {'type': 'Disease', 'text': 'trem"
    ).run()
    assert not at.exception
    warning = next(w.value for w in at.warning if "Parse status" in w.value)
    assert "partial" in warning and "1 span(s) read" in warning and "unknown types: Drug" in warning
    assert any("Lithium" in m.value and "parsed" in m.value for m in at.markdown)


def test_page_without_projects_says_what_to_do(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("Create a project" in i.value for i in at.info)


@pytest.mark.browser
@pytest.mark.slow
def test_live_edit_and_save_in_a_real_browser(tmp_path, shared_models_dir):
    """Chromium against `streamlit run`: switching the output format changes the previewed
    target at once; a typo in a placeholder shows the error; saving makes version 2."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip(f"{chromium} is missing (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project

    home = tmp_path / "home"
    demo = ensure_demo_project(get_db(home / "nerlab.db"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "NERLAB_HOME": str(home), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    env.pop("NERLAB_NO_DEMO", None)
    log = open(tmp_path / "streamlit.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "streamlit.log").read_text()
                time.sleep(0.3)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(90_000)
            page.goto(f"{url}/Template")
            page.get_by_text("Prompt tokens").wait_for()
            page.get_by_text("<|im_start|>assistant").first.wait_for()
            page.get_by_text('[{"type": "Chemical", "text": "Selegiline"}').first.wait_for()

            page.get_by_text("Inline tags: [TYPE: entity]").click()
            page.get_by_text("[Chemical: Selegiline] - induced").first.wait_for()

            box = page.get_by_role("textbox", name="Instruction")
            box.fill("Types: {labels}\nSentence: {sentense}")
            box.press("Control+Enter")
            page.get_by_text("Unknown placeholder {sentense}").wait_for()
            page.get_by_role("button", name="Save as new version", disabled=True).first.wait_for()

            box.fill("Types: {labels}\n{format}\nSentence: {sentence}")
            box.press("Control+Enter")
            page.get_by_text("Unknown placeholder").wait_for(state="detached")
            # Streamlit may briefly keep the stale (disabled) button while it reruns.
            page.get_by_role("button", name="Save as new version", disabled=False).first.click()
            page.get_by_text("Saved 'default' v2.").wait_for()
            browser.close()
        saved = get_template(get_db(home / "nerlab.db"), demo["id"])
        assert (saved.version, saved.output_format) == (2, "inline_tags")
        assert saved.instruction == "Types: {labels}\n{format}\nSentence: {sentence}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_bundled_tokenizer_before_conversion_matches_the_converted_one(tmp_path, monkeypatch, bundled_model_path):
    """A fresh install previews from the GGUF's tokenizer without converting the model first."""
    from core import config
    from core.ui import template_view

    monkeypatch.setenv(config.MODELS_ENV, str(tmp_path / "empty-models"))
    template_view._tokenizer.clear()
    try:
        fresh = template_view._tokenizer(config.BUNDLED_MODEL)
        assert not (loader.bundled_model_dir() / "config.json").exists()  # nothing was converted
    finally:
        template_view._tokenizer.clear()
    converted = loader.load_tokenizer(str(bundled_model_path))
    tpl = default_template("inline_tags")
    args = (tpl, "Lithium causes tremor .", ["Chemical", "Disease"])
    assert render.build_chat(fresh, *args, answer="x") == render.build_chat(converted, *args, answer="x")
    prompt, target = render.build_chat(fresh, *args, answer="[Chemical: Lithium] causes tremor .")
    assert render.encode_chat(fresh, prompt, target) == render.encode_chat(converted, prompt, target)
