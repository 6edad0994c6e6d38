"""The worker's entry for a training run: data, model, loop, save, then predict and score."""

from __future__ import annotations

import contextlib
import gc
import json
from dataclasses import replace

from core.data import phases, projects
from core.data.phases import Phase, predict_phase
from core.data.runs import RunContext
from core.errors import DataError
from core.models import loader
from core.models.adapters import ADAPTER_DIR, save_adapter
from core.models.loader import set_threads
from core.models.run_card import FORMAT, portable_base
from core.prediction import baselines, predict
from core.prediction.predict import PredictSettings
from core.prompts.plan import plan_for_run
from core.training.batches import encode_examples, plan_steps
from core.training.distributed import Group
from core.training.engine import restore_adapter
from core.training.loop import Hooks, build_model, train_loop
from core.training.runconfig import RunConfig


def planned_phases(cfg: RunConfig, n_train: int, n_dev: int, n_test: int,
                   convert: bool) -> list[Phase]:
    """The phases a training run goes through, with their sizes where they are known."""
    _per_epoch, steps = plan_steps(n_train, cfg)
    out = [phases.CONVERT] if convert else []
    out += [phases.LOAD, phases.PREPARE, replace(phases.TRAIN, total=steps)]
    dev_loss_n = min(n_dev, cfg.train.dev_loss_sentences)
    if dev_loss_n:
        out.append(replace(phases.DEV_LOSS, total=dev_loss_n))
    out.append(phases.SAVE)
    if cfg.train.eval_after:
        limit = cfg.train.eval_limit or None
        sizes = {"dev": n_dev, "test": n_test}
        splits = [s for s in PredictSettings().splits if sizes.get(s)]
        out += [predict_phase(s, min(sizes[s], limit or sizes[s])) for s in splits]
        out.append(replace(phases.SCORE, total=len(splits)))
    return out


def run(ctx: RunContext) -> None:
    """Fine-tune as the run's config says, save the adapter, then predict and score dev/test.

    ``ctx`` is the worker's :class:`core.data.runs.RunContext`. Every phase reports its
    progress (:mod:`core.data.phases`). A stop while the model loads ends the run there; during
    training it ends training between steps, the adapter is saved and the run ends "stopped"
    (the worker decides the status); while predicting, the adapter and the predictions stored
    so far are kept. In a multi-process run (``ctx.group``, several GPUs) every process trains
    its share; rank 0 alone saves and reports; then every process predicts its share of dev/test
    and rank 0 gathers, stores and scores the predictions.
    """
    db = ctx.db
    group: Group = ctx.group
    cfg = RunConfig.from_dict(ctx.config)
    project_id = ctx.run["project_id"]
    with ctx.interruptible():
        plan = plan_for_run(db, ctx.run)
        tpl, labels = plan.template, plan.labels
        if not labels:
            raise DataError("The project has no entity types.")
        train_ex = projects.examples(db, project_id, split="train")
        dev_ex = projects.examples(db, project_id, split="dev")
        n_test = len(projects.examples(db, project_id, split="test"))
        if not train_ex:
            raise DataError("The project has no labelled training sentences.")
        convert = loader.needs_conversion(cfg.base_model)
        ctx.plan_phases(planned_phases(cfg, len(train_ex), len(dev_ex), n_test, convert))
        ctx.phase(phases.CONVERT if convert else phases.LOAD)
        threads = set_threads()
        ctx.log(f"Template {tpl.name!r} v{tpl.version}; {len(train_ex)} training and "
                f"{len(dev_ex)} dev sentences; {len(labels)} entity types; {threads} CPU threads.")
        info = loader.device_info()
        ctx.log(f"Device: {info.describe()}"
                + (f"; {group.world} processes ({group.backend}), one per "
                   + ("GPU" if info.device == "cuda" else "share of the CPU") if group.enabled else "")
                + ".")
        if convert:
            ctx.log("First use of the bundled model: converting it (once) to safetensors.")
            loader.ensure_bundled_model(progress=ctx.phase_progress)
            ctx.phase(phases.LOAD)
        model, tokenizer, dtype = build_model(cfg, info.device, log=ctx.log, group=group)
        ctx.phase(phases.PREPARE)
        shots = (lambda ex: plan.shots_for(ex.id, ex.text)) if plan.shots else None
        try:
            train_enc, stats = encode_examples(tokenizer, tpl, train_ex, labels,
                                               cfg.train.max_length, shots)
            dev_enc, _dev_stats = encode_examples(tokenizer, tpl,
                                                  dev_ex[: cfg.train.dev_loss_sentences], labels,
                                                  cfg.train.max_length, shots)
        except (KeyError, ValueError) as exc:
            raise DataError(f"Could not render the training data with the template: {exc}") from exc
    if stats.truncated or stats.skipped:
        ctx.log(f"Max length {cfg.train.max_length}: {stats.truncated} answers cut short, "
                f"{stats.skipped} sentences skipped (prompt too long). Raise max length to keep them.")
    if not train_enc:
        raise DataError(f"Every training prompt is longer than max length {cfg.train.max_length} "
                        "tokens; raise max length.")
    lengths = sorted(len(e.ids) for e in train_enc)
    ctx.log(f"Tokens per example: median {lengths[len(lengths) // 2]}, max {lengths[-1]}.")
    folder = ctx.run_dir / ADAPTER_DIR
    base = portable_base(cfg.base_model)
    meta = {
        "nerlab_format": FORMAT, "kind": "train", "run_id": ctx.run_id,
        "run_name": ctx.run.get("name", ""), "project": projects.get_project(db, project_id)["name"],
        "config": cfg.to_dict(), "template": tpl.to_dict(), "template_version": tpl.version,
        "labels": [r["name"] for r in labels],
        "entity_types": [{"name": r["name"], "description": r.get("description") or "",
                          "color": r.get("color") or ""} for r in labels],
        "base_model": base["name"] or cfg.base_model, "base_model_info": base,
        "prompt": {"shots": plan.shots, "selection": plan.selection},
        "decoding": {"constrained": cfg.train.constrained},
        "device": info.device, "dtype": dtype, "processes": group.world,
    }

    def save(reason: str) -> None:
        if reason == "epoch":
            ctx.phase_progress(None, detail="saving the adapter (end of an epoch)")
        save_adapter(model, tokenizer, folder, {**meta, "saved_because": reason})
        ctx.set_artifact(folder)
        ctx.log(f"Adapter saved ({reason}) to {folder}.")

    if group.main:
        hooks = Hooks(log=ctx.log, progress=ctx.progress, should_stop=ctx.should_stop, save=save,
                      phase=ctx.phase, phase_progress=ctx.phase_progress,
                      interruptible=ctx.interruptible)
    else:
        hooks = Hooks(log=ctx.log, should_stop=ctx.should_stop)
    result = train_loop(model, tokenizer, train_enc, dev_enc, cfg, info.device, dtype, hooks,
                        group)
    result.truncated, result.skipped = stats.truncated, stats.skipped
    if result.adapter_state is not None:
        # The weights were sharded (FSDP): save and predict with a whole model and the adapter
        # gathered from the shards.
        model = None
        gc.collect()
        model, _tok, _dtype = build_model(cfg, info.device, log=ctx.log, group=group)
        restore_adapter(model, result.adapter_state)
        ctx.log("The adapter was gathered from the processes' shards onto a whole model.")
    if group.main:
        go_on = _save_result(ctx, cfg, result, meta, save)
    else:
        go_on = False
    # Rank 0 decides whether the run predicts (not after a stop); all processes then share it.
    if not group.broadcast_object(go_on):
        return
    # One process: a stop ends the prediction at once. Several: at the next batch, all together.
    with ctx.interruptible() if not group.enabled else contextlib.nullcontext():
        prepare_for_prediction(model, tokenizer, cfg, info.device, dtype, ctx.log)
        ctx.log("Predicting the dev and test splits with the trained adapter"
                + (f", each batch shared by {group.world} processes." if group.enabled else "."))
        predict.predict_run(ctx, model, tokenizer, plan, PredictSettings(
            limit=cfg.train.eval_limit or None, progress_rows=False,
            constrained=cfg.train.constrained))
        if group.main:
            baselines.score_run(ctx)


