"""``nerlab predict`` / ``nerlab suggest`` and the Python API with the real CRF, run as a user
would (real worker processes, the CLI in its own process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.data import io, projects, suggestions
from core.data.db import now
from core.data.runs import create_run, get_run
from core.errors import NerlabError, StopRequested
from core.jobs import launcher
from core.jobs import suggest as jobs_suggest
from core.prediction import bulk, run_folder
from core.prediction.api import load

ROOT = Path(__file__).resolve().parent.parent


def nerlab(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NERLAB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, input=stdin)

def api_in_fresh_process(folder: Path, src: Path, empty_home: Path, timeout: int = 120) -> list:
    """The spans ``load(folder).predict`` gives for each line of ``src``, in a new Python
    process whose NERLAB_HOME is empty; asserts that it needed no database."""
    code = ("import json, sys\nfrom core.prediction.api import load\n"
            f"m = load({str(folder)!r})\n"
            "texts = [l.strip() for l in open(sys.argv[1], encoding='utf-8') if l.strip()]\n"
            "print(json.dumps([[{k: s[k] for k in ('start', 'end', 'label')} for s in spans]"
            " for spans in m.predict(texts)]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(src)], cwd=ROOT,
                       env={**os.environ, "NERLAB_HOME": str(empty_home)}, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    assert not (empty_home / "nerlab.db").exists()  # no database was needed
    return json.loads(r.stdout)



@pytest.fixture
def crf_run(db, demo):
    """A finished CRF baseline of the demo project (a real worker process)."""
    run_id, _ = launcher.submit_baseline(db, demo["id"], "crf", {"max_iterations": 40})
    run = launcher.wait(db, run_id, timeout_s=240, poll_s=0.2)
    assert run["status"] == "finished", run
    return run


def _conll_sample(n: int = 4) -> str:
    blocks = (ROOT / "assets/demo/test.conll").read_text().split("\n\n")
    return "\n\n".join(b for b in blocks[:n] if b.strip()) + "\n"


TEXT = ("Lithium caused severe hypotension in two patients.\n\n"
        "Naloxone reverses the antihypertensive effect of clonidine .\n"
        "Fièvre et céphalée après l’aspirine.\n")


def test_the_run_folder_is_self_contained(crf_run, home):
    folder = run_folder.model_folder(crf_run)
    manifest = json.loads((folder / "nerlab.json").read_text())
    assert manifest["kind"] == "crf" and manifest["nerlab_format"] == 1
    assert [t["name"] for t in manifest["entity_types"]] == ["Chemical", "Disease"]
    assert "Drugs and chemical substances" in manifest["entity_types"][0]["description"]
    assert set(manifest["scores"]) == {"dev", "test"}
    assert 0 < manifest["scores"]["test"]["micro"]["f1"] <= 1
    readme = (folder / "README.md").read_text()
    assert "| Chemical | Drugs and chemical" in readme and "micro F1" in readme
    assert "from core.prediction.api import load" in readme
    assert (folder / "crf.crfsuite").is_file()


def test_predict_text_conll_and_jsonl_and_the_output_reimports(crf_run, home, tmp_path):
    rid = str(crf_run["id"])
    inputs = {
        "notes.txt": TEXT,
        "sample.conll": _conll_sample(),
        "tasks.jsonl": "\n".join(json.dumps(o) for o in [
            {"text": "Cocaine-induced seizures were treated with diazepam ."},
            {"text": "Tamoxifen and breast cancer .", "spans": [{"start": 0, "end": 9,
                                                                 "label": "Chemical"}]}]) + "\n",
    }
    expected_n = {"notes.txt": 3, "sample.conll": 4, "tasks.jsonl": 2}
    for name, content in inputs.items():
        src = tmp_path / name
        src.write_text(content, encoding="utf-8")
        out = tmp_path / f"{name}.out.jsonl"
        r = nerlab(home, "predict", rid, str(src), "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert "Predict " in r.stdout and f"Wrote {expected_n[name]} sentence(s)" in r.stdout
        assert "Prediction backend: built-in batched generation: a crf model does not generate" \
            in r.stdout
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == expected_n[name]
        _, records = io.parse_bytes(content.encode(), None, name=name)
        assert [r_["text"] for r_ in rows] == [rec.text for rec in records]
        for row in rows:
            assert set(row) >= {"text", "spans", "confidence", "labelled"}
            assert row["labelled"] is False and 0 <= row["confidence"] <= 1
            for span in row["spans"]:
                assert 0 <= span["start"] < span["end"] <= len(row["text"])
                assert span["label"] in ("Chemical", "Disease") and 0 <= span["confidence"] <= 1
        if name == "sample.conll":  # CoNLL keeps its own tokens
            assert all(row.get("tokens") for row in rows)
            assert any(row["spans"] for row in rows)
        # The output is what the JSONL importer reads, losslessly.
        fmt, back = io.parse_bytes(out.read_bytes(), None, name="out.jsonl")
        assert fmt == "jsonl"
        assert [(b.text, [s.to_dict() for s in b.spans], b.labelled) for b in back] == [
            (row["text"], [{k: s[k] for k in ("start", "end", "label")} for s in row["spans"]],
             False) for row in rows]
    # ... and into a project, with nerlab import.
    r = nerlab(home, "init", "again", "--labels", "Chemical,Disease")
    assert r.returncode == 0, r.stderr
    r = nerlab(home, "import", "again", str(tmp_path / "sample.conll.out.jsonl"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == 4, r.stderr
    # CoNLL out, and standard output.
    conll_out = tmp_path / "notes.conll"
    r = nerlab(home, "predict", rid, str(tmp_path / "notes.txt"), "--out", str(conll_out))
    assert r.returncode == 0, r.stderr
    assert "# text = Lithium caused severe hypotension in two patients." in conll_out.read_text()
    fmt, back = io.parse_bytes(conll_out.read_bytes(), None, name="notes.conll")
    assert fmt == "conll" and [b.text for b in back] == [rec.text for rec in io.parse_bytes(
        TEXT.encode(), "text")[1]]
    r = nerlab(home, "predict", rid, "-", stdin=TEXT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (tmp_path / "notes.txt.out.jsonl").read_text(encoding="utf-8")


def test_the_api_loads_a_copied_folder_in_a_fresh_process(crf_run, home, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "cli.jsonl"
    r = nerlab(home, "predict", str(crf_run["id"]), str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    cli = [[{k: s[k] for k in ("start", "end", "label")} for s in json.loads(line)["spans"]]
           for line in out.read_text(encoding="utf-8").splitlines()]
    copy = tmp_path / "elsewhere" / "my-crf"
    shutil.copytree(home / "runs" / str(crf_run["id"]), copy)
    assert api_in_fresh_process(copy, src, tmp_path / "no-data-here") == cli
    # In this process: a single text, offsets, text and confidences.
    model = load(copy)
    assert model.kind == "crf" and [lab["name"] for lab in model.labels] == ["Chemical", "Disease"]
    found = model.predict("Naloxone reverses the antihypertensive effect of clonidine .")
    assert all(f["text"] == "Naloxone reverses the antihypertensive effect of clonidine ."[
        f["start"]:f["end"]] and 0 <= f["confidence"] <= 1 for f in found)
    assert model.predict(["", "  "]) == [[], []]


def test_clear_errors_and_nothing_half_written(crf_run, db, demo, home, tmp_path):
    out = tmp_path / "out.jsonl"
    good = tmp_path / "in.txt"
    good.write_text(TEXT)

    def fails(*args: str, match: str) -> None:
        r = nerlab(home, "predict", *args)
        assert r.returncode == 1, r
        assert match in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()

    fails("999", str(good), "--out", str(out), match="No run with id 999")
    queued = create_run(db, demo["id"], "crf", {})
    fails(str(queued), str(good), "--out", str(out), match=f"Run {queued} is still queued")
    db.execute("UPDATE runs SET status = 'failed', error_kind = 'data', error_message = 'boom'"
               " WHERE id = ?", [queued])
    db.conn.commit()
    fails(str(queued), str(good), "--out", str(out), match="failed (data: boom)")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    fails(str(crf_run["id"]), str(empty), "--out", str(out), match="empty.txt is empty")
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"fine line\n\xff\xfe\x00broken\n")
    fails(str(crf_run["id"]), str(binary), "--out", str(out), match="bad.txt")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": 3}\n')
    fails(str(crf_run["id"]), str(bad_json), "--out", str(out), match="bad.jsonl, line 2")
    fails(str(crf_run["id"]), str(tmp_path / "missing.txt"), "--out", str(out), match="No file")
    fails(str(crf_run["id"]), str(good), "--out", str(tmp_path / "no" / "such" / "o.jsonl"),
          match="does not exist")
    job, _ = jobs_suggest.submit_predict(db, crf_run["id"], io.parse_bytes(TEXT.encode(), "text")[1],
                                         "x.txt")
    launcher.wait(db, job, timeout_s=120, poll_s=0.2)
    fails(str(job), str(good), "--out", str(out), match=f"Run {job} is a predict job, not a model")


class _StopAfterFirstBatch:
    """A RunContext whose stop arrives after the first batch."""

    def __init__(self, db, run: dict) -> None:
        self.db, self.run, self.run_id, self.config = db, run, run["id"], run["config"]
        self.run_dir = Path(run_folder.model_folder(run))
        self.batches = 0

    def log(self, msg: str) -> None: ...
    def plan_phases(self, planned) -> None: ...
    def phase(self, phase, total=None) -> None: ...
    def end_phase(self, status="done") -> None: ...
    def heartbeat(self) -> None: ...
    def set_artifact(self, path) -> None: ...

    def phase_progress(self, done, total=None, eta_s=None, detail=None) -> None:
        self.batches += 1

    def check_stop(self) -> None:
        if self.batches:
            raise StopRequested()

    def interruptible(self):
        import contextlib

        return contextlib.nullcontext()


def test_a_stopped_prediction_writes_no_output(crf_run, db, home, tmp_path):
    out = tmp_path / "out.jsonl"
    records = io.parse_bytes(("\n".join(f"Sentence number {i} with aspirin ." for i in range(30))
                              ).encode(), "text")[1]
    job = create_run(db, crf_run["project_id"], bulk.PREDICT,
                     {"source_run": crf_run["id"], "out": str(out), "batch_size": 5})
    bulk.save_input(records, home / "runs" / str(job) / bulk.INPUT_FILE)
    ctx = _StopAfterFirstBatch(db, get_run(db, job))
    with pytest.raises(StopRequested):
        bulk.run_predict(ctx)
    assert ctx.batches == 1 and not out.exists() and not bulk.output_path(job).exists()
    assert not list(tmp_path.glob(".*partial"))


def test_suggest_with_a_run_and_stats_count_the_suggestions(crf_run, db, demo, home):
    r = nerlab(home, "suggest", "BC5CDR demo", "--run", str(crf_run["id"]), "--wait")
    assert r.returncode == 0, r.stderr
    assert "40 of 40 sentence(s) waiting to be labelled have a suggestion" in r.stdout
    assert suggestions.get_settings(db, demo["id"])["suggest_from"] == f"run:{crf_run['id']}"
    r = nerlab(home, "stats", "BC5CDR demo", "--json")
    stats = json.loads(r.stdout)["suggestions"]
    assert stats["sentences"] == 40 and stats["pending"] == 40 and stats["reviewed"] == 0
    first = projects.get_sentence(db, db.execute(
        "SELECT id FROM sentences WHERE status = 'unlabelled' ORDER BY position").fetchone()[0])
    row = suggestions.get(db, first["id"])
    assert row["run_id"] == crf_run["id"] and row["source"] == "run" and row["confidence"] <= 1
    # A second suggest job with the same run leaves what it already suggested.
    r = nerlab(home, "suggest", "BC5CDR demo", "--wait")
    assert r.returncode == 0, r.stderr
    assert suggestions.get(db, first["id"])["id"] == row["id"]
    r = nerlab(home, "suggest", "BC5CDR demo", "--off")
    assert r.returncode == 0 and "40 unused suggestion(s) removed" in r.stdout, r.stderr


def test_the_automatic_crf_retrains_prelabels_and_replaces_the_one_before(db, demo, home):
    pid = demo["id"]
    suggestions.set_settings(db, pid, suggest_from="auto", auto_every=10)
    state = jobs_suggest.auto_state(db, pid)
    assert state["due"] and state["labelled"] == 300
    first = jobs_suggest.retrain_auto(db, pid)
    assert jobs_suggest.retrain_auto(db, pid) is None  # one at a time
    assert launcher.wait(db, first, timeout_s=240, poll_s=0.2)["status"] == "finished"
    assert jobs_suggest.pending_count(db, pid, "auto") == {"unlabelled": 40, "suggested": 40}
    assert not jobs_suggest.auto_state(db, pid)["due"]
    # Label ten more training sentences: due again; the next one replaces the first.
    ids = [r[0] for r in db.execute("SELECT id FROM sentences WHERE project_id = ? AND status ="
                                    " 'unlabelled' AND split = 'train' LIMIT 10", [pid])]
    for sid in ids:
        projects.save_annotation(db, sid, [], "tester")
    assert jobs_suggest.auto_state(db, pid)["next_at"] == 310
    second = jobs_suggest.retrain_auto(db, pid)
    assert second is not None
    assert launcher.wait(db, second, timeout_s=240, poll_s=0.2)["status"] == "finished"
    assert db.execute("SELECT COUNT(*) FROM runs WHERE id = ?", [first]).fetchone()[0] == 0
    assert not (home / "runs" / str(first)).exists()
    assert get_run(db, second)["config"]["trained_on"] == 310
    assert jobs_suggest.pending_count(db, pid, "auto") == {"unlabelled": 30, "suggested": 30}


def test_light_runs_start_beside_the_run_that_holds_the_machine(db, demo, home):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               launcher.WORKER])
    try:
        busy = create_run(db, demo["id"], "train", {})
        db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ? WHERE id = ?",
                   [holder.pid, now(), busy])
        db.conn.commit()
        assert launcher.active_run(db)["id"] == busy
        queued = create_run(db, demo["id"], "zero-shot", {})
        assert launcher.launch(db, queued) is False
        crf_id, started = launcher.submit_baseline(db, demo["id"], "crf", {"max_iterations": 20})
        assert started
        assert launcher.wait(db, crf_id, timeout_s=240, poll_s=0.2)["status"] == "finished"
        assert get_run(db, queued)["status"] == "queued"  # still waiting for the machine
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)


def test_inline_suggestion_for_a_sentence_without_one(crf_run, db, demo):
    pid = demo["id"]
    projects.add_sentences(db, pid, [projects.SentenceRecord("Heparin caused bleeding .",
                                                             labelled=False)])
    sentence = projects.get_sentence(db, db.execute(
        "SELECT id FROM sentences WHERE text = 'Heparin caused bleeding .'").fetchone()[0])
    source = suggestions.run_source(crf_run["id"])
    assert jobs_suggest.ensure_suggestion(db, pid, sentence, source)
    assert not jobs_suggest.ensure_suggestion(db, pid, sentence, source)  # it has one now
    row = suggestions.get(db, sentence["id"])
    assert row["run_id"] == crf_run["id"] and row["confidence"] is not None
    with pytest.raises(NerlabError, match="is still queued"):
        jobs_suggest.submit_suggest(db, pid, create_run(db, pid, "crf", {}))
