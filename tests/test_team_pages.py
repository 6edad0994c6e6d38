"""Teams in the app (AppTest): the sign-in gate, roles, the first admin, the team panel, and the
Review page turning a disagreement into gold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import annotations, projects, review, users
from core.data.db import get_db
from core.data.records import SentenceRecord
from core.data.spans import Span

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PASSWORD = "a long enough password"


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="auth_name").set_value(name)
    at.text_input(key="auth_password").set_value(password)
    return _button(at, "Sign in").click().run()


def _everything_shown(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("markdown", "caption", "info", "error", "title",
                                              "success", "warning")
                    for e in getattr(at, kind))


@pytest.fixture
def team_db(home):
    db = get_db()
    users.add_user(db, "alice", PASSWORD, "admin")
    users.add_user(db, "bob", PASSWORD, "annotator")
    return db


def test_signed_out_sees_only_the_sign_in_form(team_db):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["🏷️ NERLab"] and not at.metric
    assert {b.label for b in at.button} == {"Sign in"}
    assert "BC5CDR" not in _everything_shown(at) and not at.sidebar.selectbox
    # A page opened on its own (as a URL would) shows the same form and no data.
    for page in ("views/1_Data.py", "views/2_Label.py", "views/7_Review.py"):
        p = AppTest.from_file(str(ROOT / page), default_timeout=60).run()
        assert not p.exception
        assert {b.label for b in p.button} == {"Sign in"}, page
        assert not p.dataframe and not p.get("bidi_component")


def test_a_wrong_password_says_so_without_saying_which_part(team_db):
    at = AppTest.from_file(APP, default_timeout=60).run()
    _sign_in(at, "alice", "not the password")
    assert [e.value for e in at.error] == ["Wrong name or password."]
    _sign_in(at, "nobody", PASSWORD)
    assert [e.value for e in at.error] == ["Wrong name or password."]
    assert not at.metric


def test_signed_in_user_is_the_annotator_and_the_role_decides_the_pages(team_db):
    at = AppTest.from_file(APP, default_timeout=60).run()
    _sign_in(at, "Bob", PASSWORD)
    assert not at.exception and at.metric[0].value == "547"
    assert at.session_state["annotator"] == "bob"
    assert not [w for w in at.sidebar.text_input if w.label == "Your name"]
    assert any("Signed in as **bob** · annotator" in m.value for m in at.sidebar.markdown)
    assert "An admin creates, renames and deletes projects." in _everything_shown(at)
    at.switch_page("views/2_Label.py").run()
    assert not at.exception and at.get("bidi_component")
    # The Data page is not registered for an annotator; opened on its own it says why.
    data = AppTest.from_file(str(ROOT / "views/1_Data.py"), default_timeout=60)
    data.session_state["auth_token"] = at.session_state["auth_token"]
    data.run()
    assert any("does not open the Data page" in e.value for e in data.error)
    # Signing out ends the session for good.
    token = at.session_state["auth_token"]
    at = AppTest.from_file(APP, default_timeout=60)  # the home page, in the same session
    at.session_state["auth_token"] = token
    at.run()
    _button(at, "Sign out").click().run()
    assert {b.label for b in at.button} == {"Sign in"}
    assert users.session_user(team_db, token) is None


def test_first_launch_offers_to_create_the_admin(home):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and at.metric  # no users, localhost: open as before
    at.text_input(key="home_first_admin_name").set_value("root")
    at.text_input(key="home_first_admin_password").set_value(PASSWORD)
    at.text_input(key="home_first_admin_again").set_value(PASSWORD)
    _button(at, "Create admin and sign in").click().run()
    assert not at.exception
    assert at.session_state["annotator"] == "root"
    assert users.get_user(get_db(), "root")["role"] == "admin"
    assert any("Users (admin)" in e.label for e in at.expander)
    # Another browser (a fresh session) must now sign in.
    other = AppTest.from_file(APP, default_timeout=60).run()
    assert {b.label for b in other.button} == {"Sign in"}


def test_admin_chooses_how_sentences_are_shared_out(team_db):
    at = AppTest.from_file(APP, default_timeout=60).run()
    _sign_in(at, "alice", PASSWORD)
    at.radio(key="team_share_choice").set_value("n")
    at.number_input(key="team_share_n").set_value(3)
    _button(at, "Save").click().run()
    assert not at.exception
    demo = projects.get_project(team_db, "BC5CDR demo")
    assert annotations.share(team_db, demo["id"]) == 3


def _disputed_project(db) -> tuple[int, int]:
    p = projects.create_project(db, "Disputed", labels=["Drug", "Disease"])
    projects.add_sentences(db, p["id"], [SentenceRecord("Lithium caused tremor .", labelled=False)])
    sid = db.execute("SELECT id FROM sentences WHERE project_id = ?", [p["id"]]).fetchone()[0]
    annotations.set_share(db, p["id"], annotations.EVERYONE)
    projects.save_annotation(db, sid, [Span(0, 7, "Drug"), Span(15, 21, "Disease")], "alice")
    projects.save_annotation(db, sid, [Span(0, 7, "Drug")], "bob")
    return p["id"], sid


def test_review_page_turns_a_disagreement_into_gold(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    db = get_db()
    pid, sid = _disputed_project(db)
    at = AppTest.from_file(str(ROOT / "views/7_Review.py"), default_timeout=60)
    at.session_state["project_id"] = pid
    at.session_state["annotator"] = "rita"
    at.run()
    assert not at.exception
    shown = _everything_shown(at)
    assert "alice" in shown and "bob" in shown and "tremor" in shown
    assert projects.get_sentence(db, sid)["status"] == "unlabelled"  # disputed: no gold yet
    accepts = [b for b in at.button if b.label == "Accept this version"]
    assert len(accepts) == 2
    accepts[0].click().run()  # alice's
    assert not at.exception
    assert any("Saved alice's version as gold (reviewed by rita)" in s.value for s in at.success)
    row = projects.get_sentence(db, sid)
    assert (row["status"], row["gold_source"], row["reviewed_by"]) == ("labelled", "review", "rita")
    assert projects.sentence_spans(db, sid) == [Span(0, 7, "Drug"), Span(15, 21, "Disease")]
    assert review.disputed(db, pid) == []


def test_review_page_saves_a_merged_version(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    db = get_db()
    pid, sid = _disputed_project(db)
    at = AppTest.from_file(str(ROOT / "views/7_Review.py"), default_timeout=60)
    at.session_state["project_id"] = pid
    at.session_state["annotator"] = "rita"
    at.run()
    data = json.loads(at.get("bidi_component")[0].proto.json)
    assert data["spans"] == [{"start": 0, "end": 7, "label": "Drug"}]  # what both marked
    _button(at, "Save merged as gold").click().run()
    assert not at.exception
    assert projects.sentence_spans(db, sid) == [Span(0, 7, "Drug")]
    assert review.history(db, sid)[0]["choice"] == "merged"


def test_team_panel_shows_agreement(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    db = get_db()
    pid, _sid = _disputed_project(db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["project_id"] = pid
    at.run()
    assert not at.exception
    assert any("1 to review" in e.label for e in at.expander)
    pairs = next(d.value for d in at.dataframe if "Annotators" in d.value.columns)
    assert list(pairs["Annotators"]) == ["alice – bob", "all pairs – (micro)"]
    assert list(pairs["F1 exact"])[0] == "0.667"


def test_label_page_shows_each_annotator_their_own_work(home, monkeypatch):
    monkeypatch.setenv("NERLAB_NO_DEMO", "1")
    db = get_db()
    p = projects.create_project(db, "Blind", labels=["Drug", "Disease"])
    projects.add_sentences(db, p["id"], [SentenceRecord("Lithium caused tremor .", labelled=False),
                                         SentenceRecord("Aspirin helps .", labelled=False)])
    sid = db.execute("SELECT id FROM sentences ORDER BY position").fetchone()[0]
    annotations.set_share(db, p["id"], annotations.EVERYONE)
    projects.save_annotation(db, sid, [Span(0, 7, "Drug")], "alice")

    def label_page(who: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "views/2_Label.py"), default_timeout=60)
        at.session_state["project_id"] = p["id"]
        at.session_state["annotator"] = who
        at.query_params["sentence"] = str(sid)
        return at.run()

    alice = label_page("alice")
    assert json.loads(alice.get("bidi_component")[0].proto.json)["spans"] == [
        {"start": 0, "end": 7, "label": "Drug"}]
    assert any("have labelled 1; 1 wait in your queue" in c.value for c in alice.caption)
    bob = label_page("bob")
    data = json.loads(bob.get("bidi_component")[0].proto.json)
    assert data["spans"] == [] and data["status"] == "unlabelled"  # Alice's labels stay hers
    assert any("have labelled 0; 2 wait in your queue" in c.value for c in bob.caption)
    _button(bob, "✓ Accept and next").click().run()
    assert not bob.exception
    kept = {a["annotator"]: (a["status"], a["spans"]) for a in annotations.of_sentence(db, sid)}
    assert kept == {"alice": ("labelled", [Span(0, 7, "Drug")]), "bob": ("labelled", [])}
    assert projects.get_sentence(db, sid)["gold_source"] == "disputed"


def test_open_to_the_network_sign_in_is_required_even_without_users(home):
    from streamlit import config as st_config

    old = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        assert not at.exception and not at.metric
        assert "has no users yet" in _everything_shown(at)
        assert {b.label for b in at.button} == {"Create admin and sign in"}  # asked from localhost
    finally:
        st_config.set_option("server.address", old)


def test_single_sign_on_offers_the_identity_provider(home):
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {"client_id": "x", "client_secret": "y", "redirect_uri": "http://h/cb",
                          "cookie_secret": "z", "server_metadata_url": "http://h/.well-known"}
    at.run()
    assert not at.exception and not at.metric
    assert {b.label for b in at.button} == {"Sign in with your organisation's account",
                                            "Create admin and sign in"}
    # Whoever the provider vouches for is an annotator unless an admin gave them a role.
    db = get_db()
    users.add_user(db, "ana@example.org", None, "admin")
    assert users.single_sign_on_user(db, "ana@example.org")["role"] == "admin"
    assert users.single_sign_on_user(db, "ben@example.org")["role"] == "annotator"
    assert not users.get_user(db, "ben@example.org")["has_password"]
