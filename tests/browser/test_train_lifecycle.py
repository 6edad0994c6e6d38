"""The Train page in a real Chromium while a run lives: a reload shows the active run and its
phase at once, Stop says "Stopping…" at once and the run ends "stopped" with its adapter, and a
run name written in Markdown shows as typed (the browser fetches nothing)."""

from __future__ import annotations

import re
import time

import pytest

from core.data.db import get_db
from core.data.runs import get_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NAME = "probe ![i](http://127.0.0.1:9/x.png) :red[r]"


def test_reload_shows_the_run_and_stop_answers_at_once(app_server, app_home, browser_page):
    page = browser_page
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(f"{app_server}/Train", wait_until="domcontentloaded")
    page.get_by_role("button", name="Start training").wait_for(timeout=90_000)
    box = page.get_by_label("Max steps (0 = epochs)", exact=True)
    box.fill("40")
    box.press("Tab")
    page.get_by_label("Run name (optional)").fill(NAME)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"Run #\d+ (started|is queued)")).first.wait_for(timeout=60_000)
    db = get_db(app_home / "nerlab.db")
    run_id = max(r["id"] for r in db.query("SELECT id FROM runs"))
    try:
        # Wait for training (a Stop while the model loads would end the run with nothing saved).
        deadline = time.monotonic() + 600
        while not db.execute("SELECT 1 FROM run_metrics WHERE run_id = ? AND loss IS NOT NULL",
                             [run_id]).fetchone():
            assert get_run(db, run_id)["status"] in ("queued", "running"), get_run(db, run_id)
            assert time.monotonic() < deadline, "no training step"
            time.sleep(1)
        # A reload: a new session opens on the Runs tab with the run's phase above the tabs.
        page.reload(wait_until="domcontentloaded")
        banner = page.get_by_text(re.compile(rf"Run #{run_id} .* is running · Train · \d+ / 40 steps"))
        banner.first.wait_for(timeout=60_000)
        heading = page.get_by_role("heading", name=re.compile(rf"Run #{run_id} · "))
        heading.wait_for(timeout=30_000)
        assert NAME in heading.inner_text()  # the name as typed, not rendered as Markdown
        assert page.get_by_role("tab", name="Runs").get_attribute("aria-selected") == "true"
        page.get_by_role("button", name="Stop this run").click()
        asked = time.monotonic()
        page.get_by_text("Stopping…").first.wait_for(timeout=10_000)
        shown_after = time.monotonic() - asked
        run = None
        while time.monotonic() - asked < 300:
            run = get_run(db, run_id)
            if run["status"] in ("finished", "failed", "stopped"):
                break
            time.sleep(0.5)
        assert run["status"] == "stopped", run
        page.get_by_role("heading", name=re.compile(rf"Run #{run_id} · .* · stopped")).wait_for(
            timeout=60_000)
        page.wait_for_timeout(3000)  # the page redraws once when the run has ended
        # ...and stays on the run the user was watching.
        assert page.get_by_role("tab", name="Runs").get_attribute("aria-selected") == "true"
        page.get_by_role("heading", name=re.compile(rf"Run #{run_id} · .* · stopped")).wait_for(
            timeout=30_000)
        assert (app_home / "runs" / str(run_id) / "adapter" / "adapter_model.safetensors").is_file()
        assert not [u for u in fetched if "127.0.0.1:9" in u]
        print(f"\n'Stopping…' shown {shown_after:.1f} s after the click; run stopped "
              f"{time.monotonic() - asked:.1f} s after it")
    finally:
        row = get_run(db, run_id)
        if row["status"] in ("queued", "running") and row["pid"]:
            import os
            import signal

            os.killpg(row["pid"], signal.SIGKILL)
