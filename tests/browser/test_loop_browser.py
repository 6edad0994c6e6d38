"""Suggestions in a real browser: a CRF run pre-labels the queue (``nerlab suggest``), the Label
page draws its spans dashed, one is removed with the mouse, Enter stores the rest as gold with the
annotator's name, and the removed one is not stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_for

from core.data import projects
from core.data.db import get_db

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
WIDGET = ".nl-text"
DEMO = "BC5CDR demo"


def _nerlab(home: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "core.cli.main", *args], cwd=ROOT,
                          env={**os.environ, "NERLAB_HOME": str(home)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture(scope="module")
def suggested(app_server, app_home: Path) -> dict:
    """The demo's queue pre-labelled by a finished CRF run; the first sentence with two or more
    suggested spans."""
    _nerlab(app_home, "baseline", DEMO, "--kind", "crf", "--run-name", "crf-suggest", "--wait")
    _nerlab(app_home, "suggest", DEMO, "--run", "crf-suggest", "--wait")
    db = get_db(app_home / "nerlab.db")
    pid = projects.get_project(db, DEMO)["id"]
    rows = db.execute(
        "SELECT s.id, sp.start, sp.\"end\", l.name FROM sentences s"
        " JOIN suggestions g ON g.sentence_id = s.id"
        " JOIN spans sp ON sp.sentence_id = s.id AND sp.origin = 'suggested'"
        " JOIN labels l ON l.id = sp.label_id"
        " WHERE s.project_id = ? AND s.status = 'unlabelled' ORDER BY s.position, sp.start",
        [pid]).fetchall()
    assert rows, "nerlab suggest stored no suggestions"
    by_sentence: dict[int, list[dict]] = {}
    for sid, start, end, label in rows:
        by_sentence.setdefault(sid, []).append({"start": start, "end": end, "label": label})
    for sid, spans in by_sentence.items():
        if len(spans) >= 2:
            return {"id": sid, "spans": spans}
    raise AssertionError("no sentence with two suggested spans")


def test_suggestions_are_drawn_dashed_and_enter_keeps_them_without_the_removed_one(
        browser_page, app_server, app_home, suggested):
    page = browser_page
    sid = suggested["id"]
    page.goto(f"{app_server}/Label?sentence={sid}", wait_until="domcontentloaded")
    page.get_by_label("Your name", exact=True).fill("suggest-tester")
    page.get_by_label("Your name", exact=True).press("Enter")
    time.sleep(1.0)  # the sidebar input's rerun
    marks = page.locator(f"{WIDGET} mark.nl-span.suggested")
    wait_for(lambda: marks.count() == len(suggested["spans"]), what="the dashed suggestions")
    assert page.locator(".nl-root").get_attribute("data-sentence") == str(sid)
    assert "dashed" in (marks.first.evaluate("m => getComputedStyle(m).borderStyle") or "")
    db = get_db(app_home / "nerlab.db")
    assert projects.sentence_spans(db, sid) == []  # suggestions are not gold until accepted

    # Remove the first suggestion with the mouse, then accept the sentence with Enter.
    first = marks.first
    removed = (int(first.get_attribute("data-start")), first.get_attribute("data-label"))
    first.click()
    page.locator(".nl-menu button[data-action=remove]").click()
    wait_for(lambda: marks.count() == len(suggested["spans"]) - 1, what="the removal")
    page.keyboard.press("Enter")
    row = wait_for(lambda: (r := projects.get_sentence(get_db(app_home / "nerlab.db"), sid))
                    and r["status"] == "labelled" and r, what="the accepted sentence in SQLite")
    assert row["annotator"] == "suggest-tester"
    stored = projects.sentence_spans(get_db(app_home / "nerlab.db"), sid)
    expected = [s for s in suggested["spans"] if (s["start"], s["label"]) != removed]
    assert [(s.start, s.end, s.label) for s in stored] == [
        (s["start"], s["end"], s["label"]) for s in expected]
