"""The labelling widget in a real Chromium against ``streamlit run``: mouse, keyboard, reloads, tabs.

Each test opens its own sentence through the Label page's deep link (``?sentence=ID``), so the
tests share one server and database without depending on each other's order.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from waiting import wait_for

from core.data import projects
from core.data.db import get_db
from core.data.spans import Span, tokenize

pytestmark = pytest.mark.browser

WIDGET = ".nl-text"


def _db(home: Path):
    return get_db(home / "nerlab.db")


def _unlabelled_ids(home: Path) -> list[int]:
    db = _db(home)
    rows = db.execute(
        "SELECT s.id FROM sentences s JOIN projects p ON p.id = s.project_id"
        " WHERE p.name = 'BC5CDR demo' AND s.status = 'unlabelled' ORDER BY s.position"
    ).fetchall()
    return [r[0] for r in rows]


def _open(page, base: str, sentence_id: int) -> None:
    page.goto(f"{base}/Label?sentence={sentence_id}", wait_until="domcontentloaded")
    page.wait_for_selector(f"{WIDGET} .nl-tok", timeout=60_000)
    wait_for(lambda: page.locator(".nl-root").get_attribute("data-sentence") == str(sentence_id),
              what=f"sentence {sentence_id} in the widget")


def _word_token(page, min_len: int = 5):
    """A word token of at least ``min_len`` letters that is not yet in a span, and its text."""
    tokens = page.locator(f"{WIDGET} .nl-tok")
    for i in range(tokens.count()):
        tok = tokens.nth(i)
        text = tok.inner_text()
        if len(text) >= min_len and text.isalpha():
            return tok, text
    raise AssertionError("no long word in the sentence")


def test_mouse_select_hotkey_reload_and_database(browser_page, app_server, app_home):
    page = browser_page
    sid = _unlabelled_ids(app_home)[0]
    _open(page, app_server, sid)
    page.get_by_label("Your name", exact=True).fill("mouse-tester")
    page.get_by_label("Your name", exact=True).press("Enter")
    time.sleep(1.0)  # the sidebar input's rerun
    tok, word = _word_token(page)
    # Drag from inside the word's second letter to inside its last letter: the selection snaps
    # to the whole word.
    box = tok.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, y, steps=6)
    page.mouse.up()
    assert page.locator(f"{WIDGET} .nl-tok.sel").all_inner_texts() == [word]
    page.keyboard.press("1")  # Chemical's hotkey
    mark = page.locator(f"{WIDGET} mark.nl-span")
    wait_for(lambda: mark.count() == 1, what="the span to be drawn")
    assert mark.first.get_attribute("data-label") == "Chemical"
    assert mark.first.inner_text().startswith(word)

    db = _db(app_home)
    text = projects.get_sentence(db, sid)["text"]
    spans = wait_for(lambda: projects.sentence_spans(_db(app_home), sid), what="the span in SQLite")
    assert len(spans) == 1 and spans[0].label == "Chemical"
    assert text[spans[0].start:spans[0].end] == word
    assert projects.get_sentence(_db(app_home), sid)["annotator"] == "mouse-tester"

    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(f"{WIDGET} mark.nl-span", timeout=60_000)
    assert page.locator(f"{WIDGET} mark.nl-span").count() == 1
    assert page.locator(f"{WIDGET} mark.nl-span").first.get_attribute("data-label") == "Chemical"

    # Click the span: change its type in the menu, then remove it.
    page.locator(f"{WIDGET} mark.nl-span").first.click()
    page.locator(".nl-menu button[data-label=Disease]").click()
    wait_for(lambda: [s.label for s in projects.sentence_spans(_db(app_home), sid)] == ["Disease"],
              what="the type change in SQLite")
    page.locator(f"{WIDGET} mark.nl-span").first.click()
    page.locator(".nl-menu button[data-action=remove]").click()
    wait_for(lambda: projects.sentence_spans(_db(app_home), sid) == [], what="the removal in SQLite")
    # Undo (Ctrl+Z) brings it back.
    page.keyboard.press("Control+z")
    wait_for(lambda: [s.label for s in projects.sentence_spans(_db(app_home), sid)] == ["Disease"],
              what="the undo in SQLite")


def test_keyboard_alone_labels_three_sentences(browser_page, app_server, app_home):
    page = browser_page
    ids = _unlabelled_ids(app_home)[5:8]
    _open(page, app_server, ids[0])
    # Typed without waiting for the page: keys pressed while the next sentence loads are kept
    # and replayed on it.
    for _ in ids:
        page.keyboard.press("ArrowRight")  # cursor on the first word
        page.keyboard.press("Shift+ArrowRight")  # ... and the second
        page.keyboard.press("2")  # Disease
        page.keyboard.press("Enter")  # done: save and open the next sentence
    wait_for(lambda: page.locator(".nl-root").get_attribute("data-sentence") not in {str(i) for i in ids},
              what="the fourth sentence")
    db = _db(app_home)
    for sid in ids:
        row = projects.get_sentence(db, sid)
        assert row["status"] == "labelled", row
        spans = projects.sentence_spans(db, sid)
        first, second = tokenize(row["text"])[:2]
        assert spans == [Span(first[0], second[1], "Disease")], (row["text"], spans)


def test_keyboard_changes_type_resizes_removes_and_undoes(browser_page, app_server, app_home):
    page = browser_page
    sid = _unlabelled_ids(app_home)[12]
    _open(page, app_server, sid)
    toks = tokenize(projects.get_sentence(_db(app_home), sid)["text"])

    def saved() -> list[Span]:
        return projects.sentence_spans(_db(app_home), sid)

    def expect(spans: list[Span], what: str) -> None:
        wait_for(lambda: saved() == spans, what=what)

    for key in ("ArrowRight", "Shift+ArrowRight", "1"):
        page.keyboard.press(key)
    expect([Span(toks[0][0], toks[1][1], "Chemical")], "a two-word Chemical span")
    page.keyboard.press("ArrowLeft")  # one word inside the span: its key changes the type
    page.keyboard.press("2")
    expect([Span(toks[0][0], toks[1][1], "Disease")], "the type change")
    for key in ("Shift+ArrowRight", "Shift+ArrowRight", "2"):  # reselect three words: resize
        page.keyboard.press(key)
    expect([Span(toks[0][0], toks[2][1], "Disease")], "the resized span")
    page.keyboard.press("Delete")
    expect([], "the removal")
    page.keyboard.press("Control+z")
    expect([Span(toks[0][0], toks[2][1], "Disease")], "the undo")
    assert page.locator(f"{WIDGET} mark.nl-span").first.get_attribute("data-label") == "Disease"


def test_the_span_menu_stays_open_when_the_server_redraws_the_sentence(browser_page, app_server,
                                                                      app_home):
    """An answer from the server (a save, another tab's change) redraws the sentence; the menu of
    the span the user just clicked must not vanish under the mouse."""
    page = browser_page
    sid = _unlabelled_ids(app_home)[20]
    _open(page, app_server, sid)
    toks = tokenize(projects.get_sentence(_db(app_home), sid)["text"])
    page.keyboard.press("ArrowRight")
    page.keyboard.press("1")
    first = [Span(toks[0][0], toks[0][1], "Chemical")]
    wait_for(lambda: projects.sentence_spans(_db(app_home), sid) == first, what="the span in SQLite")
    page.locator(f"{WIDGET} mark.nl-span").first.click()
    menu = page.locator(".nl-menu")
    wait_for(menu.is_visible, what="the span's menu")
    # Another tab (of the annotator this tab is about to be named) adds a span to the same
    # sentence; this tab's next script run draws it.
    db = _db(app_home)
    projects.save_annotation(db, sid, [*first, Span(toks[-2][0], toks[-2][1], "Disease")],
                             "menu-tester", expected_version=0, status="unlabelled")
    page.get_by_label("Your name", exact=True).fill("menu-tester")
    page.get_by_label("Your name", exact=True).press("Enter")
    wait_for(lambda: page.locator(f"{WIDGET} mark.nl-span").count() == 2, what="the redraw")
    assert menu.is_visible()
    assert page.locator(f"{WIDGET} mark.nl-span.picked").count() == 1
    page.locator(".nl-menu button[data-label=Disease]").click()
    wait_for(lambda: [s.label for s in projects.sentence_spans(_db(app_home), sid)] == ["Disease", "Disease"],
              what="the type change in SQLite")


def test_offsets_after_an_emoji_are_python_offsets(browser_page, app_server, app_home):
    """JavaScript counts UTF-16 units; what is saved must be Python's code-point offsets."""
    db = _db(app_home)
    pid = projects.get_project(db, "BC5CDR demo")["id"]
    text = "😀 🧪 Aspirin eased the 頭痛 ."
    projects.add_sentences(db, pid, [projects.SentenceRecord(text, labelled=False)])
    sid = db.execute("SELECT id FROM sentences WHERE text = ?", [text]).fetchone()[0]
    page = browser_page
    _open(page, app_server, sid)
    words = [t for t in tokenize(text)]
    aspirin = next(i for i, (s, e) in enumerate(words) if text[s:e] == "Aspirin")
    page.keyboard.press("ArrowRight")
    for _ in range(aspirin):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("1")
    start = text.index("Aspirin")
    wait_for(lambda: projects.sentence_spans(_db(app_home), sid) == [Span(start, start + 7, "Chemical")],
              what="the span at Python offsets")
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(f"{WIDGET} mark.nl-span", timeout=60_000)
    assert page.locator(f"{WIDGET} mark.nl-span").first.inner_text().startswith("Aspirin")


def test_two_tabs_do_not_overwrite_each_other(browser_page, app_server, app_home):
    page_a = browser_page
    page_b = page_a.context.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        sid = _unlabelled_ids(app_home)[10]
        _open(page_a, app_server, sid)
        _open(page_b, app_server, sid)
        page_a.keyboard.press("ArrowRight")
        page_a.keyboard.press("1")
        wait_for(lambda: projects.sentence_spans(_db(app_home), sid), what="tab A's save")
        saved = projects.sentence_spans(_db(app_home), sid)
        # Tab B still shows the old version and labels another word: refused, with a message,
        # and tab B then shows tab A's version.
        page_b.keyboard.press("End")
        page_b.keyboard.press("Shift+ArrowLeft")
        page_b.keyboard.press("2")
        page_b.get_by_text("Not saved: sentence").wait_for(timeout=60_000)
        assert projects.sentence_spans(_db(app_home), sid) == saved
        marks = page_b.locator(f"{WIDGET} mark.nl-span")
        wait_for(lambda: [m.get_attribute("data-label") for m in marks.all()] == ["Chemical"],
                  what="tab A's version in tab B")
    finally:
        page_b.context.close()


def test_data_page_upload_and_download(browser_page, app_server, app_home):
    page = browser_page
    page.goto(f"{app_server}/Data", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Import").click()
    # New sentences on every attempt: a retried attempt must not find them already imported.
    first = f"Cisplatin caused nephrotoxicity in rat {uuid.uuid4().hex[:8]} ."
    page.locator('input[type="file"]').set_input_files(
        files=[{"name": "more.txt", "mimeType": "text/plain",
                "buffer": f"{first}\nNo new words here at all {uuid.uuid4().hex[:8]} .\n".encode()}]
    )
    page.get_by_text("more.txt: read as").wait_for(timeout=60_000)
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("more.txt: 2 sentence(s) added.").wait_for(timeout=60_000)
    row = _db(app_home).execute(
        "SELECT status, split, source FROM sentences WHERE text = ?", [first]
    ).fetchone()
    assert tuple(row) == ("unlabelled", "train", "more.txt")

    page.get_by_role("tab", name="Export").click()
    page.get_by_text("sentence(s) will be exported").wait_for(timeout=60_000)
    with page.expect_download(timeout=90_000) as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    assert download.suggested_filename == "BC5CDR_demo.conll"
    content = Path(download.path()).read_text(encoding="utf-8")
    db = _db(app_home)
    labelled = db.execute("SELECT COUNT(*) FROM sentences WHERE status = 'labelled'").fetchone()[0]
    assert len([b for b in content.split("\n\n") if b.strip()]) == labelled


def test_after_a_search_the_hotkeys_label_again(browser_page, app_server, app_home):
    """Enter in "Search text" filters the queue; the next keys go to the sentence, not the box."""
    page = browser_page
    db = _db(app_home)
    sid = _unlabelled_ids(app_home)[20]
    word = max((projects.get_sentence(db, sid)["text"][s:e] for s, e in tokenize(
        projects.get_sentence(db, sid)["text"])), key=len)
    _open(page, app_server, sid)
    box = page.get_by_label("Search text")
    box.fill(word)
    box.press("Enter")
    wait_for(lambda: page.locator(".nl-root").get_attribute("data-sentence") is not None
              and word in page.locator(WIDGET).inner_text(), what="the searched sentence")
    time.sleep(1.0)
    shown = int(page.locator(".nl-root").get_attribute("data-sentence"))
    for key in ("ArrowRight", "2"):
        page.keyboard.press(key)
    assert box.input_value() == word  # nothing typed into the box
    wait_for(lambda: projects.sentence_spans(_db(app_home), shown), what="a span from the hotkey")
