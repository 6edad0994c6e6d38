"""Baselines, run by the worker like any other run: what fine-tuning has to beat.

- ``zero-shot``: the base model with the instruction template and no examples.
- ``few-shot``: the base model with ``shots`` examples in the prompt, the same for every
  sentence (``selection="fixed"``) or the most similar training sentences
  (``selection="retrieved"``, the template's retrieval).
- ``crf``: a linear-chain CRF (sklearn-crfsuite) on word-shape, affix and context features,
  trained on the labelled training sentences in seconds on a CPU.
- ``encoder``: the bundled all-MiniLM-L6-v2 fine-tuned for token classification
  (:mod:`core.prediction.encoder`), minutes on a CPU for a few hundred sentences.

Each predicts the labelled sentences of its splits (default dev and test), stores them in
``predictions`` and scores them (:func:`core.evaluation.run_scores.evaluate_run`). Settings come from the
run's config; :data:`DEFAULTS` lists them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlite_utils import Database

from core import config
from core.data import phases, projects
from core.data.phases import Phase, predict_phase
from core.data.runs import RunContext
from core.errors import NerlabError
from core.evaluation import run_scores, scoring
from core.models import loader
from core.models.loader import set_threads
from core.prediction import bulk, predict
from core.prediction.crf import run_crf
from core.prediction.decoding import DEFAULT_BATCH_SIZE
from core.prediction.encoder import EncoderSettings
from core.prediction.encoder_train import planned_phases as encoder_phases
from core.prediction.encoder_train import run_encoder
from core.prediction.predict import PredictSettings
from core.prediction.predictors import CrfPredictor
from core.prompts.plan import PromptPlan, plan_for_run

KINDS = ("zero-shot", "few-shot", "crf", "encoder")
#: The kinds that prompt a model with the project's template.
PROMPTED = ("zero-shot", "few-shot")


KIND_TITLES = {
    "zero-shot": "Zero-shot base model",
    "few-shot": "Few-shot base model",
    "crf": "CRF (word features)",
    "encoder": "Encoder (fine-tuned MiniLM)",
}


#: Settings each kind reads from the run's config, with their defaults.
DEFAULTS: dict[str, dict[str, Any]] = {
    "zero-shot": {"base_model": config.BUNDLED_MODEL, "splits": ["dev", "test"], "limit": 0,
                  "eval_batch_size": 16, "max_new_tokens": 0, "constrained": True},
    "few-shot": {"base_model": config.BUNDLED_MODEL, "shots": 5, "selection": "fixed",
                 "splits": ["dev", "test"], "limit": 0, "eval_batch_size": 16, "max_new_tokens": 0,
                 "constrained": True},
    "crf": {"c1": 0.1, "c2": 0.05, "max_iterations": 100, "splits": ["dev", "test"], "limit": 0,
            "auto": False, "suggest": False},
    "encoder": {**EncoderSettings().to_dict(), "splits": ["dev", "test"], "limit": 0},
}


def settings(kind: str, cfg: dict | None = None) -> dict:
    """The kind's defaults overlaid with the run's config; unknown kinds are an error."""
    if kind not in DEFAULTS:
        raise NerlabError(f"Unknown baseline kind {kind!r}; use one of {', '.join(KINDS)}.")
    out = dict(DEFAULTS[kind])
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    if kind == "zero-shot":
        out["shots"] = 0
    if kind == "few-shot":
        out["shots"] = int(out["shots"])
        if out["shots"] < 1:
            raise NerlabError(f"A few-shot baseline needs at least 1 example, got {out['shots']}.")
        if out["selection"] not in ("fixed", "retrieved"):
            raise NerlabError(f"Example selection {out['selection']!r} is not 'fixed' or 'retrieved'.")
    if kind == "encoder":
        out.update(EncoderSettings.from_dict(out).to_dict())  # checked, typed
    bad = [s for s in out["splits"] if s not in config.SPLITS]
    if bad:
        raise NerlabError(f"Split(s) {', '.join(bad)} are not among {', '.join(config.SPLITS)}.")
    return out


def writes_answers(kind: str) -> bool:
    """Whether runs of this kind answer in text that is parsed (an LLM), not tags."""
    return kind == "train" or kind in PROMPTED


def predict_settings(cfg: dict) -> PredictSettings:
    """How an LLM baseline with these settings (from :func:`settings`) predicts."""
    return PredictSettings(splits=tuple(cfg["splits"]), limit=int(cfg.get("limit") or 0) or None,
                           batch_size=int(cfg.get("eval_batch_size") or DEFAULT_BATCH_SIZE),
                           max_new_tokens=int(cfg.get("max_new_tokens") or 0) or None,
                           constrained=bool(cfg.get("constrained", True)))


def run_plan(db: Database, run: dict) -> PromptPlan:
    """The prompt plan a run predicts with: an LLM baseline's examples, else its template's."""
    if run["kind"] in PROMPTED:
        cfg = settings(run["kind"], run["config"])
        return plan_for_run(db, run, shots=cfg["shots"], selection=cfg.get("selection"))
    return plan_for_run(db, run)


def planned_phases(kind: str, cfg: dict, sizes: dict[str, int], convert: bool) -> list[Phase]:
    """The phases of a baseline run: load its model (or train the CRF or the encoder), predict
    each split, score."""
    limit = int(cfg.get("limit") or 0)
    splits = [s for s in cfg["splits"] if sizes.get(s)]
    if kind == "encoder":
        return [*encoder_phases(cfg, sizes), replace(phases.SCORE, total=len(splits))]
    if kind == "crf":
        out = [CRF_TRAIN]
    else:
        out = ([phases.CONVERT] if convert else []) + [phases.LOAD]
    out += [predict_phase(s, min(sizes[s], limit) if limit else sizes[s]) for s in splits]
    out.append(replace(phases.SCORE, total=len(splits)))
    if cfg.get("suggest"):
        out.append(bulk.suggest_phase(sizes.get("unlabelled", 0)))
    return out


#: The CRF's training phase.
CRF_TRAIN = Phase("crf_train", "Train the CRF")


def run(ctx: RunContext) -> None:
    """Execute a baseline run (called by the worker, which owns the run's status)."""
    kind = ctx.run["kind"]
    cfg = settings(kind, ctx.config)
    sizes = {s: len(projects.examples(ctx.db, ctx.run["project_id"], split=s)) for s in cfg["splits"]}
    base = ctx.run.get("base_model") or cfg.get("base_model") or ""
    convert = kind in PROMPTED and loader.needs_conversion(base)
    if cfg.get("suggest"):
        sizes["unlabelled"] = len(bulk.unlabelled_examples(ctx.db, ctx.run["project_id"]))
    ctx.plan_phases(planned_phases(kind, cfg, sizes, convert))
    model = None
    if kind == "crf":
        model = run_crf(ctx, cfg, phase=CRF_TRAIN)
    elif kind == "encoder":
        if run_encoder(ctx, cfg) is None or ctx.should_stop():
            return  # stopped while training: the model is saved, nothing was predicted
    else:
        run_llm(ctx, cfg)
    with ctx.interruptible():
        score_run(ctx, cfg["splits"])
    if cfg.get("suggest") and model is not None:
        # The automatic CRF of the Label page: pre-label the queue with the model just trained.
        labels = [r["name"] for r in projects.list_labels(ctx.db, ctx.run["project_id"])]
        bulk.suggest(ctx, CrfPredictor(model, labels), ctx.run, auto=bool(cfg.get("auto")))
        if cfg.get("auto"):
            bulk.retire_auto_runs(ctx.db, ctx.run["project_id"], keep=ctx.run_id)


def run_llm(ctx: RunContext, cfg: dict) -> None:
    """Zero- or few-shot predictions of the base model."""
    with ctx.interruptible():
        base = ctx.run.get("base_model") or cfg["base_model"]
        if loader.needs_conversion(base):
            ctx.phase(phases.CONVERT)
            ctx.log("First use of the bundled model: converting it (once) to safetensors.")
            loader.ensure_bundled_model(progress=ctx.phase_progress)
        ctx.phase(phases.LOAD)
        set_threads()
        plan = run_plan(ctx.db, ctx.run)
        ctx.log(f"Loading {base}…")
        started = time.perf_counter()
        model, tokenizer = loader.load_model(base)
        ctx.log(f"Loaded in {time.perf_counter() - started:.1f} s on {loader.device_info().describe()}.")
        predict.predict_run(ctx, model, tokenizer, plan, predict_settings(cfg))


def score_run(ctx: RunContext, splits: Sequence[str] | None = None) -> None:
    """The scoring phase of a run: score its stored predictions, a line per split in the log."""
    have = run_scores.prediction_splits(ctx.db, ctx.run_id)
    wanted = [s for s in (splits or have) if s in have]
    ctx.phase(phases.SCORE, total=len(wanted))
    for i, split in enumerate(wanted):
        by_mode = run_scores.evaluate_run(ctx.db, ctx.run_id, splits=[split]).get(split)
        if by_mode:
            ctx.log(f"{split}: {scoring.summary_line(by_mode['default'])}")
        ctx.phase_progress(i + 1, len(wanted))
