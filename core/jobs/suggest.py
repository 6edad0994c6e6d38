"""Closing the loop: prediction jobs (``nerlab predict``, the Data page), and the Label page's
suggestions: where they come from, the automatic CRF retrained as the annotator labels, and a
suggestion made at once for a sentence that has none.

Where a project's suggestions come from (:func:`resolve_source`): what the project chose
(:func:`core.data.suggestions.set_settings`), else its best finished run (by dev micro-F1, else
test), else the automatic CRF. The automatic CRF is a CRF run (``config.auto``) started in the
background whenever ``auto_every`` more training sentences were labelled since the last one; it
trains in seconds, scores itself on dev and test, pre-labels every sentence waiting to be
labelled, and replaces the automatic CRF before it. Light runs (CRF) start at once, beside a
fine-tuning run that holds the machine (:func:`core.jobs.launcher.is_light`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlite_utils import Database

from core.data import suggestions
from core.data.records import SentenceRecord
from core.data.runs import create_run, get_run, run_dir
from core.data.spans import Example
from core.errors import NerlabError
from core.jobs import launcher
from core.prediction import baselines, bulk, predictors
from core.prediction.run_folder import check_predictable, ensure_card, run_title

AUTO_TITLE = "Automatic CRF"
#: What suggests in a project that chose nothing and has no finished run: ``auto`` (the
#: automatic CRF; the default) or ``off``.
DEFAULT_ENV = "NERLAB_SUGGEST_DEFAULT"


# ------------------------------------------------------------------------------ prediction jobs


def submit_predict(db: Database, run_id: int, records: Sequence[SentenceRecord], input_name: str,
                   out: str | None = None, out_format: str = "jsonl",
                   batch_size: int | None = None, gpus: int = 1) -> tuple[int, bool]:
    """Start (or queue) a job predicting ``records`` (parsed by the importers; not added to the
    project) with run ``run_id``'s model; return ``(job id, started now)``. The output goes to
    the job's folder and, when given, to ``out`` (written whole at the end, or not at all).
    ``gpus`` > 1: an LLM's sentences are shared by that many processes (``accelerate launch``)."""
    source = get_run(db, run_id)
    check_predictable(source)
    if out_format not in bulk.OUTPUT_FORMATS:
        raise NerlabError(f"Output format {out_format!r} is not one of "
                          f"{', '.join(bulk.OUTPUT_FORMATS)}.")
    if gpus > 1 and source["kind"] == "crf":
        raise NerlabError("A CRF predicts on the CPU in one process: leave out --gpus.")
    n = sum(1 for r in records if r.text.strip())
    if not n:
        raise NerlabError(f"{input_name} holds no sentences.")
    cfg = {"source_run": source["id"], "source_kind": source["kind"], "input_name": input_name,
           "sentences": n, "out": out, "out_format": out_format, "batch_size": batch_size,
           "gpus": max(1, int(gpus))}
    job = create_run(db, source["project_id"], bulk.PREDICT, cfg,
                     name=f"predict {input_name} with {run_title(source)}")
    try:
        bulk.save_input(records, run_dir(job) / bulk.INPUT_FILE)
    except BaseException:
        db.execute("DELETE FROM runs WHERE id = ?", [job])
        db.conn.commit()
        raise
    return job, launcher.launch(db, job)


def submit_suggest(db: Database, project_id: int, run_id: int, limit: int = 0) -> tuple[int, bool]:
    """Start (or queue) a job pre-labelling the project's unlabelled sentences with run
    ``run_id``'s model; return ``(job id, started now)``."""
    source = get_run(db, run_id)
    if source["project_id"] != project_id:
        raise NerlabError(f"Run {run_id} belongs to another project.")
    check_predictable(source)
    cfg = {"source_run": source["id"], "source_kind": source["kind"], "limit": int(limit or 0)}
    job = create_run(db, project_id, bulk.SUGGEST, cfg, name=f"suggest with {run_title(source)}")
    return job, launcher.launch(db, job)


