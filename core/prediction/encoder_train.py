"""Training the encoder baseline (:mod:`core.prediction.encoder`), and the encoder as a run.

:func:`train_encoder` fine-tunes MiniLM for token classification on the examples' IOB2 tags (it
is :func:`prepare` — load the model, cut the sentences into windows — then :func:`fit`).
:func:`run_encoder` is what the worker runs for a baseline of kind ``encoder``: load, train, save
the model into the run's folder, predict dev and test, each a phase with its progress; a stop is
honoured in every phase.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import projects
from core.data.phases import Phase, predict_phase
from core.data.runs import RunContext
from core.data.spans import Example, Span, bio_to_spans, spans_to_bio
from core.errors import DataError, ModelError, StopRequested
from core.models.loader import set_threads
from core.prediction import predict
from core.prediction.encoder import (
    IGNORE_INDEX,
    EncoderBundle,
    EncoderSettings,
    Item,
    collate,
    make_items,
    piece_budget,
    predict_encoder,
    quiet_transformers,
    resolve_base_model,
    tag_list,
)
from core.prediction.encoder_folder import ENCODER_DIR, save_encoder

#: The phases of an encoder run before it predicts (the train phase's size is known once the
#: sentences are cut into windows).
LOAD = Phase("encoder_load", "Load the encoder, prepare the data")
TRAIN = Phase("encoder_train", "Train the encoder", None, "steps")
SAVE = Phase("encoder_save", "Save the encoder")


# ----------------------------------------------------------------------------------- training


def class_weights(items: Sequence[Item], n_tags: int, how: str):
    """Loss weight per tag (see :attr:`EncoderSettings.class_weighting`), or None."""
    import torch

    if how == "none":
        return None
    counts = torch.zeros(n_tags)
    for it in items:
        for label in it.labels or []:
            if label != IGNORE_INDEX:
                counts[label] += 1
    counts = counts.clamp(min=1)
    power = 0.5 if how == "sqrt" else 1.0
    return (counts[0] / counts) ** power


def _optimizer(model: Any, settings: EncoderSettings):
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.split(".")[0] == "classifier"
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups.setdefault((is_head, no_decay), []).append(param)
    params = [{"params": ps, "lr": settings.lr * (settings.head_lr_scale if is_head else 1.0),
               "weight_decay": 0.0 if no_decay else settings.weight_decay}
              for (is_head, no_decay), ps in sorted(groups.items())]
    return torch.optim.AdamW(params, lr=settings.lr)


def linear_lr_factor(step: int, warmup: int, total: int) -> float:
    """transformers' linear warm-up then linear decay to 0, step for step."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def linear_schedule_with_warmup(optimizer: Any, warmup: int, total: int):
    """The schedule of ``transformers.get_linear_schedule_with_warmup`` without importing
    ``transformers.optimization``, which imports peft and bitsandbytes (20-35 s on a busy
    2-core machine) that an encoder never uses. A test checks both agree."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_lr_factor(step, warmup, total))


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """A model ready to train: MiniLM with a new head, the windows to train on, the plan."""

    model: Any
    tokenizer: Any
    tags: list[str]
    settings: EncoderSettings
    items: list[Item]
    train_sentences: int
    batches_per_epoch: int
    total_steps: int
    threads: int
    load_seconds: float


def prepare(train: Sequence[Example], settings: EncoderSettings | None = None,
            labels: Sequence[str] | None = None) -> Prepared:
    """Load the base encoder with a new token-classification head for ``labels`` (default: the
    training spans' types, sorted) and cut the training sentences into labelled windows.

    Raises:
        DataError: no training sentence has tokens.
        ModelError: the base model cannot be loaded or has no fast tokenizer.
    """
    settings = settings or EncoderSettings()
    usable = [e for e in train if e.token_offsets()]
    if not usable:
        raise DataError("The encoder needs labelled training sentences; there are none.")
    types = list(dict.fromkeys(labels)) if labels else sorted({s.label for e in usable for s in e.spans})
    tags = tag_list(types)
    tag_ids = {t: i for i, t in enumerate(tags)}
    started = time.perf_counter()
    threads = set_threads()
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    _seed_everything(settings.seed)
    path = resolve_base_model(settings.base_model)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForTokenClassification.from_pretrained(
                path, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id=tag_ids)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"Cannot load the encoder {settings.base_model!r}: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"The encoder {settings.base_model!r} has no fast tokenizer (needed to "
                         "map word pieces to words).")
    items, _ = make_items(tokenizer, usable, piece_budget(model, settings), tag_ids)
    per_epoch = math.ceil(len(items) / settings.batch_size)
    total = per_epoch * settings.epochs
    if settings.max_steps > 0:
        total = min(total, int(settings.max_steps))
    return Prepared(model, tokenizer, tags, settings, items, len(usable), per_epoch, total,
                    threads, time.perf_counter() - started)


def fit(
    prep: Prepared,
    dev: Sequence[Example] | None = None,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    interruptible: Callable[[], AbstractContextManager[None]] | None = None,
) -> EncoderBundle:
    """Train the prepared model; return the trained bundle.

    Args:
        dev: labelled dev sentences, scored (exact-span micro F1) after every epoch and logged;
            with ``settings.select_best`` the best epoch's weights are kept.
        progress: called after every optimiser step as ``progress(step, total, loss=, lr=,
            epoch=, eta_s=)``.
        should_stop: checked before every step (and between the batches of a dev score); when
            it returns True training ends and the bundle (``bundle.stopped``) holds the weights
            as the last finished step left them.
        interruptible: a context manager factory (the worker's ``ctx.interruptible``) that a
            stop may cut short by raising :class:`StopRequested` inside it; the forward and
            backward passes run inside one, so a stop need not wait for the step to end (the
            step is dropped: the weights change only in the optimiser's update).
        log: receives a few lines of news (sizes, epochs, dev F1).
    """
    import torch

    settings, model, tokenizer, tags = prep.settings, prep.model, prep.tokenizer, prep.tags
    say = log or (lambda _msg: None)
    guard = interruptible or contextlib.nullcontext
    items, total, per_epoch = prep.items, prep.total_steps, prep.batches_per_epoch
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = _optimizer(model, settings)
    scheduler = linear_schedule_with_warmup(optimizer, int(round(settings.warmup_ratio * total)), total)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(items, len(tags), settings.class_weighting),
                                        ignore_index=IGNORE_INDEX)
    types = [t[2:] for t in tags if t.startswith("B-")]
    say(f"Training {settings.base_model} for token classification ({', '.join(types) or 'no entity types'}) "
        f"on {prep.train_sentences} sentences ({len(items)} windows): {settings.epochs} epochs, "
        f"{total} steps of batch {settings.batch_size}, lr {settings.lr:g}, {prep.threads} CPU thread(s).")
    info: dict[str, Any] = {"steps": 0, "total_steps": total, "stopped": False,
                            "train_sentences": prep.train_sentences, "windows": len(items),
                            "threads": prep.threads, "dev_f1": []}
    best: tuple[float, int, dict] | None = None
    step, loss_value = 0, float("nan")
    started = time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        order = list(range(len(items)))
        random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
        for b in range(0, len(order), settings.batch_size):
            if step >= total or info["stopped"]:
                break
            if should_stop is not None and should_stop():
                info["stopped"] = True
                break
            batch = collate([items[i] for i in order[b : b + settings.batch_size]],
                            tokenizer.pad_token_id, with_labels=True)
            target = batch.pop("labels")
            try:
                with guard():
                    logits = model(**batch).logits
                    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
                    loss.backward()
            except StopRequested:
                optimizer.zero_grad(set_to_none=True)
                say(f"Stopped during step {step + 1}: that step is dropped.")
                info["stopped"] = True
                break
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress(step, total, loss=loss_value, lr=scheduler.get_last_lr()[0],
                         epoch=step / per_epoch, eta_s=elapsed / step * (total - step))
        if info["stopped"]:
            break
        if dev and (step % per_epoch == 0 or step >= total):
            f1 = dev_f1(EncoderBundle(model, tokenizer, tags, settings), dev, guard)
            if f1 is None:
                info["stopped"] = True
                break
            info["dev_f1"].append(round(f1, 4))
            say(f"Epoch {epoch + 1}/{settings.epochs}: loss {loss_value:.4f}, dev F1 {f1:.3f}.")
            if settings.select_best and (best is None or f1 > best[0]):
                best = (f1, epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            model.train()
        if step >= total:
            break
    info["steps"] = step
    info["final_loss"] = None if math.isnan(loss_value) else loss_value
    if best is not None and not info["stopped"]:
        model.load_state_dict(best[2])
        info["best_epoch"] = best[1]
        say(f"Kept epoch {best[1]} (dev F1 {best[0]:.3f}).")
    model.eval()
    info["train_seconds"] = round(time.perf_counter() - started, 2)
    if info["stopped"]:
        say(f"Stopped on request after {step} of {total} steps.")
    else:
        say(f"Trained {step} steps in {info['train_seconds']:.1f} s (last loss {loss_value:.4f}).")
    return EncoderBundle(model=model, tokenizer=tokenizer, tags=tags, settings=settings, info=info)


def train_encoder(
    train: Sequence[Example],
    dev: Sequence[Example] | None = None,
    settings: EncoderSettings | None = None,
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    labels: Sequence[str] | None = None,
) -> EncoderBundle:
    """:func:`prepare` then :func:`fit`: the encoder fine-tuned on ``train``'s IOB2 tags."""
    return fit(prepare(train, settings, labels), dev, progress, should_stop, log)


def span_f1(gold: Sequence[Sequence[Span]], pred: Sequence[Sequence[Span]]) -> float:
    """Micro F1 of exact (start, end, type) matches: a quick score for logs and epoch choice."""
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    return 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0


def dev_f1(bundle: EncoderBundle, dev: Sequence[Example],
           guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
           ) -> float | None:
    """The quick F1 on the dev sentences (None when a stop cut it short)."""
    try:
        with guard():
            predicted = predict_encoder(bundle, dev)
    except StopRequested:
        return None
    gold = [bio_to_spans(e.token_offsets(), spans_to_bio(e.token_offsets(), e.spans)) for e in dev]
    return span_f1(gold, [p.span_list for p in predicted])


# ------------------------------------------------------------------------------------ the run


def planned_phases(cfg: dict, sizes: dict[str, int]) -> list[Phase]:
    """An encoder run's phases up to its predictions (the caller adds scoring)."""
    limit = int(cfg.get("limit") or 0)
    out = [LOAD, TRAIN, SAVE]
    out += [predict_phase(s, min(sizes[s], limit) if limit else sizes[s])
            for s in cfg["splits"] if sizes.get(s)]
    return out


def prediction_rows(examples: Sequence[Example], predicted: Sequence[Any]) -> list[dict]:
    """Rows for :func:`core.prediction.predict.store_predictions`: the tags as raw output, the
    sentence's and each span's confidence in the details."""
    return [{"sentence_id": ex.id, "raw_output": " ".join(p.tags), "spans": p.span_list,
             "parse_status": "ok",
             "details": {"confidence": round(p.confidence, 6), "lowest": round(p.lowest, 6),
                         "margin": round(p.margin, 6),
                         "span_confidences": [round(c, 6) for c in p.span_confidences]}}
            for ex, p in zip(examples, predicted, strict=True)]


def run_encoder(ctx: RunContext, cfg: dict) -> EncoderBundle | None:
    """Train on the project's labelled training sentences, save the model into the run's folder
    (``runs/ID/encoder``), predict and store the run's splits; return the bundle (None when a
    stop came before the first training step ended). Scoring is the caller's, as for the CRF.

    Stop: while loading, the run ends with nothing saved; while training, the step in progress
    is dropped, the model is saved as the last finished step left it and nothing is predicted;
    while predicting, the model and the predictions stored so far are kept.
    """
    db, project_id = ctx.db, ctx.run["project_id"]
    settings = EncoderSettings.from_dict(cfg)
    labels = [r["name"] for r in projects.list_labels(db, project_id)]
    with ctx.interruptible():
        ctx.phase(LOAD)
        if not labels:
            raise DataError("The project has no entity types.")
        train = projects.examples(db, project_id, split="train")
        dev = projects.examples(db, project_id, split="dev") if settings.select_best else None
        ctx.log(f"Loading {settings.base_model} and cutting {len(train)} labelled training "
                "sentences into windows…")
        prep = prepare(train, settings, labels)
        ctx.log(f"Loaded in {prep.load_seconds:.1f} s.")
    ctx.phase(TRAIN, total=prep.total_steps)

    def progress(step: int, total: int, **metrics: Any) -> None:
        ctx.progress(step, total, **metrics)
        ctx.phase_progress(step, total, eta_s=metrics.get("eta_s"),
                           detail=f"epoch {metrics['epoch']:.1f}, loss {metrics['loss']:.4f}")

    bundle = fit(prep, dev, progress=progress, should_stop=ctx.should_stop, log=ctx.log,
                 interruptible=ctx.interruptible)
    if bundle.stopped:
        ctx.end_phase("stopped")
    if not bundle.info["steps"]:
        ctx.log("Stopped before the first training step ended: no encoder to save.")
        return None
    ctx.phase(SAVE)
    folder = save_encoder(bundle, Path(ctx.run_dir) / ENCODER_DIR)
    ctx.set_artifact(folder)
    ctx.log(f"Encoder saved to {folder}.")
    ctx.end_phase()
    if bundle.stopped or ctx.should_stop():
        return bundle
    predict_splits(ctx, bundle, cfg)
    return bundle


def predict_splits(ctx: RunContext, bundle: EncoderBundle, cfg: dict) -> None:
    """Predict and store each of the run's splits (a phase each), a batch at a time: a stop
    keeps the batches stored so far."""
    limit = int(cfg.get("limit") or 0)
    size = bundle.settings.eval_batch_size
    with ctx.interruptible():
        for split in cfg["splits"]:
            examples = projects.examples(ctx.db, ctx.run["project_id"], split=split)
            if limit:
                examples = examples[:limit]
            if not examples:
                continue
            ctx.phase(predict_phase(split, len(examples)))
            # Similar lengths in a batch: little padding.
            ordered = sorted(examples, key=lambda e: len(e.token_offsets()), reverse=True)
            started = time.perf_counter()
            done = 0
            for b in range(0, len(ordered), size):
                ctx.check_stop()
                chunk = ordered[b : b + size]
                predicted = predict_encoder(bundle, chunk)
                predict.store_predictions(ctx.db, ctx.run_id, split, prediction_rows(chunk, predicted))
                done += len(chunk)
                ctx.phase_progress(done, len(examples))
            took = time.perf_counter() - started
            ctx.log(f"Predicted {len(examples)} {split} sentences in {took:.1f} s "
                    f"({len(examples) / max(took, 1e-9):.0f} sentences/s).")
