"""A user's own project, in a real browser: it stays open on every page, by the sidebar and by
the page links, and through a reload; the name typed in the sidebar is the one saved with labels.

This is the path on which a new user's imports and labels once went silently into the demo.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from waiting import wait_for

from core.data import projects
from core.data.db import get_db

pytestmark = pytest.mark.browser

PAGES = ("Data", "Label", "Template", "Train", "Evaluate", "Compare", "Home")


def _sidebar_project(page) -> str:
    return page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Project").input_value()


def _sidebar_name(page) -> str:
    return page.get_by_label("Your name", exact=True).input_value()


def _expect_open(page, project: str, name: str, where: str) -> None:
    wait_for(lambda: project in _sidebar_project(page), what=f"{project} open on {where}")
    assert _sidebar_name(page) == name, where


def test_own_project_holds_on_every_page_and_labels_carry_the_name(browser_page, app_server,
                                                                  app_home: Path):
    page = browser_page
    project = f"Contracts {uuid.uuid4().hex[:6]}"  # new on every attempt (reruns)
    page.goto(app_server, wait_until="domcontentloaded")
    page.get_by_text("Create a new project").click()
    page.get_by_label("Name", exact=True).fill(project)
    page.get_by_label("Entity types (comma-separated)").fill("PARTY, DATE")
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("heading", name=project).wait_for(timeout=60_000)
    wait_for(lambda: project in _sidebar_project(page), what="the new project in the sidebar")
    page.get_by_label("Your name", exact=True).fill("alice")
    page.get_by_label("Your name", exact=True).press("Enter")
    time.sleep(1.0)  # the sidebar input's rerun

    # The home page's own link, then every page through the sidebar.
    page.get_by_role("link", name="Go to Import sentences").click()
    page.get_by_role("heading", name="📥 Data").wait_for(timeout=60_000)
    _expect_open(page, project, "alice", "the Data page (home page link)")
    for title in PAGES:
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
        page.wait_for_url(f"**/{'' if title == 'Home' else title}?project=*", timeout=60_000)
        _expect_open(page, project, "alice", f"the {title} page (sidebar)")

    # Import two sentences into this project on the Data page.
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Data").click()
    page.get_by_role("tab", name="Import").click()
    page.locator('input[type="file"]').set_input_files(files=[{
        "name": "deal.txt", "mimeType": "text/plain",
        "buffer": b"Acme Corporation signed the lease on Monday .\nNothing happened here .\n"}])
    page.get_by_text("deal.txt: read as").wait_for(timeout=60_000)
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("deal.txt: 2 sentence(s) added.").wait_for(timeout=60_000)
    _expect_open(page, project, "alice", "the Data page after the import")

    # The home page's path links lead to the Label page of this project.
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Home").click()
    page.get_by_role("link", name="Open Label").first.click()
    page.wait_for_selector(".nl-text .nl-tok", timeout=60_000)
    _expect_open(page, project, "alice", "the Label page (path link)")
    assert "Acme Corporation" in page.locator(".nl-text").inner_text()

    word = page.locator(".nl-text .nl-tok", has_text="Acme").first
    box = word.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 2, y, steps=5)
    page.mouse.up()
    page.keyboard.press("1")  # PARTY's hotkey

    db_file = app_home / "nerlab.db"

    def saved():
        db = get_db(db_file)
        row = db.execute(
            "SELECT s.id, p.name, s.annotator FROM sentences s JOIN projects p ON p.id = s.project_id"
            " WHERE s.text LIKE 'Acme Corporation signed%'").fetchone()
        return row if row and projects.sentence_spans(db, row[0]) else None

    sid, in_project, annotator = wait_for(saved, what="the span in SQLite")
    db = get_db(db_file)
    spans = projects.sentence_spans(db, sid)
    text = projects.get_sentence(db, sid)["text"]
    assert (in_project, annotator) == (project, "alice")
    assert [(text[s.start:s.end], s.label) for s in spans] == [("Acme", "PARTY")]
    span_annotators = {r[0] for r in db.execute("SELECT annotator FROM spans WHERE sentence_id = ?", [sid])}
    assert span_annotators == {"alice"}
    demo_by_alice = db.execute(
        "SELECT COUNT(*) FROM sentences s JOIN projects p ON p.id = s.project_id"
        " WHERE p.name = 'BC5CDR demo' AND s.annotator = 'alice'").fetchone()[0]
    assert demo_by_alice == 0

    # A reload (a new session) keeps the project (in the URL) and the name (in a cookie).
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(".nl-text .nl-tok", timeout=60_000)
    _expect_open(page, project, "alice", "the Label page after a reload")


def test_a_page_opened_by_its_url_has_the_apps_sidebar(browser_page, app_server):
    """With the page files in ``pages/`` Streamlit listed them itself for a page opened by URL
    (an "app" entry, no Home, every page whatever the role); they live in ``views/`` now."""
    page = browser_page
    page.goto(f"{app_server}/Label", wait_until="domcontentloaded")
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_role("link", name="Home").wait_for(timeout=60_000)
    assert nav.get_by_role("link", name="app", exact=True).count() == 0
