"""The encoder baseline (core.prediction.encoder*) with the real bundled all-MiniLM-L6-v2 and a
real SQLite database.

Fast tests check the word ↔ word-piece alignment (the tokenizer only), windows, decoding,
settings, the saved folder's tidying and the command line. Slow tests load MiniLM: one trains a
real encoder run on a tiny project through ``nerlab baseline --kind encoder --wait`` (a real
worker process) and the others check what it left (stored predictions, phases, the run folder,
the predictor that loads it); the stop tests train a step or two in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import config
from core.cli import main as cli
from core.data import phases, projects, suggestions
from core.data.db import get_db, now
from core.data.records import SentenceRecord
from core.data.runs import create_run, get_run, run_metrics
from core.data.spans import Example, Span, spans_to_bio, text_from_tokens, tokenize
from core.errors import ConfigError, DataError, ModelError, NerlabError, StopRequested
from core.evaluation import run_scores
from core.jobs import launcher, worker
from core.jobs import suggest as suggest_jobs
from core.prediction import (
    api,
    baselines,
    bulk,
    encoder,
    encoder_folder,
    encoder_train,
    predictors,
    tryout,
)
from core.prediction.encoder import EncoderSettings

ROOT = Path(__file__).resolve().parent.parent
TAGS = encoder.tag_list(["Chemical", "Disease"])
TAG_IDS = {t: i for i, t in enumerate(TAGS)}


def example(text: str, spans=(), id: int = 1) -> Example:
    return Example(id=id, text=text, spans=tuple(spans), tokens=tuple(tokenize(text)))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder.minilm_dir()))


# ------------------------------------------------------------------ words, pieces and windows


def test_tag_list():
    assert encoder.tag_list(["Chemical"]) == ["O", "B-Chemical", "I-Chemical"]
    assert TAGS == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]


def test_word_pieces_cover_every_word(tokenizer):
    words = ["Selegiline", "-", "induced", "postural", "hypotension", "\u200b", "in", "Parkinson"]
    pieces = encoder.word_pieces(tokenizer, [words, []])
    assert len(pieces[0]) == len(words) and pieces[1] == []
    assert pieces[0][5] == [tokenizer.unk_token_id]  # the zero-width word got the unknown token
    assert tokenizer.convert_ids_to_tokens(pieces[0][0]) == ["se", "##leg", "##ili", "##ne"]
    assert tokenizer.convert_ids_to_tokens(pieces[0][2]) == ["induced"]


def test_first_piece_carries_the_word_tag(tokenizer):
    ex = example("Selegiline - induced postural hypotension .",
                 [Span(0, 10, "Chemical"), Span(21, 41, "Disease")])
    items, wins = encoder.make_items(tokenizer, [ex], 128, TAG_IDS)
    assert wins == [[(0, 6)]] and len(items) == 1
    it = items[0]
    assert it.ids[0] == tokenizer.cls_token_id and it.ids[-1] == tokenizer.sep_token_id
    tags = spans_to_bio(ex.token_offsets(), ex.spans)
    assert tags == ["B-Chemical", "O", "O", "B-Disease", "I-Disease", "O"]
    # Each word's first piece has its tag; every other piece is ignored by the loss.
    assert [it.labels[h] for h in it.heads] == [TAG_IDS[t] for t in tags]
    heads = set(it.heads)
    assert all(lab == encoder.IGNORE_INDEX for pos, lab in enumerate(it.labels) if pos not in heads)
    assert len(it.labels) == len(it.ids)
    assert it.heads[:2] == [1, 5]  # "selegiline" is 4 pieces


def test_windows_fit_the_budget_and_overlap():
    counts = [1, 3, 2, 1, 1, 4, 2, 1, 1, 1, 2, 3]
    for budget in (3, 4, 5, 8, 30):
        spans = encoder.windows(counts, budget)
        assert spans[0][0] == 0 and spans[-1][1] == len(counts)
        for a, b in spans:
            assert b > a and (sum(counts[a:b]) <= budget or b - a == 1)
        for (a1, b1), (a2, _b2) in zip(spans, spans[1:], strict=False):
            assert a1 < a2 <= b1  # moves forward, no gap
    assert encoder.windows(counts, 100) == [(0, len(counts))]
    assert encoder.windows([], 10) == []
    assert encoder.windows([50, 1], 10) == [(0, 1), (1, 2)]  # a word longer than the window


def test_each_word_is_taken_from_its_most_central_window():
    spans = [(0, 6), (3, 9), (6, 10)]
    chosen = [encoder.best_window(w, spans, 10) for w in range(10)]
    assert chosen[0] == 0 and chosen[9] == 2  # sentence edges are not cuts
    assert chosen[5] == 1 and chosen[6] == 1


def test_long_sentence_is_cut_into_windows_of_whole_words(tokenizer):
    words = [f"word{i}" if i % 3 else "hypotension" for i in range(60)]
    text, offsets = text_from_tokens(words)
    ex = Example(id=1, text=text, spans=(Span(offsets[3][0], offsets[3][1], "Disease"),),
                 tokens=tuple(offsets))
    items, wins = encoder.make_items(tokenizer, [ex], 16, TAG_IDS)
    assert len(wins[0]) > 3 and all(len(it.ids) <= 16 for it in items)
    covered = {it.first_word + k for it in items for k in range(len(it.heads))}
    assert covered == set(range(60))  # every word is in some window, with its label
    assert any(it.labels[it.heads[3 - it.first_word]] == TAG_IDS["B-Disease"]
               for it in items if it.first_word <= 3 < it.first_word + len(it.heads))


def test_viterbi_keeps_the_tags_well_formed():
    probs = [[0.1, 0.1, 0.6, 0.1, 0.1],   # I-Chemical most likely at the start
             [0.1, 0.1, 0.1, 0.1, 0.6],   # I-Disease after it
             [0.7, 0.1, 0.1, 0.05, 0.05]]
    path = [TAGS[i] for i in encoder.viterbi(probs, TAGS)]
    assert not path[0].startswith("I-")
    for a, b in zip(path, path[1:], strict=False):
        assert not b.startswith("I-") or a[2:] == b[2:]
    assert encoder.viterbi([], TAGS) == []
    found = encoder.decode([(0, 3), (4, 7), (8, 9)], probs, TAGS)
    chosen = [p[TAGS.index(t)] for p, t in zip(probs, found.tags, strict=True)]
    assert found.confidence == pytest.approx(sum(chosen) / 3)  # the sentence: the mean
    assert found.lowest == pytest.approx(min(chosen))
    assert all(found.lowest <= c for c in found.span_confidences)  # a span: its lowest


def test_settings_are_checked_and_read_from_a_run_config():
    s = EncoderSettings.from_dict({"epochs": "3", "lr": "2e-4", "select_best": "true",
                                   "splits": ["dev"], "unknown": 1, "batch_size": None})
    assert (s.epochs, s.lr, s.select_best, s.batch_size) == (3, 2e-4, True, 16)
    with pytest.raises(ConfigError, match="epochs must be at least 1, got 0"):
        EncoderSettings(epochs=0)
    with pytest.raises(ConfigError, match="decoding 'beam'"):
        EncoderSettings(decode="beam")
    with pytest.raises(ConfigError, match="epochs='many' is not a int"):
        EncoderSettings.from_dict({"epochs": "many"})
    cfg = baselines.settings("encoder", {"epochs": "4", "limit": 5})
    assert cfg["epochs"] == 4 and cfg["limit"] == 5 and cfg["splits"] == ["dev", "test"]
    assert cfg["base_model"] == encoder.BUNDLED_ENCODER and "encoder" in baselines.KINDS
    with pytest.raises(NerlabError, match="Split"):
        baselines.settings("encoder", {"splits": ["validation"]})


def test_no_labelled_training_sentences_is_a_clear_error():
    with pytest.raises(DataError, match="needs labelled training sentences"):
        encoder_train.prepare([])
    with pytest.raises(DataError):
        encoder_train.prepare([Example(id=1, text="   ", spans=())])


def test_a_folder_that_is_not_an_encoder_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a saved encoder"):
        encoder_folder.load_encoder(tmp_path)
    (tmp_path / encoder_folder.META_FILE).write_text('{"format": 99}')
    with pytest.raises(ModelError, match="format 99"):
        encoder_folder.load_encoder(tmp_path)


def test_tidy_keeps_the_newest_complete_encoder(tmp_path):
    def folder(name: str, complete: bool) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model.safetensors").write_text(name)
        if complete:
            (path / encoder_folder.META_FILE).write_text("{}")
        return path

    target = tmp_path / "encoder"
    folder("encoder.old", True)
    folder("encoder.partial", True)  # the save had written everything but the swap
    assert encoder_folder.tidy_encoder(target) == target
    assert (target / "model.safetensors").read_text() == "encoder.partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]
    folder("encoder.partial", False)  # cut short while writing: dropped
    assert encoder_folder.tidy_encoder(target) == target
    assert (target / "model.safetensors").read_text() == "encoder.partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]
    assert encoder_folder.tidy_encoder(tmp_path / "none") is None


def test_stop_says_what_it_keeps_in_each_encoder_phase():
    assert "saves the encoder as the last step left it" in launcher.stop_outcome(
        {"phase": encoder_train.TRAIN.key})
    assert "saves the encoder" in launcher.stop_outcome({"phase": encoder_train.SAVE.key})
    assert "nothing to save yet" in launcher.stop_outcome({"phase": encoder_train.LOAD.key})


def test_cli_baseline_takes_encoder_settings(db, demo, monkeypatch, capsys):
    monkeypatch.setattr(launcher, "launch", lambda _db, _run_id: False)  # queued, no process
    code = cli.main(["baseline", demo["name"], "--kind", "encoder", "--epochs", "3", "--lr",
                     "2e-4", "--limit", "5"])
    assert code == 0, capsys.readouterr().err
    run = get_run(db, db.execute("SELECT MAX(id) FROM runs").fetchone()[0])
    assert run["kind"] == "encoder" and run["base_model"] == encoder.BUNDLED_ENCODER
    assert (run["config"]["epochs"], run["config"]["lr"], run["config"]["limit"]) == (3, 2e-4, 5)
    assert run["config"]["class_weighting"] == EncoderSettings().class_weighting
    for argv, says in ((["--epochs", "0"], "epochs must be at least 1, got 0"),
                       (["--lr", "-1"], "learning rate must be positive")):
        assert cli.main(["baseline", demo["name"], "--kind", "encoder", *argv]) == 1
        assert says in capsys.readouterr().err
    assert cli.main(["baseline", demo["name"], "--kind", "crf", "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "A CRF baseline takes no --epochs" in err and "Traceback" not in err


# ------------------------------------------------------------------------ a real encoder run

TINY = "tiny encoder project"
RUN_ARGS = ["--epochs", "4", "--batch-size", "8", "--lr", "3e-4", "--max-length", "48"]


def _records(examples, n: int) -> list[SentenceRecord]:
    return [SentenceRecord(e.text, list(e.spans), list(e.tokens) if e.tokens else None,
                           labelled=True) for e in examples[:n]]


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A data directory of its own with a tiny project: 32 training sentences of the demo, 8 dev,
    8 test, a long test sentence (several demo sentences joined) that needs windows, and 5
    sentences waiting to be labelled."""
    from core.data.demo import ensure_demo_project

    home = tmp_path_factory.mktemp("encoder-home")
    old = {k: os.environ.get(k) for k in (config.HOME_ENV, "NERLAB_SUGGEST_DEFAULT")}
    os.environ[config.HOME_ENV] = str(home)
    os.environ["NERLAB_SUGGEST_DEFAULT"] = "off"
    try:
        db = get_db()
        demo = ensure_demo_project(db)
        split = {s: projects.examples(db, demo["id"], split=s) for s in ("train", "dev", "test")}
        project = projects.create_project(db, TINY, labels=["Chemical", "Disease"])
        projects.add_sentences(db, project["id"], _records(split["train"], 32), split="train")
        projects.add_sentences(db, project["id"], _records(split["dev"], 8), split="dev")
        long = split["test"][8:14]
        words = [e.text[s:t] for e in long for s, t in e.token_offsets()]
        text, offsets = text_from_tokens(words)
        projects.add_sentences(db, project["id"], [
            *_records(split["test"], 8), SentenceRecord(text, [], offsets, labelled=True)],
            split="test")
        waiting = [SentenceRecord(e.text, tokens=list(e.tokens) if e.tokens else None,
                                  labelled=False) for e in split["test"][20:25]]
        projects.add_sentences(db, project["id"], waiting, split="train")
        yield home, project
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def encoder_run(tiny_home):
    """A finished encoder run of the tiny project, started from the command line as a user
    would, trained and predicted by a real worker process."""
    home, project = tiny_home
    env = {**os.environ, "NERLAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "core.cli", "baseline", TINY, "--kind", "encoder",
                           *RUN_ARGS, "--wait"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = get_db()
    run = get_run(db, db.execute("SELECT MAX(id) FROM runs WHERE kind = 'encoder'").fetchone()[0])
    return db, run, proc.stdout


@pytest.mark.slow
def test_encoder_run_trains_predicts_and_scores(encoder_run, tiny_home):
    db, run, out = encoder_run
    assert run["status"] == "finished", run["error_message"]
    assert "dev: " in out and "test: " in out  # --wait prints the scores
    rows = list(db.query("SELECT * FROM predictions WHERE run_id = ?", [run["id"]]))
    assert len(rows) == 8 + 9 and {r["split"] for r in rows} == {"dev", "test"}
    assert any(json.loads(r["spans"]) for r in rows)  # it found entities
    for r in rows:
        details = json.loads(r["details"])
        spans = json.loads(r["spans"])
        assert all(t == "O" or t[:2] in ("B-", "I-") for t in r["raw_output"].split())
        assert 0 <= details["lowest"] <= details["confidence"] <= 1
        assert len(details["span_confidences"]) == len(spans)
    long = max(projects.examples(db, tiny_home[1]["id"], split="test"), key=lambda e: len(e.text))
    long_row = next(r for r in rows if r["sentence_id"] == long.id)
    assert len(long_row["raw_output"].split()) == len(long.token_offsets())  # every word tagged
    for split in ("dev", "test"):
        m = run_scores.stored_metrics(db, run["id"], split)
        assert set(m["per_class"]) == {"Chemical", "Disease"} and 0 <= m["micro"]["f1"] <= 1
    steps = phases.list_phases(db, run["id"])
    assert [p["phase"] for p in steps] == ["encoder_load", "encoder_train", "encoder_save",
                                          "predict_dev", "predict_test", "score"]
    assert all(p["status"] == "done" for p in steps)
    train = steps[1]
    # 4 epochs of ceil(windows / 8) steps; 32 sentences make at least 32 windows.
    assert train["total"] == train["done"] and train["total"] % 4 == 0 and train["total"] >= 16
    losses = [m["loss"] for m in run_metrics(db, run["id"])]
    assert len(losses) == train["total"] and losses[-1] < losses[0]


@pytest.mark.slow
def test_run_folder_describes_the_encoder(encoder_run):
    _db, run, _out = encoder_run
    folder = Path(run["artifact_path"])
    assert folder == config.runs_dir() / str(run["id"]) / encoder_folder.ENCODER_DIR
    manifest = json.loads((folder / "nerlab.json").read_text())
    assert manifest["kind"] == "encoder" and manifest["labels"] == ["Chemical", "Disease"]
    assert manifest["tags"] == TAGS and manifest["config"]["epochs"] == 4
    assert set(manifest["scores"]) == {"dev", "test"}
    readme = (folder / "README.md").read_text()
    assert "fine-tuned encoder" in readme and "AutoModelForTokenClassification" in readme
    assert not list(folder.parent.glob("encoder.*"))  # no .partial or .old left


@pytest.mark.slow
def test_predictor_from_the_run_folder_gives_the_stored_predictions(encoder_run, tiny_home):
    """Loaded from the folder in this process (trained and saved by the worker): the same spans
    and confidences as the predictions the run stored, through nerlab predict's loader and the
    Python API alike."""
    db, run, _out = encoder_run
    stored = {r["sentence_id"]: r for r in db.query(
        "SELECT * FROM predictions WHERE run_id = ?", [run["id"]])}
    examples = [e for s in ("dev", "test") for e in projects.examples(db, tiny_home[1]["id"], split=s)]
    predictor = predictors.load_predictor(config.runs_dir() / str(run["id"]), batch_size=3)
    assert predictor.kind == "encoder" and predictor.labels == ["Chemical", "Disease"]
    for ex, p in zip(examples, predictor.predict(examples), strict=True):
        row = stored[ex.id]
        details = json.loads(row["details"])
        assert [s.to_dict() for s in p.spans] == json.loads(row["spans"])
        assert p.raw == row["raw_output"]
        assert p.confidence == pytest.approx(details["confidence"], abs=1e-4)
        assert p.span_confidences == pytest.approx(details["span_confidences"], abs=1e-4)
    model = api.load(config.runs_dir() / str(run["id"]))
    ex = examples[0]
    found = model.predict(ex.text)
    assert [(d["start"], d["end"], d["label"]) for d in found] == \
        [(s["start"], s["end"], s["label"]) for s in json.loads(stored[ex.id]["spans"])]
    assert all(0 <= d["confidence"] <= 1 for d in found)


@pytest.mark.slow
def test_compare_page_try_box_answers_with_the_encoder(encoder_run, tiny_home):
    db, run, _out = encoder_run
    text = "Lithium induced severe hypotension in two patients ."
    request_id = tryout.request_try(db, tiny_home[1]["id"], text, [run["id"]], start=False)
    out = tryout.answer_try(db, request_id)[str(run["id"])]
    assert out["status"] == "ok", out
    expected = predictors.load_predictor(Path(run["artifact_path"])).predict(
        [Example(id=-1, text=text, spans=(), tokens=tuple(tokenize(text)))])[0]
    assert out["spans"] == [s.to_dict() for s in expected.spans]
    assert len(out["raw"].split()) == len(tokenize(text))


@pytest.mark.slow
def test_label_page_suggestions_come_from_the_encoder(encoder_run, tiny_home):
    """The project's only scored run is its default source of suggestions; pre-labelling the
    queue with it (the Label page's button: a suggest job) stores spans with confidences."""
    db, run, _out = encoder_run
    project_id = tiny_home[1]["id"]
    assert suggest_jobs.resolve_source(db, project_id) == suggestions.run_source(run["id"])
    job = create_run(db, project_id, bulk.SUGGEST, {"source_run": run["id"],
                                                    "source_kind": "encoder"})
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", [job])
    db.conn.commit()
    bulk.run_suggest(worker.WorkerContext(db, get_run(db, job)))
    waiting = [r["id"] for r in db.query("SELECT id FROM sentences WHERE project_id = ? AND"
                                          " status = 'unlabelled'", [project_id])]
    assert len(waiting) == 5
    rows = [suggestions.get(db, i) for i in waiting]
    assert all(r is not None and r["run_id"] == run["id"] for r in rows)
    assert all(0 <= r["confidence"] <= 1 for r in rows)
    assert all(0 <= c <= 1 for r in rows for _s, c in r["spans"])
    assert any(r["spans"] for r in rows)


# ---------------------------------------------------------------------------------- stopping


def _ctx(db, project_id: int, cfg: dict) -> worker.WorkerContext:
    run_id = create_run(db, project_id, "encoder", baselines.settings("encoder", cfg))
    db.execute("UPDATE runs SET status = 'running', started_at = ? WHERE id = ?", [now(), run_id])
    db.conn.commit()
    return worker.WorkerContext(db, get_run(db, run_id))


@pytest.mark.slow
def test_stop_while_training_saves_the_encoder_and_predicts_nothing(tiny_home):
    db = get_db()
    ctx = _ctx(db, tiny_home[1]["id"], {"epochs": 2, "batch_size": 4})
    steps: list[int] = []
    progress = ctx.progress

    def stop_at_two(step, total, **metrics):
        progress(step, total, **metrics)
        steps.append(step)
        if step == 2:
            ctx.request_stop()

    ctx.progress = stop_at_two
    baselines.run(ctx)
    ctx.end_phases("done")
    assert steps == [1, 2]
    status = {p["phase"]: p["status"] for p in phases.list_phases(db, ctx.run_id)}
    assert status["encoder_train"] == "stopped" and status["encoder_save"] == "done"
    assert status["predict_dev"] == status["score"] == "skipped"
    assert db["predictions"].count_where("run_id = ?", [ctx.run_id]) == 0
    meta = encoder_folder.read_meta(ctx.run_dir / encoder_folder.ENCODER_DIR)
    assert meta["info"]["stopped"] and meta["info"]["steps"] == 2


@pytest.mark.slow
def test_stop_while_loading_or_predicting(tiny_home, encoder_run):
    db = get_db()
    ctx = _ctx(db, tiny_home[1]["id"], {})
    ctx.request_stop()
    with pytest.raises(StopRequested):
        baselines.run(ctx)  # nothing loaded, nothing saved
    assert not (ctx.run_dir / encoder_folder.ENCODER_DIR).exists()
    # While predicting: the batches stored so far are kept.
    bundle = encoder_folder.load_encoder(Path(encoder_run[1]["artifact_path"]))
    bundle.settings.eval_batch_size = 3
    ctx = _ctx(db, tiny_home[1]["id"], {"splits": ["dev"]})
    report = ctx.phase_progress

    def stop_after_first_batch(done, total=None, **kw):
        report(done, total, **kw)
        ctx.request_stop()

    ctx.phase_progress = stop_after_first_batch
    with pytest.raises(StopRequested):
        encoder_train.predict_splits(ctx, bundle, baselines.settings("encoder", {"splits": ["dev"]}))
    assert db["predictions"].count_where("run_id = ?", [ctx.run_id]) == 3


# ------------------------------------------------------------------------------- schedule


@pytest.mark.slow
def test_schedule_is_transformers_linear_warmup():
    """The same factors as transformers.get_linear_schedule_with_warmup (slow: that import
    pulls in peft)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    for warmup, total in ((0, 10), (3, 20), (7, 7), (5, 3)):
        ours, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0) for _ in range(2))
        a = encoder_train.linear_schedule_with_warmup(ours, warmup, total)
        b = get_linear_schedule_with_warmup(theirs, warmup, total)
        for _ in range(total + 2):
            assert a.get_last_lr() == pytest.approx(b.get_last_lr())
            ours.step()
            theirs.step()
            a.step()
            b.step()
