"""The training loop: the model with its adapter, the optimiser, answer-only loss, dev loss."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from core.data.phases import DEV_LOSS, TRAIN
from core.errors import DataError, ModelError, StopRequested
from core.models import loader
from core.models.adapters import _peft_quietly
from core.training import engine as engines
from core.training import packing
from core.training.batches import (
    Encoded,
    micro_batches,
    optimizer_batches,
    plan_steps,
    share_prefix_enabled,
    shared_prefix,
)
from core.training.distributed import SINGLE, Group, shard
from core.training.losses import answer_cross_entropy
from core.training.prefix import (
    StepPrefix,
    checkpointing,
    lm_parts,
    prefix_cache,
    reading_prefix,
)
from core.training.prefix import (
    supported as prefix_supported,
)
from core.training.runconfig import RunConfig


def resolve_precision(cfg: RunConfig, device: str, bf16_supported: bool) -> str:
    """"bfloat16" on a GPU or CPU that computes in bf16 (unless fp32 was asked for), else
    "float32". In bf16 the base model's weights are bf16, the adapter's stay float32 and the
    forward pass runs under bf16 autocast."""
    if bf16_supported and cfg.train.precision in ("auto", "bf16"):
        return "bfloat16"
    return "float32"


def build_model(cfg: RunConfig, device: str | None = None, log: Callable[[str], None] = print,
                group: Group = SINGLE):
    """Load the base model (4-bit NF4 for QLoRA) and attach a fresh LoRA/DoRA adapter.

    In a multi-process run every process starts from rank 0's adapter weights.
    Returns ``(peft_model, tokenizer, dtype_name)``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    info = loader.device_info()
    device = device or info.device
    dtype = resolve_precision(cfg, device, info.bf16)
    started = time.perf_counter()
    model, tokenizer = loader.load_model(
        cfg.base_model, dtype=dtype, quantization=cfg.quantization, device=device,
        padding_side="right",
    )
    log(f"Loaded {cfg.base_model} ({dtype}{', 4-bit NF4' if cfg.quantization else ''}) on {device} "
        f"in {time.perf_counter() - started:.1f} s.")
    model.config.use_cache = False
    if cfg.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if type(mod).__name__ in ("Linear", "Linear4bit", "Linear8bitLt")}
    missing = [t for t in cfg.lora.targets if t not in names]
    if len(missing) == len(cfg.lora.targets):
        raise ModelError(
            f"None of the target modules {', '.join(cfg.lora.targets)} exist in "
            f"{cfg.base_model}; its linear layers are: {', '.join(sorted(names)) or 'none'}."
        )
    if missing:
        log(f"Target modules not in this model (skipped): {', '.join(missing)}.")
    torch.manual_seed(cfg.train.seed)
    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=[t for t in cfg.lora.targets if t in names],
        use_dora=cfg.method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    with _peft_quietly():
        model = get_peft_model(model, lora)
    group.broadcast_params([p for p in model.parameters() if p.requires_grad])
    trainable, total = model.get_nb_trainable_parameters()
    log(f"{cfg.method}: {trainable:,} trainable parameters of {total:,} "
        f"({100 * trainable / max(total, 1):.2f}%).")
    return model, tokenizer, dtype


def build_optimizer(model: Any, cfg: RunConfig):
    """AdamW over the adapter, or peft's LoRA+ optimiser (B groups at lr × ratio) for loraplus.

    LoRA+'s weight decay goes in as ``loraplus_weight_decay`` (peft ignores ``weight_decay``).
    """
    import torch

    t = cfg.train
    if cfg.uses_loraplus:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=t.lr, loraplus_lr_ratio=cfg.lora.loraplus_ratio,
            loraplus_weight_decay=t.weight_decay,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


