"""Prediction jobs, run by the worker like any other run, each with its phases and progress.

- ``predict``: a file of new sentences (text, CoNLL, JSONL, ...: read with the importers'
  parsers, not added to any project) through a finished run's model; the output is one JSON
  object per input sentence, in order, ``{"text", "spans": [{"start", "end", "label",
  "confidence"}], "confidence", "labelled": false, ...}`` (what ``nerlab import`` reads back),
  or CoNLL. It is written at the end, atomically: a failed or stopped job leaves no file.
- ``suggest``: the project's sentences that wait to be labelled through a run's model; each
  batch's suggestions are stored as soon as they are made (:mod:`core.data.suggestions`).

Both load the model from the run's folder (:mod:`core.prediction.predictors`), the same way the
Python API does, so the three give the same spans.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlite_utils import Database

from core import config
from core.data import phases, suggestions
from core.data.io import ExportRow, Records, to_conll
from core.data.phases import Phase
from core.data.runs import RunContext, get_run
from core.data.spans import Example, Span
from core.errors import DataError, NerlabError
from core.prediction.predict import sharded_rounds
from core.prediction.predictors import Prediction, Predictor, load_predictor
from core.prediction.run_folder import ensure_card, run_title

#: The job kinds this module runs.
PREDICT, SUGGEST = "predict", "suggest"
INPUT_FILE = "input.jsonl"
OUTPUT_FILE = "predictions.jsonl"
OUTPUT_FORMATS = ("jsonl", "conll")

WRITE = Phase("write", "Write the output")
SUGGESTED = "Suggest labels for the queue"


def predict_phase(total: int, name: str = "") -> Phase:
    return Phase("predict_input", f"Predict {name or 'the input'}", total, "sentences")


def suggest_phase(total: int) -> Phase:
    return Phase("suggest", SUGGESTED, total, "sentences")


# ------------------------------------------------------------------------------------ input


def save_input(records: Records, path: Path) -> int:
    """Keep the sentences to predict (text, own tokens, line) in the job's folder; return how
    many. An input with no sentence is an error."""
    rows = [{"text": r.text, "tokens": [list(t) for t in r.tokens] if r.tokens else None,
             "line": r.line} for r in records if r.text.strip()]
    if not rows:
        raise NerlabError("The input holds no sentences.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def read_input(path: Path) -> tuple[list[Example], list[int | None]]:
    """The job's sentences as examples (ids -1, -2, ...) and their line numbers in the file."""
    if not path.is_file():
        raise DataError(f"The job's input {path} is missing.")
    examples, lines = [], []
    for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines()):
        row = json.loads(raw)
        tokens = tuple(tuple(t) for t in row["tokens"]) if row.get("tokens") else None
        examples.append(Example(id=-(i + 1), text=row["text"], spans=(), tokens=tokens))
        lines.append(row.get("line"))
    return examples, lines


# ----------------------------------------------------------------------------------- output


def output_row(example: Example, p: Prediction, line: int | None, run_id: int) -> dict:
    """One output object: what ``nerlab import --format jsonl`` reads (text, spans with their
    confidence, the sentence's own tokens) plus the sentence's confidence; not labelled, since
    no person checked it."""
    spans = []
    for s, c in zip(p.spans, p.span_confidences, strict=True):
        item = s.to_dict()
        if c is not None:
            item["confidence"] = round(float(c), 6)
        spans.append(item)
    row: dict = {"text": example.text, "spans": spans}
    if example.tokens:
        row["tokens"] = [{"start": s, "end": e, "text": example.text[s:e]} for s, e in example.tokens]
    row["labelled"] = False
    if p.confidence is not None:
        row["confidence"] = round(float(p.confidence), 6)
    if p.status != "ok":
        row["parse_status"] = p.status
    row["meta"] = {"run": run_id, **({"line": line} if line else {})}
    return row


def to_jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def jsonl_to_conll(text: str) -> str:
    """The JSONL output as CoNLL (IOB2, ``# text`` kept so that spacing survives)."""
    rows = []
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        obj = json.loads(raw)
        tokens = [(t["start"], t["end"]) for t in obj.get("tokens") or []] or None
        rows.append(ExportRow(
            id=i, number=i, text=obj["text"], tokens=tokens, split="", split_source="",
            labelled=False, annotator=None, created_at="", updated_at="",
            spans=[Span(s["start"], s["end"], s["label"]) for s in obj["spans"]]))
    return to_conll(rows)


def _atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file in its folder, then renamed)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_path(run_id: int, fmt: str = "jsonl") -> Path:
    """Where a predict job keeps its output (JSONL; CoNLL beside it when asked for)."""
    folder = config.runs_dir() / str(run_id)
    return folder / (OUTPUT_FILE if fmt == "jsonl" else "predictions.conll")