def _save_result(ctx: RunContext, cfg: RunConfig, result, meta: dict, save) -> bool:
    """Rank 0 after training: the last adapter and ``result.json``; True when the run goes on
    to predict and score dev/test."""
    meta["result"] = {
        "steps": result.steps, "total_steps": result.total_steps, "epochs": result.epochs_done,
        "train_loss": result.train_loss, "dev_losses": result.dev_losses,
        "tokens_per_s": result.tokens_per_s, "seconds": result.seconds,
        "stopped": result.stopped,
    }
    if result.stopped:
        ctx.end_phase("stopped")  # training (or the dev loss after it) was cut short
    if result.steps:
        ctx.phase(phases.SAVE)
        save("stop" if result.stopped else "end")
        ctx.end_phase()
    else:
        ctx.log("Stopped before the first training step ended: no adapter to save.")
    (ctx.run_dir / "result.json").write_text(json.dumps(meta["result"], indent=2))
    if result.stopped or ctx.should_stop():
        return False
    if not cfg.train.eval_after:
        ctx.log("Evaluation after training is off.")
        return False
    return True


def prepare_for_prediction(model, tokenizer, cfg: RunConfig, device: str, dtype: str,
                           log) -> None:
    """The trained model as it predicts: eval mode, the key/value cache on, float32 arithmetic
    on a CPU, the adapter folded in, prompts padded on the left."""
    model.eval()
    model.config.use_cache = True
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    if device != "cuda" and dtype == "bfloat16":
        # float32 arithmetic for predicting on a CPU: bf16's rounding differs between one
        # token and several at once, so drafts verified in one pass could change an answer.
        model.float()
    merge_for_prediction(model, cfg, log)
    tokenizer.padding_side = "left"


def merge_for_prediction(model, cfg: RunConfig, log) -> None:
    """Fold the trained adapter into the base weights before predicting (the saved adapter is
    unchanged): ~1.5× faster generation on a CPU, where the 210 small LoRA products of each
    forward pass cost more than their arithmetic; the same answers as :func:`core.models.adapters.
    load_adapter` with ``merge=True`` gives later. Not for QLoRA's 4-bit weights."""
    if cfg.quantization or not hasattr(model, "merge_adapter"):
        return
    try:
        model.merge_adapter()
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # predict unmerged instead
        log(f"Predicting with the adapter unmerged ({exc}).")