# ------------------------------------------------------------------------------------ sources


def is_auto(run: Mapping[str, Any]) -> bool:
    cfg = run.get("config") or {}
    return run["kind"] == "crf" and bool(cfg.get("auto"))


def model_runs(db: Database, project_id: int) -> list[dict]:
    """The project's runs that can suggest labels (finished or stopped, with a model; the
    automatic CRF aside), newest first, each with ``f1`` ({split: micro-F1} where scored)."""
    rows = []
    for r in db.query("SELECT * FROM runs WHERE project_id = ? AND status IN ('finished',"
                      " 'stopped') ORDER BY id DESC", [project_id]):
        run = get_run(db, r["id"])
        if run["kind"] not in predictors.kinds() or is_auto(run):
            continue
        try:
            check_predictable(run)
        except NerlabError:
            continue
        run["f1"] = {}
        for e in db.query("SELECT split, metrics FROM evaluations WHERE run_id = ? AND mode ="
                          " 'default'", [run["id"]]):
            try:
                run["f1"][e["split"]] = json.loads(e["metrics"])["micro"]["f1"]
            except (ValueError, KeyError, TypeError):
                continue
        rows.append(run)
    return rows


def best_run(db: Database, project_id: int) -> dict | None:
    """The project's best run for suggestions: highest dev micro-F1 (else test), newest first."""
    scored = [r for r in model_runs(db, project_id) if r["f1"]]
    if not scored:
        return None
    return max(scored, key=lambda r: (r["f1"].get("dev", -1.0), r["f1"].get("test", -1.0), r["id"]))


def resolve_source(db: Database, project_id: int) -> str:
    """Where the project's suggestions come from now: ``off``, ``auto`` or ``run:ID``."""
    chosen = suggestions.get_settings(db, project_id)["suggest_from"]
    kind, run_id = suggestions.parse_source(chosen)
    if kind == suggestions.RUN:
        try:
            run = get_run(db, run_id)
            if run["project_id"] == project_id:
                check_predictable(run)
                return chosen
        except NerlabError:
            pass  # gone, or failed: fall back to the default
    elif kind:
        return chosen
    best = best_run(db, project_id)
    if best:
        return suggestions.run_source(best["id"])
    fallback = os.environ.get(DEFAULT_ENV, suggestions.AUTO).strip()
    return fallback if fallback in (suggestions.AUTO, suggestions.OFF) else suggestions.AUTO


def source_title(db: Database, source: str) -> str:
    kind, run_id = suggestions.parse_source(source)
    if kind == suggestions.AUTO:
        return AUTO_TITLE
    if kind == suggestions.RUN:
        try:
            return run_title(get_run(db, run_id))
        except NerlabError:
            return f"run {run_id}"
    return "no model"


def source_run(db: Database, project_id: int, source: str) -> dict | None:
    """The run whose model makes the suggestions of ``source`` (the automatic CRF: its latest
    finished run), or None."""
    kind, run_id = suggestions.parse_source(source)
    if kind == suggestions.RUN:
        return get_run(db, run_id)
    if kind == suggestions.AUTO:
        return auto_state(db, project_id)["latest"]
    return None


# --------------------------------------------------------------------------------- automatic CRF


def _labelled_train(db: Database, project_id: int) -> int:
    return db.execute("SELECT COUNT(*) FROM sentences WHERE project_id = ? AND split = 'train'"
                      " AND status = 'labelled'", [project_id]).fetchone()[0]


