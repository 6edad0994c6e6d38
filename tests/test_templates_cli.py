"""``nerlab template list|show|set|check`` on a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.main import main
from core.data import projects
from core.data.spans import Span
from core.prompts.store import get_template, list_versions

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_set_round_trip_through_toml(demo, db, capsys, tmp_path):
    code, out, _ = run(capsys, "template", "show", demo["name"])
    assert code == 0 and 'output_format = "json_list"' in out and "{sentence}" in out
    path = tmp_path / "t.toml"
    path.write_text(out.replace('"json_list"', '"inline_tags"').replace("n_examples = 0", "n_examples = 2")
                    .replace("{examples}", "Similar sentences:\n{examples}"))
    code, out, err = run(capsys, "template", "set", demo["name"], str(path))
    assert code == 0, err
    assert "v2" in out
    tpl = get_template(db, demo["id"])
    assert (tpl.version, tpl.output_format, tpl.n_examples) == (2, "inline_tags", 2)
    assert "Similar sentences:" in tpl.instruction
    code, out, _ = run(capsys, "template", "show", demo["name"], "--version", "1", "--as", "json")
    assert json.loads(out)["output_format"] == "json_list"
    code, out, _ = run(capsys, "template", "list", demo["name"])
    assert "default  v2  (2 version(s)" in out


def test_set_from_json_under_another_name_and_errors(demo, db, capsys, tmp_path):
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"instruction": "Types: {labels}\nText: {sentence}", "output_format": "json_dict"}))
    code, out, err = run(capsys, "template", "set", demo["name"], str(good), "--template", "short")
    assert code == 0, err
    assert get_template(db, demo["id"], "short").output_format == "json_dict"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instruction": "Text: {sentence} {bogus}", "output_format": "json_list"}))
    code, _, err = run(capsys, "template", "set", demo["name"], str(bad))
    assert code == 1 and "bad.json" in err and "{bogus}" in err and "line 1" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    code, _, err = run(capsys, "template", "set", demo["name"], str(broken))
    assert code == 1 and "Cannot read" in err and "TOML" in err
    assert list_versions(db, demo["id"], "default") == []  # nothing saved by the bad files


def test_check_passes_on_the_demo_for_every_format(demo, capsys):
    code, out, _ = run(capsys, "template", "check", demo["name"], "--all-formats")
    assert code == 0, out
    assert out.count("round-trip (ok)") == 3


def test_check_names_the_sentences_that_fail_and_exits_1(db, capsys):
    p = projects.create_project(db, "amb", labels=["Chemical", "Disease"])
    projects.add_sentences(db, p["id"], [
        projects.SentenceRecord("salt water and salt", [Span(15, 19, "Chemical")]),
        projects.SentenceRecord("lithium causes tremor", [Span(0, 7, "Chemical")]),
    ])
    code, out, _ = run(capsys, "template", "check", "amb", "--json", "--all-formats")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    by_format = {r["output_format"]: r for r in report["results"]}
    assert by_format["inline_tags"]["failed"] == 0
    fail = by_format["json_list"]["failures"][0]
    assert fail["position"] == 1 and fail["text"] == "salt water and salt"
    assert "occurs 2 times" in fail["reason"]
    code, out, _ = run(capsys, "template", "check", "amb")
    assert code == 1 and "sentence 1 (id" in out and "1/2 labelled sentences round-trip (FAILED)" in out


def test_preview_prints_prompt_and_target(demo, capsys):
    code, out, _ = run(capsys, "template", "show", demo["name"], "--preview")
    assert code == 0
    assert "Sentence: " in out and "Answer:\n[" in out


def test_unknown_project_is_one_line_on_stderr(home):
    env = {**os.environ, "NERLAB_HOME": str(home), "NERLAB_NO_DEMO": "1"}
    r = subprocess.run([sys.executable, "-m", "core.cli", "template", "check", "nope"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("nerlab: No project 'nope'")


BC5CDR_TRAIN = Path(os.environ.get("NERLAB_BC5CDR_TRAIN", "/work/shared/data/bc5cdr/train.tsv"))


@pytest.mark.skipif(not BC5CDR_TRAIN.is_file(), reason=f"{BC5CDR_TRAIN} is not on this machine")
def test_check_passes_on_the_whole_bc5cdr_training_file(home, capsys):
    """The issue's acceptance check: every BC5CDR training sentence round-trips in every format."""
    assert run(capsys, "init", "bc5cdr")[0] == 0
    code, out, err = run(capsys, "import", "bc5cdr", str(BC5CDR_TRAIN), "--format", "conll")
    assert code == 0, err
    code, out, _ = run(capsys, "template", "check", "bc5cdr", "--all-formats", "--json")
    report = json.loads(out)
    summary = {r["output_format"]: (r["checked"], r["failed"]) for r in report["results"]}
    assert summary == {fmt: (4553, 0) for fmt in ("json_list", "inline_tags", "json_dict")}, summary
    assert code == 0