@contextlib.contextmanager
def _gqa_attention(device: str, checkpointed: bool):
    """On a CPU, attention takes the grouped key/value heads as they are (sdpa's
    ``enable_gqa``) instead of copies repeated for every query head: same results, measured
    ~130 MB less memory in the bundled model's training step. transformers does it only without
    a mask on CUDA, where masked GQA would leave the fast kernels; its switch is an environment
    variable, set around each micro-batch's forward pass (:func:`answer_loss_sum`). Not under
    gradient checkpointing, whose replay in the backward pass must take the same path (and
    keeps no keys to save memory on)."""
    name = "TRANSFORMERS_SDPA_FORCE_GQA"
    before = os.environ.get(name)
    if device != "cpu" or before is not None or checkpointed:
        yield
        return
    os.environ[name] = "1"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def answer_loss_sum(model: Any, chunk: Sequence[Encoded], pad_id: int, device: str,
                    autocast_dtype: Any = None, prefix: int = 0,
                    step_prefix: StepPrefix | None = None) -> tuple[Any, int]:
    """Sum of the cross-entropy over the answer tokens of a micro-batch, and their count.

    The hidden states are projected onto the vocabulary only at the positions that predict an
    answer token (never at prompt or padding positions). With ``prefix`` > 0 (the length of the
    token prefix all of ``chunk`` shares, shorter than every prompt), the prefix is run once and
    its key/value cache is shared by the sentences: same loss and gradients, less compute.

    The sentences are packed into rows without padding (:func:`packing_enabled`, for models
    whose attention takes a custom mask; see :mod:`core.training.packing`): each token attends
    to the shared prefix and to the earlier tokens of its own sentence only, with the positions
    it would have alone. Otherwise each is a row, padded to the longest of the micro-batch.
    With ``step_prefix`` the prefix's keys and values come from it instead of a forward pass.
    """
    import torch

    decoder, head, softcap = lm_parts(model)
    positions = None
    if len(chunk) > 1 and packs(model):
        ids, mask, positions, rows, cols, targets = packing.packed_inputs(
            chunk, pad_id, prefix, _mask_kind(model), packing.pair_weight(model.config))
    else:
        ids, mask, rows, cols, targets = packing.padded_inputs(chunk, pad_id, prefix)
    ids, mask = ids.to(device), mask.to(device)
    if positions is not None:
        positions = positions.to(device)
    ctx = (torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    checkpointed = checkpointing(decoder)
    with ctx, _gqa_attention(device, checkpointed), reading_prefix(decoder):
        cache = None
        if prefix and step_prefix is not None:
            cache = step_prefix.cache(ids.shape[0])
        elif prefix:
            cache = prefix_cache(model, chunk[0].ids[:prefix], device)
            if ids.shape[0] > 1:
                cache.batch_repeat_interleave(ids.shape[0])
        # The cache is read either way; use_cache asks for it back (not under checkpointing,
        # where transformers would refuse it with a warning).
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=cache is not None and not checkpointed).last_hidden_state
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        loss = answer_cross_entropy(picked, head, torch.tensor(targets, device=device), softcap)
    return loss, len(targets)


def packing_enabled() -> bool:
    """Padding-free packing of micro-batches is on unless ``NERLAB_PACK=0`` (for comparisons)."""
    return os.environ.get("NERLAB_PACK", "1") != "0"


def packs(model: Any) -> bool:
    """True when micro-batches of ``model`` are packed without padding (see answer_loss_sum)."""
    return packing_enabled() and _mask_kind(model) is not None


