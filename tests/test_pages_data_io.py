"""AppTest of the Data page's Import, Export and Splits tabs (by widget key): the formats read
from the content, the import report in full, messages instead of tracebacks, and splits that
leave test and hand-placed sentences alone."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.data import projects

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
PAGE = str(ROOT / "views/1_Data.py")


def _run() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _db():
    from core.data.db import get_db

    return get_db()


def _pid(db) -> int:
    return projects.get_project(db, "BC5CDR demo")["id"]


def _paste_and_import(at: AppTest, text: str, update: bool = False) -> AppTest:
    at.text_area(key="data_import_paste").set_value(text).run()
    if update:
        at.checkbox(key="data_import_update").check().run()
    at.button(key="data_import").click().run()
    assert not at.exception, at.exception
    return at


def test_import_reads_the_format_and_shows_the_whole_report(home):
    at = _run()
    at.text_area(key="data_import_paste").set_value((DATA / "doccano.jsonl").read_text()).run()
    assert any("read as **doccano**" in c.value for c in at.caption)
    at.button(key="data_import").click().run()
    assert any("3 sentence(s) added" in s.value and "(read as doccano)" in s.value for s in at.success)
    _paste_and_import(at, (DATA / "duplicates.jsonl").read_text())
    warning = " ".join(w.value for w in at.warning)
    assert "carry labels that differ from the copy kept" in warning
    assert "line 3 differs from sentence 551 (line 1 of this file)" in warning
    assert "line 5 differs from sentence 552 (line 4 of this file)" in warning


def test_import_update_says_what_changed(home):
    at = _run()
    _paste_and_import(at, (DATA / "doccano.jsonl").read_text())
    fixed = (DATA / "doccano.jsonl").read_text().replace('[15, 29, "Disease"]', '[23, 29, "Disease"]')
    _paste_and_import(at, fixed, update=True)
    assert any("1 sentence(s) updated (1 span(s) added, 1 removed)" in s.value for s in at.success)
    assert any("Updated sentence(s) 548." in w.value for w in at.warning)


def test_hostile_files_give_a_message_never_a_traceback(home):
    """Before: "meta": "x" and deep nesting raised AttributeError / RecursionError on the page."""
    at = _run()
    before = projects.stats(_db(), _pid(_db()))["sentences"]
    for text, message in [
        ('{"text": "Aspirin.", "meta": "x"}', '"meta" must be an object'),
        ('{"text": "Aspirin.", "entities": 5, "label": []}', '"entities" must be a list'),
        ('[{"data": {"text": "Aspirin."}, "annotations": "x"}]', '"annotations" must be a list'),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ]:
        _paste_and_import(at, text)
        errors = " ".join(e.value for e in at.error)
        assert message in errors and "pasted text" in errors, errors
    assert projects.stats(_db(), _pid(_db()))["sentences"] == before


def test_export_offers_every_format(home):
    at = _run()
    options = at.selectbox(key="data_export_format").options
    assert len(options) == 6
    at.selectbox(key="data_export_format").set_value("labelstudio").run()
    assert not at.exception
    assert at.selectbox(key="data_export_run").options == ["none"]
    assert any('<Text name="text" value="$text"/>' in c.value for c in at.code)
    at.selectbox(key="data_export_format").set_value("doccano").run()
    at.checkbox(key="data_export_unlabelled").check().run()
    assert any("547 sentence(s) will be exported" in c.value for c in at.caption)


def test_splits_tab_keeps_test_and_imported_dev(home):
    """Before: "Assign splits" reassigned every sentence, test ones included."""
    at = _run()
    db = _db()
    pid = _pid(db)
    test_ids = {r["id"] for r in db.query("SELECT id FROM sentences WHERE split = 'test'")}
    at.button(key="data_assign").click().run()
    assert any("Moved no sentence" in s.value for s in at.success)
    assert projects.split_counts(db, pid) == {"train": 340, "dev": 60, "test": 147}
    at.number_input(key="data_dev_share").set_value(0.1).run()
    at.button(key="data_assign").click().run()
    counts = projects.split_counts(db, pid)
    assert counts["test"] == 147 and counts["dev"] > 60
    assert {r["id"] for r in db.query("SELECT id FROM sentences WHERE split = 'test'")} == test_ids
    at.checkbox(key="data_reassign").check().run()
    at.number_input(key="data_test_share").set_value(0.2).run()
    at.button(key="data_assign").click().run()
    assert {r["id"] for r in db.query("SELECT id FROM sentences WHERE split = 'test'")} != test_ids
