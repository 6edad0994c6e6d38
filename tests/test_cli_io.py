"""``nerlab import`` / ``export`` / ``split`` / ``stats`` manners: - for stdin and stdout, a closed
pipe ends quietly, reports in full or as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.cli import main as cli
from core.cli import run_cmds

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def nerlab(home: Path, *args: str, stdin: bytes | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NERLAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, timeout=180)


def test_dash_is_stdin_and_stdout_and_the_report_is_complete(tmp_path):
    """Before: `nerlab export NAME -` wrote a file named '-'; import could not read stdin; the
    report said nothing about duplicates that disagree."""
    home = tmp_path / "home"
    assert nerlab(home, "demo").returncode == 0
    r = nerlab(home, "export", "BC5CDR demo", "-", "--format", "jsonl", "--include-unlabelled", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "-").exists()
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 547 and json.loads(lines[0])["text"].startswith("Selegiline")
    assert b"Exported 547 sentence(s) to stdout." in r.stderr  # the report stays out of the data
    assert nerlab(home, "init", "copy").returncode == 0
    r = nerlab(home, "import", "copy", "-", "--json", stdin=r.stdout)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["added"], report["format"]) == (547, "jsonl")
    r = nerlab(home, "import", "copy", str(DATA / "duplicates.jsonl"))
    out = r.stdout.decode()
    assert "2 of them with labels that differ from the copy kept" in out and "(read as jsonl)" in out
    assert "line 3 differs from sentence 548 (line 1 of this file)" in out
    r = nerlab(home, "split", "copy")
    assert r.returncode == 0 and b"Moved no sentence" in r.stdout and b"test never moves" in r.stdout


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """Before: `nerlab stats X | head` ended with a BrokenPipeError traceback."""
    home = tmp_path / "home"
    assert nerlab(home, "demo").returncode == 0
    env = {**os.environ, "NERLAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for args in (["stats", "BC5CDR demo"], ["export", "BC5CDR demo", "-", "--format", "jsonl"]):
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader is gone before anything is written
        _, err = proc.communicate(timeout=180)
        assert b"Traceback" not in err and b"BrokenPipe" not in err, err
        assert proc.returncode in (0, 141)


def test_import_json_and_update_in_process(home, capsys):
    assert cli.main(["init", "p", "--labels", "Chemical,Disease"]) == 0
    assert cli.main(["import", "p", str(DATA / "doccano.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "3 sentence(s) added" in out and "(read as doccano)" in out
    fixed = DATA.parent / "data" / "doccano.jsonl"
    corrected = fixed.read_text().replace("[15, 29, \"Disease\"]", "[23, 29, \"Disease\"]")
    path = home / "fixed.jsonl"
    path.write_text(corrected)
    assert cli.main(["import", "p", str(path), "--update", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["updated"], report["spans_added"], report["spans_removed"]) == (1, 1, 1)
    assert report["updated_numbers"] == [1]


def test_export_formats_and_labelstudio_config(home, demo, capsys, tmp_path):
    for fmt, suffix in (("labelstudio", ".json"), ("doccano", ".jsonl"), ("conll", ".conll")):
        out = tmp_path / f"demo{suffix}"
        assert cli.main(["export", "BC5CDR demo", str(out), "--format", fmt]) == 0
        assert out.stat().st_size > 0
    assert (tmp_path / "demo.config.xml").read_text().startswith("<View>")
    assert "Label Studio labelling config" in capsys.readouterr().out
    assert cli.main(["export", "BC5CDR demo", "-", "--format", "conll", "--no-comments",
                     "--split", "dev"]) == 0
    assert capsys.readouterr().out.startswith("22\tB-Chemical\n-\tI-Chemical\n")
    assert cli.main(["export", "BC5CDR demo", "-", "--format", "hf"]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_import_errors_are_one_line(home, capsys, tmp_path):
    cli.main(["init", "p"])
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "meta": "x"}\n')
    assert cli.main(["import", "p", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'nerlab: bad.jsonl, line 1: "meta" must be an object, got a string (\'x\').'


def test_train_json_reports_the_new_run(home, demo, capsys, monkeypatch):
    from core.models.loader import DeviceInfo

    monkeypatch.setattr(run_cmds.loader, "device_info", lambda: DeviceInfo("cpu", "CPU", False, None))
    monkeypatch.setattr(run_cmds, "check_run", lambda *a, **k: [])
    monkeypatch.setattr(run_cmds.launcher, "submit_training", lambda db, pid, cfg, name="", setup=None: (7, False))
    assert cli.main(["train", "BC5CDR demo", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"run_id": 7, "queued": True, "issues": []}
