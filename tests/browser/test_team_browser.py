"""Teams in a real Chromium against ``streamlit run``: the sign-in gate (nothing but the form for a
signed-out browser, whatever the URL), and two annotators labelling the same sentence in two
browsers, both annotations kept, then reviewed into gold."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from waiting import wait_for

from core.data import annotations, projects, users
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.data.spans import Span, tokenize

pytestmark = pytest.mark.browser

PASSWORD = "a long enough password"
WIDGET = ".nl-text"


@pytest.fixture(scope="module")
def app_home(tmp_path_factory) -> Path:
    """A data directory with two users (so sign-in is on) and the demo project shared out to
    everyone (each annotator labels each sentence on their own)."""
    home = tmp_path_factory.mktemp("nerlab-team")
    db = get_db(home / "nerlab.db")
    users.add_user(db, "alice", PASSWORD, "admin")
    users.add_user(db, "bob", PASSWORD, "annotator")
    demo = ensure_demo_project(db)
    annotations.set_share(db, demo["id"], annotations.EVERYONE)
    return home


def _db(home: Path):
    return get_db(home / "nerlab.db")


def _unlabelled(home: Path) -> list[dict]:
    return [dict(r) for r in _db(home).query(
        "SELECT s.id, s.text FROM sentences s JOIN projects p ON p.id = s.project_id"
        " WHERE p.name = 'BC5CDR demo' AND s.status = 'unlabelled' ORDER BY s.position")]


def _sign_in(page, base: str, name: str, password: str = PASSWORD) -> None:
    page.goto(base, wait_until="domcontentloaded")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    return context, context.new_page()


def test_signed_out_browser_sees_only_the_sign_in_form(browser_page, app_server, app_home):
    page = browser_page
    sentence = _unlabelled(app_home)[0]
    def nothing_but_the_form(where: str) -> None:
        page.get_by_role("button", name="Sign in").wait_for()
        time.sleep(1.0)  # let anything else that would come arrive
        body = page.locator("body").inner_text()
        assert sentence["text"][:40] not in body, where
        assert "BC5CDR" not in body, where
        for element in (WIDGET, '[data-testid="stMetric"]', '[data-testid="stDataFrame"]',
                        '[data-testid="stSelectbox"]'):
            assert page.locator(element).count() == 0, (where, element)

    for path in ("", f"/Label?sentence={sentence['id']}", "/Data", "/Review", "/Train"):
        page.goto(app_server + path, wait_until="domcontentloaded")
        nothing_but_the_form(path)
    # Streamlit may list the views/ folder's names in the sidebar for a URL of one of them (it
    # does so without sign-in too); following such a link still leads to the form alone.
    links = page.locator('[data-testid="stSidebarNavLink"]')
    for i in range(min(links.count(), 3)):
        name = links.nth(i).inner_text()
        links.nth(i).click()
        nothing_but_the_form(f"the sidebar link {name}")
    _sign_in(page, app_server, "alice", "not her password")
    page.get_by_text("Wrong name or password.").wait_for()
    _sign_in(page, app_server, "nobody", PASSWORD)
    page.get_by_text("Wrong name or password.").wait_for()
    assert page.locator('[data-testid="stMetric"]').count() == 0

    _sign_in(page, app_server, "alice")
    page.get_by_text("Signed in as").wait_for()
    page.locator('[data-testid="stMetric"]').first.wait_for()  # the home page's figures
    # The session cookie keeps a reload signed in ...
    wait_for(lambda: any(c["name"] == "nerlab_session" for c in page.context.cookies()),
              what="the session cookie")
    page.reload(wait_until="domcontentloaded")
    page.get_by_text("Signed in as").wait_for()
    # ... and the database holds no password and no session token in clear.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "nerlab_session")
    raw = b"".join(p.read_bytes() for p in app_home.glob("nerlab.db*"))
    assert PASSWORD.encode() not in raw and token.encode() not in raw
    # Signing out leaves only the form again.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.reload(wait_until="domcontentloaded")
    page.get_by_role("button", name="Sign in").wait_for()


def _label(page, base: str, sid: int, keys: list[str]) -> None:
    page.goto(f"{base}/Label?sentence={sid}", wait_until="domcontentloaded")
    page.wait_for_selector(f"{WIDGET} .nl-tok", timeout=60_000)
    wait_for(lambda: page.locator(".nl-root").get_attribute("data-sentence") == str(sid),
              what=f"sentence {sid} in the widget")
    for key in keys:
        page.keyboard.press(key)


def test_two_annotators_in_two_browsers_keep_both_annotations(_browser, app_server, app_home):
    sentence = _unlabelled(app_home)[3]
    sid = sentence["id"]
    toks = tokenize(sentence["text"])
    (ctx_a, alice), (ctx_b, bob) = _new_page(_browser), _new_page(_browser)
    try:
        _sign_in(alice, app_server, "alice")
        _sign_in(bob, app_server, "bob")
        alice.get_by_text("Signed in as").wait_for()
        bob.get_by_text("Signed in as").wait_for()
        # Both open the same sentence; each marks something else and accepts it.
        _label(alice, app_server, sid, ["ArrowRight", "1"])
        _label(bob, app_server, sid, ["ArrowRight", "ArrowRight", "2"])
        wait_for(lambda: len(annotations.of_sentence(_db(app_home), sid)) == 2,
                  what="both annotations in SQLite")

        def accepted(who: str) -> bool:
            mine = annotations.get(_db(app_home), sid, who)
            return bool(mine and mine["status"] == "labelled")

        alice.keyboard.press("Enter")
        wait_for(lambda: accepted("alice"), what="Alice's accept")
        bob.keyboard.press("Enter")
        wait_for(lambda: accepted("bob"), what="Bob's accept")
        found = {a["annotator"]: a["spans"] for a in annotations.of_sentence(_db(app_home), sid)}
        assert found == {"alice": [Span(*toks[0], "Chemical")], "bob": [Span(*toks[1], "Disease")]}
        row = projects.get_sentence(_db(app_home), sid)
        assert (row["status"], row["gold_source"]) == ("unlabelled", "disputed")

        # Bob (an annotator) has no Review page; Alice (an admin) reviews: Bob's version wins.
        assert bob.get_by_role("link", name="Review").count() == 0
        alice.goto(f"{app_server}/Review", wait_until="domcontentloaded")
        accept = alice.get_by_role("button", name="Accept this version")
        wait_for(lambda: accept.count() == 2, what="two versions side by side")
        accept.nth(1).click()  # oldest save first: Alice's, then Bob's
        wait_for(lambda: projects.get_sentence(_db(app_home), sid)["gold_source"] == "review",
                  what="the review in SQLite")
        row = projects.get_sentence(_db(app_home), sid)
        assert (row["status"], row["reviewed_by"]) == ("labelled", "alice")
        assert projects.sentence_spans(_db(app_home), sid) == [Span(*toks[1], "Disease")]
    finally:
        ctx_a.close()
        ctx_b.close()
