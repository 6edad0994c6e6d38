"""The newcomer's path, end to end, in a real Chromium: from the README's command to scores.

The app is started exactly as the README says (``bash run.sh app``) on a fresh data directory.
The test then opens the demo project, labels two sentences with the widget, looks at the template
preview, starts a short training run of the bundled model, watches it to the end, reads the
per-class scores on the Evaluate page, starts a CRF baseline, and compares the two runs.

Screenshots of every page go to ``$NERLAB_SCREENSHOTS`` when it is set (the README's images are
made with ``NERLAB_SCREENSHOTS=docs/screenshots``), otherwise to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.data import projects
from core.data.db import get_db

ROOT = Path(__file__).resolve().parents[2]


def _browser_fixtures():
    """The browser tests' conftest module (port and start-up helpers), as pytest loaded it."""
    import sys

    here = str(Path(__file__).with_name("conftest.py"))
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == here)


pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Generous bounds for a shared 2-core CI machine; a run of this size takes about a minute.
TRAIN_TIMEOUT_S = 600
BASELINE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def readme_app(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``bash run.sh app`` on a free port with a fresh NERLAB_HOME; yields (url, home)."""
    home = tmp_path_factory.mktemp("newcomer-home")
    helpers = _browser_fixtures()
    port = helpers._free_port()
    env = {**os.environ, "NERLAB_HOME": str(home), "PORT": str(port)}
    env.pop("NERLAB_NO_DEMO", None)
    log = home / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "run.sh", "app"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        helpers._wait_until_up(url, proc, log)
        yield url, home
    finally:
        helpers._stop(proc)
        _kill_workers(home)


def _kill_workers(home: Path) -> None:
    """Runs outlive the app by design (a closed browser does not stop training): end ours."""
    import signal

    for row in _run_rows(home):
        if row["status"] in ("queued", "running") and row["pid"]:
            try:
                os.killpg(row["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    target = os.environ.get("NERLAB_SCREENSHOTS")
    path = (ROOT / target) if target and not os.path.isabs(target) else Path(target or tmp_path_factory.mktemp("shots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shot(page, folder: Path, name: str) -> None:
    page.wait_for_timeout(600)  # let charts finish their transitions
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


def _wait_text(page, pattern: str, timeout_s: float) -> None:
    page.get_by_text(re.compile(pattern)).first.wait_for(timeout=timeout_s * 1000)


def _run_rows(home: Path) -> list[dict]:
    return [dict(r) for r in get_db(home / "nerlab.db").query("SELECT * FROM runs ORDER BY id")]


def _wait_run(home: Path, kind: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [r for r in _run_rows(home) if r["kind"] == kind]
        if rows and rows[-1]["status"] in ("finished", "failed", "stopped"):
            return rows[-1]
        time.sleep(2)
    raise AssertionError(f"the {kind} run did not end in {timeout_s} s: {_run_rows(home)}")


def _fill_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_from_nothing_to_per_class_scores(browser_page, readme_app, shots_dir):
    page = browser_page
    url, home = readme_app
    db = get_db(home / "nerlab.db")

    # 1. Home: the demo project is open and the page says what to do next.
    page.goto(url, wait_until="domcontentloaded")
    _wait_text(page, r"Next: Label", 90)
    assert page.get_by_text("BC5CDR demo").first.is_visible()
    _shot(page, shots_dir, "1-home")

    # 2. Label two sentences with the keyboard in the widget.
    demo = projects.get_project(db, "BC5CDR demo")
    before = projects.stats(db, demo["id"])["labelled"]
    page.goto(f"{url}/Label", wait_until="domcontentloaded")
    page.wait_for_selector(".nl-text .nl-tok", timeout=60_000)
    for keys in (["ArrowRight", "1"], ["ArrowRight", "Shift+ArrowRight", "2"]):
        first = page.locator(".nl-root").get_attribute("data-sentence")
        for key in keys:
            page.keyboard.press(key)
        page.wait_for_selector(".nl-text mark.nl-span", timeout=30_000)
        if keys[-1] == "2":
            _shot(page, shots_dir, "2-label")
        page.keyboard.press("Enter")  # done: saved, and the next sentence opens
        deadline = time.monotonic() + 30
        while page.locator(".nl-root").get_attribute("data-sentence") == first:
            assert time.monotonic() < deadline, "the next sentence did not open"
            page.wait_for_timeout(200)
    deadline = time.monotonic() + 30
    while projects.stats(get_db(home / "nerlab.db"), demo["id"])["labelled"] < before + 2:
        assert time.monotonic() < deadline, "the two labels did not reach the database"
        time.sleep(0.5)

    # 3. The template page shows the exact prompt the model gets.
    page.goto(f"{url}/Template", wait_until="domcontentloaded")
    _wait_text(page, r"<\|im_start\|>", 90)
    _shot(page, shots_dir, "3-template")

    # 4. Start a short training run of the bundled model and watch it finish.
    page.goto(f"{url}/Train", wait_until="domcontentloaded")
    page.get_by_role("button", name="Start training").wait_for(timeout=90_000)
    _fill_number(page, "Max steps (0 = epochs)", 4)
    _fill_number(page, "Max sentences per split to score (0 = all)", 6)
    _fill_number(page, "Dev sentences for the dev loss", 8)
    _shot(page, shots_dir, "4-train-settings")
    page.get_by_role("button", name="Start training").click()
    _wait_text(page, r"Run #\d+ (started|is queued)", 60)
    page.get_by_role("tab", name=re.compile(r"Runs")).click()
    _wait_text(page, r"Phase \d+ of \d+|Loading the model", 120)
    _shot(page, shots_dir, "5-train-running")
    run = _wait_run(home, "train", TRAIN_TIMEOUT_S)
    assert run["status"] == "finished", (run["error_kind"], run["error_message"], run["log_tail"])
    page.get_by_role("tab", name=re.compile(r"Runs")).click()
    _wait_text(page, r"· finished", 60)
    _shot(page, shots_dir, "6-train-finished")

    # 5. Evaluate: the per-class table of the fine-tuned run.
    page.goto(f"{url}/Evaluate?run={run['id']}", wait_until="domcontentloaded")
    _wait_text(page, r"Per entity type", 90)
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for(timeout=30_000)
    for name in ("Chemical", "Disease"):
        assert page.get_by_text(name).count() > 0
    stored = get_db(home / "nerlab.db").execute(
        "SELECT COUNT(*) FROM evaluations WHERE run_id = ?", [run["id"]]
    ).fetchone()[0]
    assert stored >= 1
    _shot(page, shots_dir, "7-evaluate")

    # 6. A CRF baseline started like any other run, then Compare with the fine-tuned run.
    page.get_by_text("Start a baseline run").click()
    page.get_by_role("button", name="Start baseline").wait_for(timeout=30_000)
    page.get_by_label("Kind", exact=True).click()
    page.get_by_role("option", name="CRF (word features)").click()
    page.get_by_role("button", name="Start baseline").click()
    _wait_text(page, r"Run #\d+ \(crf\)", 60)
    baseline = _wait_run(home, "crf", BASELINE_TIMEOUT_S)
    assert baseline["status"] == "finished", (baseline["error_message"], baseline["log_tail"])

    page.goto(f"{url}/Compare", wait_until="domcontentloaded")
    _wait_text(page, r"Scores", 90)
    assert page.get_by_text(re.compile(rf"#{run['id']}")).count() > 0
    assert page.get_by_text(re.compile(rf"#{baseline['id']}")).count() > 0
    _shot(page, shots_dir, "8-compare")