def auto_state(db: Database, project_id: int) -> dict:
    """The automatic CRF: ``latest`` (its newest finished run), ``active`` (one queued or
    running), ``labelled`` (training sentences labelled now), ``trained_on`` (by the latest),
    ``every``, ``due`` (a retrain should start) and ``next_at`` (labelled count that makes it
    due)."""
    launcher.refresh(db, start_queued=False)
    runs = [get_run(db, r["id"]) for r in db.query(
        "SELECT id FROM runs WHERE project_id = ? AND kind = 'crf' AND json_extract(config,"
        " '$.auto') ORDER BY id DESC", [project_id])]
    latest = next((r for r in runs if r["status"] == "finished"), None)
    active = next((r for r in runs if r["status"] in ("queued", "running")), None)
    tried = runs[0]["config"].get("trained_on", 0) if runs else 0
    every = suggestions.get_settings(db, project_id)["auto_every"]
    labelled = _labelled_train(db, project_id)
    next_at = max(every, tried + every) if runs else every
    return {"latest": latest, "active": active, "labelled": labelled, "every": every,
            "trained_on": latest["config"].get("trained_on", 0) if latest else 0,
            "due": active is None and labelled >= next_at, "next_at": next_at}


def retrain_auto(db: Database, project_id: int, force: bool = False) -> int | None:
    """Start the automatic CRF when it is due (or now, with ``force``, if the project has
    labelled training sentences and none is training); return its run id."""
    state = auto_state(db, project_id)
    if state["active"] is not None or not (state["due"] or (force and state["labelled"])):
        return None
    cfg = baselines.settings("crf", {"auto": True, "suggest": True,
                                     "trained_on": state["labelled"]})
    run_id, _started = launcher.submit(db, project_id, "crf", cfg,
                                       name=f"{AUTO_TITLE} · {state['labelled']} sentences")
    return run_id


# ------------------------------------------------------------------------- suggestions at once

#: Loaded light models of this process: folder → (modified time, predictor).
_LOADED: dict[str, tuple[float, Any]] = {}


def _quick_predictor(db: Database, run: dict) -> Any:
    folder = ensure_card(db, run)
    stamp = os.stat(folder / "nerlab.json").st_mtime
    key = str(folder)
    if key not in _LOADED or _LOADED[key][0] != stamp:
        _LOADED[key] = (stamp, predictors.load_predictor(folder))
    return _LOADED[key][1]


def ensure_suggestion(db: Database, project_id: int, sentence: Mapping[str, Any],
                      source: str) -> bool:
    """Make the suggestion of a sentence waiting to be labelled now, when ``source`` is a light
    model (a CRF: milliseconds) and the sentence has none from it (e.g. imported after the last
    pre-labelling); True when one was stored."""
    if sentence["status"] != "unlabelled":
        return False
    row = suggestions.get(db, sentence["id"])
    if row is not None and (row["taken_at"] or suggestions.matches(row, source)):
        return False
    run = source_run(db, project_id, source)
    if run is None or run["kind"] != "crf":
        return False
    predictor = _quick_predictor(db, run)
    tokens = tuple(tuple(t) for t in json.loads(sentence["tokens"])) if sentence["tokens"] else None
    p = predictor.predict([Example(id=sentence["id"], text=sentence["text"], spans=(),
                                   tokens=tokens)])[0]
    item = suggestions.Suggested(sentence["id"], tuple(p.spans), tuple(p.span_confidences),
                                 p.confidence)
    kind = suggestions.AUTO if suggestions.parse_source(source)[0] == suggestions.AUTO else \
        suggestions.RUN
    return bool(suggestions.store(db, project_id, [item], source=kind, run_id=run["id"],
                                  model=run_title(run)))


def pending_count(db: Database, project_id: int, source: str) -> dict:
    """Of the sentences waiting to be labelled: how many have a suggestion from ``source``."""
    rows = [dict(r) for r in db.query(
        "SELECT sg.source, sg.run_id FROM sentences s LEFT JOIN suggestions sg ON sg.sentence_id"
        " = s.id WHERE s.project_id = ? AND s.status = 'unlabelled'", [project_id])]
    have = sum(1 for r in rows if r["source"] and suggestions.matches(r, source))
    return {"unlabelled": len(rows), "suggested": have}

