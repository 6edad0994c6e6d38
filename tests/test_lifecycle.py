"""A run's life without a model (fast): its phases in SQLite, what `nerlab train --wait` prints
of them, Stop against a real process, a dead worker's leftovers, the no-dev-split fix, plain-text
run names. The same paths with the real worker and model are in test_lifecycle_model.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from core.cli.follow import Follower, run_summary
from core.cli.main import main
from core.data import phases, projects
from core.data.db import now
from core.data.projects import SentenceRecord
from core.data.runs import create_run, get_run, list_runs, log_path, run_dir
from core.jobs import launcher, worker
from core.models.adapters import META_FILE, tidy_adapter
from core.training.checks import CARVE_DEV, carve_dev_fix, check_run
from core.training.runconfig import RunConfig
from core.ui import md_escape

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(db):
    return projects.create_project(db, "life", labels=["Chemical"])


def _run(db, project, **cols) -> int:
    run_id = create_run(db, project["id"], "train", RunConfig().to_dict())
    if cols:
        sets = ", ".join(f"{k} = ?" for k in cols)
        db.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*cols.values(), run_id])
        db.conn.commit()
    return run_id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class FakeWorker:
    """A real process whose command line says it is a run's worker (as `pid_alive` checks) and
    that writes a line to a file for every SIGTERM it receives."""

    CODE = ("import signal, sys, time\n"
            "out = open(sys.argv[1], 'a', buffering=1)\n"
            "signal.signal(signal.SIGTERM, lambda *a: out.write('TERM\\n'))\n"
            "out.write('ready\\n')\n"
            "while True: time.sleep(0.05)\n")

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "signals.txt"
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(self.file),
                                      launcher.WORKER])
        deadline = time.monotonic() + 30
        while "ready" not in self.lines() and time.monotonic() < deadline:
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return self.file.read_text().split() if self.file.exists() else []

    def terms(self, settle_s: float = 0.5) -> int:
        time.sleep(settle_s)
        return self.lines().count("TERM")

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- phases --------------------------------------------------------------------------------------


def test_phases_go_from_planned_to_done_with_progress_eta_and_times(db, project):
    run_id = _run(db, project, status="running")
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    ctx.plan_phases([phases.LOAD, replace(phases.TRAIN, total=4), phases.predict_phase("dev", 60),
                     phases.SCORE])
    rows = phases.list_phases(db, run_id)
    assert [r["phase"] for r in rows] == ["load", "train", "predict_dev", "score"]
    assert {r["status"] for r in rows} == {"pending"} and rows[2]["total"] == 60
    ctx.phase(phases.LOAD)
    ctx.phase(phases.TRAIN, total=4)
    ctx.phase_progress(1, 4, eta_s=30.0, detail="loss 0.9000")
    load, train, dev, score = phases.list_phases(db, run_id)
    assert load["status"] == "done" and load["seconds"] is not None
    assert train["status"] == "running" and (train["done"], train["total"]) == (1, 4)
    assert 0 < train["left_s"] <= 30.0
    assert phases.describe(train).startswith("Train · 1 / 4 steps · loss 0.9000 · ETA ")
    assert phases.current(db, [run_id])[run_id]["phase"] == "train"
    ctx.phase_progress(None, detail="saving the adapter (end of an epoch)")  # only the detail
    train = phases.list_phases(db, run_id)[1]
    assert (train["done"], train["detail"]) == (1, "saving the adapter (end of an epoch)")
    # The loss curve stays made of training rows: phases write no run_metrics rows.
    assert db["run_metrics"].count_where("run_id = ?", [run_id]) == 0
    ctx.phase(phases.predict_phase("dev", 60))
    ctx.phase_progress(16, 60)  # the ETA follows from the rate when none is given
    dev = phases.list_phases(db, run_id)[2]
    assert dev["done"] == 16 and dev["eta_s"] is not None
    ctx.end_phases("stopped")
    rows = {r["phase"]: r for r in phases.list_phases(db, run_id)}
    assert rows["train"]["status"] == "done" and rows["train"]["done"] == 4
    assert rows["predict_dev"]["status"] == "stopped" and rows["predict_dev"]["done"] == 16
    assert rows["score"]["status"] == "skipped"
    assert phases.current(db, [run_id]) == {}


def test_the_cli_follower_prints_each_phase_its_steps_and_the_outcome(db, project):
    run_id = _run(db, project, status="running")
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    out = io.StringIO()
    follower = Follower(db, run_id, out)
    ctx.plan_phases([phases.CONVERT, phases.LOAD, replace(phases.TRAIN, total=2),
                     phases.predict_phase("test", 12)])
    ctx.phase(phases.CONVERT)
    ctx.phase_progress(45, 100)
    follower.poll()
    ctx.phase(phases.LOAD)
    ctx.phase(phases.TRAIN, total=2)
    ctx.progress(1, 2, loss=0.8, eta_s=10)
    follower.poll()
    ctx.progress(2, 2, loss=0.6, eta_s=0)
    ctx.phase(phases.predict_phase("test", 12))
    ctx.phase_progress(4, 12)
    db.execute("UPDATE runs SET stop_requested = 1, stop_requested_at = ? WHERE id = ?",
               [now(), run_id])
    db.conn.commit()
    follower.poll()
    ctx.end_phases("stopped")
    db.execute("UPDATE runs SET status = 'stopped' WHERE id = ?", [run_id])
    db.conn.commit()
    follower.poll()
    lines = out.getvalue().splitlines()
    text = "\n".join(lines)
    expected = ["[1/4] Convert the bundled model (first use only)…", "[1/4] ✓ Convert",
                "[2/4] ✓ Load the model", "[3/4] Train (2 steps)…", "step 1/2, loss 0.8000",
                "step 2/2, loss 0.6000", "[3/4] ✓ Train · 2 / 2 steps",
                "[4/4] Predict test (12 sentences)…", "Stopping (asked at",
                "[4/4] ■ Predict test · 4 / 12 sentences"]
    positions = [next(i for i, line in enumerate(lines) if e in line) for e in expected]
    assert positions == sorted(positions), text
    assert "(stopped)" in lines[-1]


# -- stop -----------------------------------------------------------------------------------------


def test_stop_signals_a_running_worker_once_and_says_what_happens(db, project, tmp_path):
    fake = FakeWorker(tmp_path)
    try:
        run_id = _run(db, project, status="running", pid=fake.proc.pid, heartbeat_at=now())
        ctx = worker.WorkerContext(db, get_run(db, run_id))
        ctx.plan_phases([phases.LOAD, phases.TRAIN])
        ctx.phase(phases.TRAIN, total=10)
        message = launcher.request_stop(db, run_id)
        assert message == (f"Run {run_id} is stopping: it drops the step in progress, saves its "
                           "adapter as the last step left it and ends.")
        run = get_run(db, run_id)
        assert run["stop_requested"] == 1 and run["stop_requested_at"]
        assert fake.terms() == 1
        # A second click (or `nerlab stop` again) does not send a second signal: a worker takes
        # a second signal as "end at once".
        assert "already stopping" in launcher.request_stop(db, run_id)
        assert fake.terms() == 1
        assert get_run(db, run_id)["stop_requested_at"] == run["stop_requested_at"]
    finally:
        fake.end()


@pytest.mark.parametrize("phase, says", [
    (None, "it ends now (nothing to save yet)"),
    ("load", "it ends now (nothing to save yet)"),
    ("train", "drops the step in progress, saves its adapter"),
    ("save", "it saves its adapter and ends"),
    ("predict_dev", "keeping its adapter and the predictions stored so far"),
])
def test_what_a_stop_does_depends_on_the_phase(phase, says):
    assert says in launcher.stop_outcome({"phase": phase} if phase else None)


def _adapter(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 2048)
    (folder / META_FILE).write_text(f'{{"tag": "{tag}"}}')
    return folder


def test_a_dead_worker_that_was_stopping_ends_stopped_and_its_half_save_is_removed(db, project):
    run_id = _run(db, project, status="running", pid=_dead_pid(), heartbeat_at=now(),
                  stop_requested=1)
    folder = run_dir(run_id)
    _adapter(folder / "adapter", "saved at the last epoch")
    half = folder / "adapter.partial"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x" * 4096)  # killed mid-save: no meta
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    ctx.plan_phases([phases.TRAIN, phases.SAVE])
    ctx.phase(phases.SAVE)
    assert launcher.refresh(db, start_queued=False) == [run_id]
    run = get_run(db, run_id)
    assert run["status"] == "stopped" and "after the stop was asked for" in run["error_message"]
    assert not half.exists() and (folder / "adapter" / META_FILE).read_text().count("last epoch")
    assert run["artifact_path"] == str(folder / "adapter")
    assert [r["status"] for r in phases.list_phases(db, run_id)] == ["skipped", "stopped"]


def test_a_dead_worker_without_a_stop_fails_and_a_complete_last_save_is_kept(db, project):
    run_id = _run(db, project, status="running", pid=_dead_pid(), heartbeat_at=now())
    folder = run_dir(run_id)
    # Killed between the two renames of a save: the new adapter is complete, the old one aside.
    _adapter(folder / "adapter.partial", "new")
    _adapter(folder / "adapter.old", "old")
    assert launcher.refresh(db, start_queued=False) == [run_id]
    run = get_run(db, run_id)
    assert run["status"] == "failed" and "ended without reporting" in run["error_message"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("adapter")) == ["adapter"]
    assert '"new"' in (folder / "adapter" / META_FILE).read_text()
    assert run["artifact_path"] == str(folder / "adapter")


def test_tidy_adapter_drops_a_half_save_and_keeps_the_adapter(tmp_path):
    folder = _adapter(tmp_path / "adapter", "good")
    (tmp_path / "adapter.partial").mkdir()
    (tmp_path / "adapter.partial" / "adapter_model.safetensors").write_bytes(b"x")
    assert tidy_adapter(folder) == folder
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert tidy_adapter(tmp_path / "nothing") is None


# -- no dev split ---------------------------------------------------------------------------------


def _train_and_test_only(db) -> dict:
    p = projects.create_project(db, "imported pair", labels=["A"])
    projects.add_sentences(db, p["id"], [SentenceRecord(f"train sentence {i} .", labelled=True)
                                         for i in range(30)], split="train")
    projects.add_sentences(db, p["id"], [SentenceRecord(f"test sentence {i} .", labelled=True)
                                         for i in range(8)], split="test")
    return p


def test_no_dev_split_names_the_command_and_the_fix_leaves_test_alone(db):
    p = _train_and_test_only(db)
    (issue,) = [i for i in check_run(db, p["id"], RunConfig(), cuda=False) if i.title == "No dev split"]
    assert issue.level == "error" and issue.action == CARVE_DEV
    assert issue.command == "nerlab split 'imported pair' --dev 0.1"
    test_before = sorted(e.id for e in projects.examples(db, p["id"], split="test"))
    assert carve_dev_fix(db, p["id"]) == 3
    assert projects.split_counts(db, p["id"]) == {"train": 27, "dev": 3, "test": 8}
    assert sorted(e.id for e in projects.examples(db, p["id"], split="test")) == test_before
    assert not [i for i in check_run(db, p["id"], RunConfig(), cuda=False) if i.title == "No dev split"]


def test_nerlab_train_without_dev_prints_the_split_command(db, capsys):
    _train_and_test_only(db)
    assert main(["train", "imported pair", "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "No dev split" in err and "Fix it with: nerlab split 'imported pair' --dev 0.1" in err
    assert "Traceback" not in err


# -- run names ------------------------------------------------------------------------------------


def test_run_names_are_plain_text_in_the_cli(db, project, capsys):
    run_id = create_run(db, project["id"], "train", RunConfig().to_dict(),
                        name="x\x1b[2J\nnext ![i](http://127.0.0.1:9/x)" + "y" * 200)
    name = get_run(db, run_id)["name"]
    assert "\x1b" not in name and "\n" not in name and len(name) <= 100
    assert main(["runs", "life"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "x [2J next ![i]" in out


def test_md_escape_leaves_no_markdown_or_streamlit_syntax():
    escaped = md_escape("![i](http://x/y.png) **b** :red[r] $x$ <img src=x> a_b\nc")
    assert escaped == (r"\!\[i\]\(http\:\/\/x\/y\.png\) \*\*b\*\* \:red\[r\] \$x\$ "
                       r"\<img src\=x\> a\_b c")


def test_run_summary_shows_the_last_training_loss_not_none(db, project):
    run_id = _run(db, project, status="finished")
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    ctx.progress(2, 2, loss=0.5)
    ctx.progress(2, 2, eval_loss=0.7)
    (row,) = [r for r in list_runs(db, project["id"]) if r["id"] == run_id]
    assert run_summary(row) == "step 2/2, loss 0.5000, dev loss 0.7000"
    log_path(run_id).write_text("")


def test_quiet_libraries_hides_progress_bars_and_future_warnings():
    code = ("import warnings, sys\n"
            "from core.models.quiet import quiet_libraries\n"
            "quiet_libraries()\n"
            "from tqdm import tqdm\n"
            "list(tqdm(range(3), desc='BAR'))\n"
            "warnings.warn('library internals', FutureWarning)\n"
            "warnings.warn('a real warning', UserWarning)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "BAR" not in r.stderr and "library internals" not in r.stderr
    assert "a real warning" in r.stderr


def test_a_failed_run_keeps_its_traceback_out_of_the_log_the_user_reads(db, project):
    """A real worker process on a run that cannot work (a CRF with no labelled sentences): the
    run fails with a one-line reason; the log (shown on the page, kept in log_tail) has no
    traceback, which goes to traceback.txt for a bug report."""
    run_id = create_run(db, project["id"], "crf", {"splits": ["dev"]})
    assert launcher.launch(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=120, poll_s=0.2)
    assert run["status"] == "failed" and run["error_kind"] == "data", run
    assert "needs labelled training sentences" in run["error_message"]
    log = log_path(run_id).read_text()
    assert "Traceback" not in log and "Traceback" not in run["log_tail"]
    assert f"bug report: {run_dir(run_id) / 'traceback.txt'}" in log
    assert "Traceback" in (run_dir(run_id) / "traceback.txt").read_text()
    assert [(r["phase"], r["status"]) for r in phases.list_phases(db, run_id)][:1] == [
        ("crf_train", "failed")]


class _Writes:
    """Stands in for a peft model / tokenizer: ``save_pretrained`` writes files like theirs."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def save_pretrained(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in self.names:
            (Path(folder) / name).write_text("{}")