def _mask_kind(model: Any) -> str | None:
    """"bool" or "float": the custom 4-D mask the model's attention takes (sdpa, eager); None
    for attention kernels that take none (flash-attention), which get padded micro-batches."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "float"}.get(impl)


@dataclass
class TrainResult:
    steps: int = 0
    total_steps: int = 0
    epochs_done: float = 0.0
    stopped: bool = False
    train_loss: float | None = None
    dev_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    #: With sharded weights (FSDP): the trained adapter's weights, on every process.
    adapter_state: dict | None = None
    truncated: int = 0
    skipped: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Hooks:
    """How the loop talks to its surroundings (the worker's RunContext, or a benchmark)."""

    log: Callable[[str], None] = print
    progress: Callable[..., None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    save: Callable[[str], None] | None = None  # called with a reason: "epoch", "stop", "end"
    #: Start a phase (:class:`core.data.phases.Phase`, total) and report its progress
    #: (done, total, eta_s=, detail=): training, then the dev loss at the end.
    phase: Callable[..., None] | None = None
    phase_progress: Callable[..., None] | None = None
    #: A stretch a stop may cut short by raising StopRequested in it (the worker's
    #: ``interruptible``): a step's forward and backward passes, never the optimiser's update.
    interruptible: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext


def dev_loss(model: Any, data: Sequence[Encoded], pad_id: int, device: str, token_budget: int,
             autocast_dtype: Any = None, prefix: int | None = None,
             group: Group = SINGLE, progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             loss_fn: Callable[..., Any] = answer_loss_sum) -> float | None:
    """Per-token mean loss on the answers of ``data`` (no gradients, dropout off); in a
    multi-process run each process scores its share and the sums are added up.

    ``progress(sentences done, sentences)`` follows it; in a single process ``should_stop``
    ends it early (returning None), between micro-batches."""
    import torch

    if not data:
        return None
    was_training = model.training
    model.eval()
    total, count, seen = 0.0, 0, 0
    with torch.no_grad():
        if prefix is None:
            prefix = shared_prefix(data)
        mine = shard(data, group, length=lambda e: len(e.ids))
        for chunk in micro_batches(mine, token_budget, prefix, packs(model)):
            if should_stop is not None and not group.enabled and should_stop():
                if was_training:
                    model.train()
                return None
            loss, n = loss_fn(model, chunk, pad_id, device, autocast_dtype, prefix)
            total += float(loss)
            count += n
            seen += len(chunk)
            if progress is not None:
                progress(min(seen * group.world, len(data)), len(data))
    total, count = group.sum_floats([total, count], device)
    if was_training:
        model.train()
    return total / max(count, 1)


def train_loop(
    model: Any,
    tokenizer: Any,
    train: Sequence[Encoded],
    dev: Sequence[Encoded],
    cfg: RunConfig,
    device: str,
    dtype: str = "float32",
    hooks: Hooks | None = None,
    group: Group = SINGLE,
) -> TrainResult:
    """Train the adapter: mixed random batches, length-sorted micro-batches, answer-only logits.

    Reports a progress row per optimiser step, the dev loss after each epoch (and at the end),
    calls ``hooks.save`` after each epoch and when stopping, and stops cleanly between steps
    when ``hooks.should_stop()`` turns true. With a multi-process ``group`` (several GPUs) each
    process computes its share of every step and the gradients are summed (see
    :mod:`core.training.distributed`): the same optimisation as in one process.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    hooks = hooks or Hooks()
    if not train:
        raise DataError("No training examples left after encoding (all prompts longer than max length?).")
    t = cfg.train
    per_epoch, total = plan_steps(len(train), cfg)
    per_step = t.batch_size * t.grad_accum
    # Memory per forward pass stays within what batch_size sentences of the longest length take;
    # on a CPU half that: with the prefix computed once per step (StepPrefix) the smaller
    # micro-batches cost no speed there (bench_train: the same tokens/s, peak 2.3 -> 1.9 GB).
    # Gradient checkpointing keeps little of a micro-batch: there the whole batch.
    budget = t.batch_size * min(t.max_length, max(len(e.ids) for e in train))
    if device == "cpu" and not t.gradient_checkpointing:
        budget //= 2
    prefix = shared_prefix(train) if share_prefix_enabled() else 0
    if t.gradient_checkpointing and not prefix_supported(model):
        prefix = 0
    warmup = int(round(t.warmup_ratio * total))
    optimizer = build_optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    packed = packs(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine = engines.create(model, optimizer, scheduler, group, answer_loss_sum)
    if engine.sharded:  # FSDP: a decoder layer run twice in a forward loses its weights' gather
        prefix = 0
    if group.enabled:
        torch.manual_seed(t.seed + group.rank)  # different dropout masks on each process
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = TrainResult(total_steps=total)
    hooks.log(f"Training {len(train)} sentences, {per_epoch} steps per epoch, {total} steps "
              f"(batch {t.batch_size} × accumulation {t.grad_accum}, warm-up {warmup}); "
              + (f"the {prefix}-token prompt prefix they share is computed once per micro-batch"
                 if prefix else "no shared prompt prefix")
              + (f"; each step is split over {group.world} processes ({engine.describe()})."
                 if group.enabled else "."))
    model.train()
    if hooks.phase:
        hooks.phase(TRAIN, total)
    started = time.perf_counter()
    step, epoch = 0, 0
    last_loss: float | None = None
    while step < total and not result.stopped:
        batches = optimizer_batches(len(train), per_step, t.seed, epoch)
        for i, batch in enumerate(batches):
            if step >= total:
                break
            step_started = time.perf_counter()
            items = [train[j] for j in batch]
            n_answer = sum(e.n_answer for e in items)  # of the whole step, on every process
            loss_total = 0.0
            mine = shard(items, group, length=lambda e: len(e.ids))
            # In one process a stop need not wait for the end of the step: the forward and
            # backward passes are dropped where they are (the weights change only in the
            # optimiser's update below) and the adapter is saved as the previous step left it.
            # Several processes agree on a stop at the end of a step instead.
            abandoned = False
            try:
                with contextlib.nullcontext() if group.enabled else hooks.interruptible():
                    chunks = engine.schedule(list(micro_batches(mine, budget, prefix, packed)),
                                             items[:1])
                    # One process: the prefix once for the step's micro-batches.
                    step_prefix = (StepPrefix(model, items[0].ids[:prefix], device, autocast)
                                   if prefix and not engine.distributed else None)
                    for k, (chunk, weight) in enumerate(chunks):
                        if not group.enabled and hooks.should_stop():
                            raise StopRequested()
                        with engine.micro_batch(last=k == len(chunks) - 1):
                            loss_sum, _n = engine.loss(model, chunk, pad_id, device, autocast,
                                                       prefix, step_prefix=step_prefix)
                            engine.backward(loss_sum, n_answer, weight)
                        loss_total += weight * float(loss_sum.detach())
                    if step_prefix is not None:
                        step_prefix.backward()
            except StopRequested:
                abandoned = True
            if abandoned:
                optimizer.zero_grad(set_to_none=True)
                hooks.log(f"Stopped during step {step + 1}: that step is dropped.")
                result.stopped = True
                break
            stop_now = hooks.should_stop()
            if group.enabled:
                loss_total, stops = engine.sum_floats([loss_total, float(stop_now)])
                stop_now = stops > 0
            engine.step(t.max_grad_norm)
            step += 1
            tokens = sum(len(e.ids) for e in items)
            result.tokens += tokens
            elapsed = time.perf_counter() - started
            step_s = time.perf_counter() - step_started
            last_loss = loss_total / n_answer
            frac_epoch = epoch + (i + 1) / len(batches)
            if hooks.progress:
                hooks.progress(
                    step, total, epoch=frac_epoch, loss=last_loss,
                    lr=optimizer.param_groups[0]["lr"], tokens_per_s=tokens / step_s,
                    gpu_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                    eta_s=elapsed / step * (total - step),
                )
            if hooks.phase_progress:
                hooks.phase_progress(step, total, eta_s=elapsed / step * (total - step),
                                     detail=f"loss {last_loss:.4f}")
            if stop_now:
                result.stopped = True
                break
        else:
            epoch += 1
            result.epochs_done = epoch
            if t.dev_loss_sentences and dev and step < total:
                _dev_report(model, dev, pad_id, device, budget, autocast, step, total, epoch,
                            result, hooks, group, engine=engine)
                if hooks.save and not engine.sharded:  # sharded: gathered at the end only
                    hooks.save("epoch")
            continue
        break
    result.seconds = time.perf_counter() - started
    result.adapter_state = engine.adapter_state()
    result.steps = step
    result.train_loss = last_loss
    result.epochs_done = step / per_epoch
    if t.dev_loss_sentences and dev and not result.stopped:
        if hooks.phase:
            hooks.phase(DEV_LOSS, len(dev))
        if _dev_report(model, dev, pad_id, device, budget, autocast, step, total,
                       result.epochs_done, result, hooks, group, final=True,
                       engine=engine) is None:
            result.stopped = True  # a stop during the dev loss: the trained adapter is saved
    hooks.log(f"Trained {step} steps in {result.seconds:.1f} s: {result.tokens_per_s:.0f} tokens/s"
              + (f", last loss {last_loss:.4f}" if last_loss is not None else "") + ".")
    return result


def _dev_report(model, dev, pad_id, device, budget, autocast, step, total, epoch, result, hooks,
                group=SINGLE, final: bool = False, engine=None) -> float | None:
    """The dev loss after an epoch (reported as a detail of the training phase) or at the end
    of training (its own phase, which a stop can cut short: then None)."""
    started = time.perf_counter()
    if final:
        progress = hooks.phase_progress
    else:
        def progress(done: int, of: int) -> None:
            if hooks.phase_progress:
                hooks.phase_progress(step, total, detail=f"dev loss after epoch {epoch:.0f}: "
                                     f"{done} / {of} sentences")
    # Sharded weights: every forward pass is a collective, so every process scores all of dev.
    sharded = engine is not None and engine.sharded
    try:
        with hooks.interruptible() if final and not group.enabled else contextlib.nullcontext():
            value = dev_loss(model, dev, pad_id, device, budget, autocast,
                             None if share_prefix_enabled() else 0,
                             Group(rank=group.rank) if sharded else group, progress,
                             hooks.should_stop if final and not sharded else None,
                             engine.loss if engine is not None else answer_loss_sum)
    except StopRequested:
        value = None
    if value is None:
        return None
    result.dev_losses.append((step, value))
    hooks.log(f"Epoch {epoch:.2f}: dev loss {value:.4f} ({len(dev)} sentences, "
              f"{time.perf_counter() - started:.1f} s).")
    if hooks.progress:
        hooks.progress(step, total, epoch=epoch, eval_loss=value)
    return value
