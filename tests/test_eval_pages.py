"""AppTest of the Evaluate and Compare pages on a database with real stored predictions
(two CRF baselines trained on the demo project, and their scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import projects
from core.data.db import now
from core.data.runs import create_run, get_run, list_runs
from core.evaluation import compare, run_scores, scoring
from core.jobs import launcher, worker
from core.prediction import baselines, tryout

ROOT = Path(__file__).resolve().parent.parent


def crf_run(db, project_id: int, name: str, cfg: dict, home: Path) -> int:
    run_id = create_run(db, project_id, "crf", baselines.settings("crf", cfg), name=name)
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", [run_id])
    db.conn.commit()
    baselines.run(worker.WorkerContext(db, get_run(db, run_id)))
    db.execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE id = ?", [now(), run_id])
    db.conn.commit()
    return run_id


@pytest.fixture
def seeded(db, demo, home):
    a = crf_run(db, demo["id"], "crf-strong", {"max_iterations": 60, "splits": ["test"]}, home)
    b = crf_run(db, demo["id"], "crf-weak", {"max_iterations": 3, "c1": 2.0, "splits": ["test"]}, home)
    return demo, a, b


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "views" / name), default_timeout=60)


def test_evaluate_page_shows_scores_and_errors(seeded, db):
    demo, a, b = seeded
    at = _page("5_Evaluate.py")
    at.session_state["eval_run"] = a
    at.run()
    assert not at.exception, at.exception
    m = run_scores.stored_metrics(db, a, "test")
    labels = [x.label for x in at.metric]
    assert "Micro-F1" in labels and "Macro-F1" in labels
    micro = next(x for x in at.metric if x.label == "Micro-F1")
    assert micro.value == f"{m['micro']['f1']:.3f}"
    assert any("95% CI" in c.value for c in at.caption)
    # The error list: filter to missed Disease entities only.
    at.multiselect(key="eval_kinds").set_value(["missed"]).run()
    at.selectbox(key="eval_type").set_value("Disease").run()
    assert not at.exception
    heads = [md.value for md in at.markdown if md.value.startswith(":red[")]
    assert heads and all(h.startswith(":red[missed]") and "(Disease)" in h for h in heads)
    expected = scoring.error_list(run_scores.load_scored(db, a, "test"), ["missed"], "Disease")
    assert any(f"{len(expected)} error(s)" in c.value for c in at.caption)


def test_evaluate_page_switches_runs_and_mode(seeded):
    demo, a, b = seeded
    at = _page("5_Evaluate.py")
    at.run()
    at.selectbox(key="eval_run").set_value(b).run()
    at.radio(key="eval_mode").set_value("strict").run()
    assert not at.exception
    assert any("strict scoring" in c.value for c in at.caption)


def test_evaluate_page_rescores_after_a_gold_fix(seeded, db):

    demo, a, _ = seeded
    before = run_scores.stored_metrics(db, a, "test")
    sentence = projects.examples(db, demo["id"], split="test")[0]
    import time

    time.sleep(1.1)  # timestamps have second resolution
    projects.save_annotation(db, sentence.id, [], annotator="test")
    at = _page("5_Evaluate.py")
    at.session_state["eval_run"] = a
    at.run()
    assert not at.exception
    after = run_scores.stored_metrics(db, a, "test")
    assert after["n_gold"] == before["n_gold"] - len(sentence.spans)


def test_evaluate_page_without_runs(db, demo):
    at = _page("5_Evaluate.py")
    at.run()
    assert not at.exception
    assert any("No run has predictions" in i.value for i in at.info)


def test_compare_page_side_by_side(seeded, db):
    demo, a, b = seeded
    at = _page("6_Compare.py")
    at.session_state["compare_runs"] = [a, b]
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns)[:1] == ["metric"]
    ma = run_scores.stored_metrics(db, a, "test")["micro"]["f1"]
    row = table[table["metric"] == "micro F1"].iloc[0]
    assert row.iloc[1] == pytest.approx(ma, abs=1e-9)
    # Only sentences where the runs disagree.
    at.radio(key="compare_filter").set_value("runs disagree").run()
    assert not at.exception
    rows, _ = compare.side_by_side(db, [a, b], "test")
    n = sum(r["disagree"] for r in rows)
    assert any(f"{n} of {len(rows)} sentence(s)" in c.value for c in at.caption)


def test_compare_page_try_box_creates_a_request(seeded, db, monkeypatch):
    demo, a, b = seeded
    at = _page("6_Compare.py")
    at.session_state["compare_runs"] = [a, b]
    at.run()
    at.text_input(key="compare_try_text").set_value("Lithium caused hypotension .")
    at.button(key="compare_try_go").click().run()
    assert not at.exception, at.exception
    rows = list(db["try_requests"].rows)
    assert len(rows) == 1 and json.loads(rows[0]["run_ids"]) == [a, b]
    # The request is answered by its own process (CRF runs: quick); wait for it.
    import time

    deadline = time.time() + 90
    while time.time() < deadline:
        req = tryout.get_try(db, rows[0]["id"])
        if req["status"] in ("finished", "failed"):
            break
        time.sleep(0.5)
    assert req["status"] == "finished", req
    assert set(req["outputs"]) == {str(a), str(b)}
    at.run()
    assert not at.exception


def test_evaluate_page_fits_the_kind_of_run(seeded):
    """A CRF tags words: no 'Unparsable' for it, and the baseline form asks a CRF nothing about
    prompts; each run keeps its own split choice."""
    demo, a, b = seeded
    at = _page("5_Evaluate.py")
    at.run()
    labels = [x.label for x in at.metric]
    assert "Sentences" in labels and "Unparsable" not in labels
    at.selectbox(key="eval_bl_kind").set_value("few-shot").run()
    keys = {w.key for w in at.text_input} | {w.key for w in at.number_input}
    assert {"eval_bl_base", "eval_bl_shots"} <= keys
    at.selectbox(key="eval_bl_kind").set_value("crf").run()
    keys = {w.key for w in at.text_input} | {w.key for w in at.number_input}
    assert not {"eval_bl_base", "eval_bl_shots"} & keys
    for run_id in (b, a, b):
        at.selectbox(key="eval_run").set_value(run_id).run()
        split = at.radio(key=f"eval_split_{run_id}")
        assert split.value in split.options or split.value == "test"  # always one chosen
    assert not at.exception


def test_evaluate_page_starts_an_encoder_baseline(db, demo, monkeypatch):
    """The baseline form offers the encoder with its own settings (and none of the prompts'),
    and starting one stores an encoder run with them (queued here: no process is started)."""
    monkeypatch.setattr(launcher, "launch", lambda _db, _run_id: False)
    at = _page("5_Evaluate.py")
    at.run()
    kind = at.selectbox(key="eval_bl_kind")
    assert kind.options[-1] == baselines.KIND_TITLES["encoder"]
    kind.set_value("encoder").run()
    keys = {w.key for w in at.text_input} | {w.key for w in at.number_input}
    assert {"eval_bl_epochs", "eval_bl_lr", "eval_bl_batch"} <= keys
    assert not {"eval_bl_base", "eval_bl_shots"} & keys
    at.number_input(key="eval_bl_epochs").set_value(3)
    at.number_input(key="eval_bl_limit").set_value(20)
    next(b for b in at.button if b.label == "Start baseline").click().run()
    assert not at.exception
    run = list_runs(db, demo["id"])[0]
    assert run["kind"] == "encoder" and run["status"] == "queued"
    assert (run["config"]["epochs"], run["config"]["limit"]) == (3, 20)
    assert run["config"]["lr"] == pytest.approx(1e-4)
    assert any("encoder" in s.value and "queued" in s.value for s in at.success)