def test_the_next_save_and_the_end_of_a_run_remove_a_killed_save(db, project):
    from core.models.adapters import save_adapter

    run_id = _run(db, project, status="running")
    folder = run_dir(run_id) / "adapter"
    half = run_dir(run_id) / "adapter.partial"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x" * 4096)  # what a killed save left
    save_adapter(_Writes("adapter_config.json", "adapter_model.safetensors"),
                 _Writes("tokenizer_config.json"), folder, {"saved_because": "end"})
    assert sorted(p.name for p in run_dir(run_id).iterdir() if p.name.startswith("adapter")) == [
        "adapter"]
    assert (folder / "adapter_config.json").is_file() and (folder / META_FILE).is_file()
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"x")
    worker._finish(db, run_id, "stopped")  # how the worker ends a run
    assert not half.exists() and folder.is_dir()
    assert get_run(db, run_id)["status"] == "stopped"


def test_the_evaluate_page_shows_an_active_baselines_phase(db, demo, tmp_path):
    from streamlit.testing.v1 import AppTest

    from core.prediction import baselines

    fake = FakeWorker(tmp_path)
    try:
        run_id = create_run(db, demo["id"], "crf", baselines.settings("crf", {}), name="crf *x*")
        db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ? WHERE id = ?",
                   [fake.proc.pid, now(), run_id])
        db.conn.commit()
        ctx = worker.WorkerContext(db, get_run(db, run_id))
        ctx.plan_phases([baselines.CRF_TRAIN, phases.predict_phase("test", 147), phases.SCORE])
        ctx.phase(phases.predict_phase("test", 147))
        ctx.phase_progress(30, 147, eta_s=12.0)
        at = AppTest.from_file(str(ROOT / "views" / "5_Evaluate.py"), default_timeout=60)
        at.run()
        assert not at.exception, at.exception
        texts = [p.proto.text for p in at.get("progress")]
        assert any(f"#{run_id} crf \\*x\\* (crf): running" in t and "Predict test · 30 \\/ 147" in t
                   for t in texts), texts
    finally:
        fake.end()


def test_a_phase_of_one_unit_is_said_in_the_singular():
    from core.data.phases import amount, describe

    assert amount(1, "sentences") == "1 sentence" and amount(2, "sentences") == "2 sentences"
    assert amount(1, "steps") == "1 step" and amount(1, "%") == "1 %" and amount(3, "") == "3"
    row = {"title": "Predict one.txt", "total": 1, "done": 0, "unit": "sentences",
           "status": "pending"}
    assert describe(row) == "Predict one.txt · 1 sentence"
