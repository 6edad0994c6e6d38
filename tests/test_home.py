"""The home page and the project overview it draws from."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.data import overview, projects

ROOT = Path(__file__).resolve().parent.parent


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_steps_follow_the_project_state(db):
    p = projects.create_project(db, "empty")
    steps = overview.steps(db, p["id"])
    assert [s.key for s in steps] == ["data", "label", "splits", "template", "train", "evaluate"]
    assert overview.next_step(steps).key == "data"
    assert "Import a CoNLL" in overview.next_step(steps).action


def test_demo_needs_labelling_then_best_run_shows(demo, db):
    steps = {s.key: s for s in overview.steps(db, demo["id"])}
    assert steps["data"].done and not steps["label"].done
    assert "40 sentences are waiting" in steps["label"].action
    assert overview.best_run(db, demo["id"]) is None
    run_id = db["runs"].insert(
        {"project_id": demo["id"], "kind": "crf", "name": "CRF", "status": "finished", "created_at": "t"}
    ).last_pk
    db["evaluations"].insert({
        "run_id": run_id, "split": "test", "mode": "default", "created_at": "t",
        "metrics": json.dumps({"micro": {"f1": 0.61}, "macro": {"f1": 0.58}}),
    })
    best = overview.best_run(db, demo["id"])
    assert (best["id"], best["micro_f1"]) == (run_id, 0.61)
    assert "micro-F1 0.610" in {s.key: s for s in overview.steps(db, demo["id"])}["evaluate"].detail


def test_home_page_renders_the_demo_and_creates_a_project(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.metric[0].value == "547"  # the demo project's sentences
    assert any("Next: Label" in m.value for m in at.info)
    at.text_input(key="home_new_name").set_value("Contracts")
    at.text_input(key="home_new_labels").set_value("PARTY, DATE")
    _button(at, "Create project").click().run()
    assert not at.exception
    assert at.session_state["project_id"] != 1
    assert any("Next: Import sentences" in m.value for m in at.info)


def test_home_page_says_what_is_wrong(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.text_input(key="home_new_name").set_value("BC5CDR demo")
    _button(at, "Create project").click().run()
    assert any("already exists" in e.value for e in at.error)


def test_open_project_and_name_hold_on_every_page(home):
    """Widget state is dropped on a page switch; the shell keeps both under its own keys."""
    from core.ui import PAGES

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.text_input(key="home_new_name").set_value("Contracts")
    at.text_input(key="home_new_labels").set_value("PARTY, DATE")
    _button(at, "Create project").click().run()
    new = at.session_state["project_id"]
    at.sidebar.text_input(key="shell_name").set_value("alice").run()
    for path, _title, _icon in (*PAGES, *reversed(PAGES)):
        at.switch_page(path).run()
        assert not at.exception, (path, at.exception)
        assert at.session_state["project_id"] == new, path
        assert at.sidebar.selectbox(key="shell_project").value == new, path
        assert at.sidebar.text_input(key="shell_name").value == "alice", path
    assert at.query_params["project"] in ([str(new)], str(new))


def test_rename_and_delete_the_open_project(home):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.text_input(key="home_new_name").set_value("Scratch")
    at.text_input(key="home_new_labels").set_value("A")
    _button(at, "Create project").click().run()
    at.text_input(key="home_rename_name").set_value("Scratch 2")
    _button(at, "Rename").click().run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="shell_project").format_func(at.session_state["project_id"]) == "Scratch 2"
    at.button(key="home_delete").click().run()
    assert any("0 sentence(s)" in w.value for w in at.warning)
    at.button(key="home_delete_yes").click().run()
    assert not at.exception, at.exception
    from core.data import projects
    from core.data.db import get_db

    assert projects.list_project_names(get_db()) == ["BC5CDR demo"]
    assert at.metric[0].value == "547"  # the demo is open again