def output_text(run_id: int, fmt: str = "jsonl") -> str:
    """A finished predict job's output in ``fmt`` (``jsonl`` or ``conll``)."""
    path = output_path(run_id)
    if not path.is_file():
        raise NerlabError(f"Job {run_id} has no output (it has not finished, or failed).")
    text = path.read_text(encoding="utf-8")
    return text if fmt == "jsonl" else jsonl_to_conll(text)


# ------------------------------------------------------------------------------------- jobs


def _source(ctx: RunContext) -> dict:
    source_id = ctx.config.get("source_run")
    if not source_id:
        raise DataError("This job names no run to predict with.")
    return get_run(ctx.db, int(source_id))


def _load(ctx: RunContext, source: dict) -> Predictor:
    """Load the source run's model from its folder (its manifest written first if need be)."""
    group = getattr(ctx, "group", None)
    with ctx.interruptible():
        # Several processes (``nerlab predict --gpus N``): rank 0 writes the manifest if need be.
        folder = ensure_card(ctx.db, source) if group is None or group.main else None
        if group is not None and group.enabled:
            folder = Path(group.broadcast_object(str(folder)))
        ctx.phase(phases.LOAD)
        ctx.log(f"Loading the model of run {run_title(source)} ({source['kind']}) from {folder}…")
        started = time.perf_counter()
        predictor = load_predictor(folder, batch_size=ctx.config.get("batch_size") or None,
                                   processes=group.world if group is not None else 1)
        ctx.log(f"Loaded in {time.perf_counter() - started:.1f} s.")
        backend = getattr(predictor, "backend", None)
        if backend is not None:
            ctx.log(backend.line)
    return predictor


def predict_in_batches(ctx: RunContext, predictor: Predictor, examples: Sequence[Example],
                       each: Callable[[Sequence[int], list[Prediction]], None] | None = None,
                       ) -> list[Prediction]:
    """Predict examples in the model's batches, longest first (little padding for an LLM),
    reporting progress and checking for a stop between batches; ``each(indices, predictions)``
    after every batch. Returns the predictions in the examples' order.

    In a job over several processes (``ctx.group``) each predicts its share of every batch and
    rank 0 gathers them (:func:`core.prediction.predict.sharded_rounds`); the others get [].
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text), reverse=True)
    out: list[Prediction | None] = [None] * len(examples)
    step = max(1, predictor.batch_size)
    done = 0

    def keep(idx: Sequence[int], preds: list[Prediction]) -> None:
        nonlocal done
        for i, p in zip(idx, preds, strict=True):
            out[i] = p
        if each is not None:
            each(idx, preds)
        done += len(idx)
        ctx.phase_progress(done, len(examples))

    group = getattr(ctx, "group", None)
    if group is not None and group.enabled:
        rounds = sharded_rounds(group, order, step,
                                lambda mine: predictor.predict([examples[i] for i in mine]),
                                ctx.should_stop)
        for idx, preds in rounds:
            if group.main:
                keep(idx, preds)
        return [p for p in out if p is not None]
    with ctx.interruptible():
        for b in range(0, len(order), step):
            ctx.check_stop()
            idx = order[b:b + step]
            keep(idx, predictor.predict([examples[i] for i in idx]))
    return [p for p in out if p is not None]


def run_predict(ctx: RunContext) -> None:
    """A ``predict`` job: the input file through the source run's model, output at the end."""
    cfg = ctx.config
    source = _source(ctx)
    examples, lines = read_input(Path(ctx.run_dir) / INPUT_FILE)
    name = cfg.get("input_name") or ""
    ctx.plan_phases([phases.LOAD, predict_phase(len(examples), name), WRITE])
    predictor = _load(ctx, source)
    ctx.phase(predict_phase(len(examples), name))
    started = time.perf_counter()
    preds = predict_in_batches(ctx, predictor, examples)
    if not getattr(ctx, "group", None) or ctx.group.main:
        _write_predictions(ctx, source, examples, lines, preds, time.perf_counter() - started)


def _write_predictions(ctx: RunContext, source: dict, examples: Sequence[Example],
                       lines: Sequence[int | None], preds: Sequence[Prediction],
                       took: float) -> None:
    """Rank 0 of a ``predict`` job: the log lines and the output, written whole."""
    cfg = ctx.config
    ctx.log(f"Predicted {len(examples)} sentence(s) in {took:.1f} s "
            f"({len(examples) / max(took, 1e-9):.1f} sentences/s).")
    ctx.check_stop()
    ctx.phase(WRITE)
    rows = [output_row(ex, p, line, source["id"])
            for ex, p, line in zip(examples, preds, lines, strict=True)]
    text = to_jsonl(rows)
    own = output_path(ctx.run_id)
    _atomic(own, text)
    out, fmt = cfg.get("out"), cfg.get("out_format") or "jsonl"
    if fmt == "conll":
        _atomic(output_path(ctx.run_id, "conll"), jsonl_to_conll(text))
    if out:
        target = Path(out)
        _atomic(target, text if fmt == "jsonl" else jsonl_to_conll(text))
        ctx.log(f"Wrote {len(rows)} sentence(s) to {target}.")
    ctx.set_artifact(own)
    n_spans = sum(len(r["spans"]) for r in rows)
    ctx.log(f"{n_spans} entities in {len(rows)} sentence(s).")


def unlabelled_examples(db: Database, project_id: int, limit: int | None = None,
                        skip_run: int | None = None) -> list[Example]:
    """The project's sentences that wait to be labelled and whose suggestion may be replaced
    (none yet, or one nobody took), in project order; ``skip_run``: leave out those already
    suggested by that run."""
    rows = list(db.query(
        "SELECT s.id, s.text, s.tokens, s.split FROM sentences s LEFT JOIN suggestions sg ON"
        " sg.sentence_id = s.id WHERE s.project_id = ? AND s.status = 'unlabelled' AND"
        " sg.taken_at IS NULL AND (? IS NULL OR sg.run_id IS NULL OR sg.run_id != ?)"
        " ORDER BY s.position" + (" LIMIT ?" if limit else ""),
        [project_id, skip_run, skip_run] + ([int(limit)] if limit else [])))
    return [Example(id=r["id"], text=r["text"], spans=(), split=r["split"],
                    tokens=tuple(tuple(t) for t in json.loads(r["tokens"])) if r["tokens"] else None)
            for r in rows]


def suggest(ctx: RunContext, predictor: Predictor, source: dict, *, auto: bool,
            limit: int | None = None) -> int:
    """Predict the project's sentences that wait to be labelled and store the suggestions,
    batch by batch (a stop keeps those stored); return how many were stored."""
    project_id = ctx.run["project_id"]
    examples = unlabelled_examples(ctx.db, project_id, limit, None if auto else source["id"])
    ctx.phase(suggest_phase(len(examples)))
    name = run_title(source)
    stored = [0]

    def keep(idx: Sequence[int], preds: list[Prediction]) -> None:
        items = [suggestions.Suggested(examples[i].id, tuple(p.spans), tuple(p.span_confidences),
                                       p.confidence) for i, p in zip(idx, preds, strict=True)]
        stored[0] += suggestions.store(ctx.db, project_id, items, run_id=source["id"], model=name,
                                       source=suggestions.AUTO if auto else suggestions.RUN)

    started = time.perf_counter()
    predict_in_batches(ctx, predictor, examples, keep)
    ctx.log(f"Suggested labels for {stored[0]} of {len(examples)} sentence(s) waiting to be "
            f"labelled in {time.perf_counter() - started:.1f} s.")
    return stored[0]


def run_suggest(ctx: RunContext) -> None:
    """A ``suggest`` job: the project's unlabelled sentences through the source run's model."""
    source = _source(ctx)
    if source["project_id"] != ctx.run["project_id"]:
        raise DataError(f"Run {source['id']} belongs to another project.")
    ctx.plan_phases([phases.LOAD, suggest_phase(
        len(unlabelled_examples(ctx.db, ctx.run["project_id"], None, source["id"])))])
    predictor = _load(ctx, source)
    suggest(ctx, predictor, source, auto=False, limit=int(ctx.config.get("limit") or 0) or None)


def retire_auto_runs(db: Database, project_id: int, keep: int) -> list[int]:
    """Delete the project's earlier automatic CRF runs that have ended (their rows, predictions,
    scores and folders), keeping ``keep``: each retrain supersedes the one before. Their
    suggestions stay, with the model's name."""
    gone = [r["id"] for r in db.query(
        "SELECT id FROM runs WHERE project_id = ? AND kind = 'crf' AND id != ? AND status IN"
        " ('finished', 'failed', 'stopped') AND json_extract(config, '$.auto')", [project_id, keep])]
    if gone:
        marks = ",".join("?" * len(gone))
        with db.atomic():
            db.execute(f"DELETE FROM runs WHERE id IN ({marks})", gone)
        for run_id in gone:
            shutil.rmtree(config.runs_dir() / str(run_id), ignore_errors=True)
    return gone
