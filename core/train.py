"""Supervised fine-tuning with LoRA, LoRA+, QLoRA or DoRA, loss on the answer tokens only.

The worker calls :func:`run` with a :class:`core.worker.RunContext`. The pieces are usable on
their own (the benchmark and the tests call them): :func:`encode_examples` turns labelled
sentences into token ids through the project's template (``templates.build_chat``),
:func:`build_model` loads the base model and attaches the adapter, :func:`build_optimizer` makes
AdamW or peft's LoRA+ optimiser, and :func:`train_loop` trains.

Where the time goes, and what the loop does about it (see DESIGN.md):

* **Logits only where the loss is.** The decoder's hidden states are projected onto the
  vocabulary only at the positions that predict answer tokens, never at prompt or padding
  positions (on CPU a step went from ~26 s to ~19 s with the identical loss).
* **No padding waste, batches still mixed.** An optimiser step draws a random (mixed) batch of
  ``batch_size × grad_accum`` sentences; inside it the sentences are sorted by length and cut into
  micro-batches of at most ``batch_size × max_length`` padded tokens. The loss is the sum over all
  answer tokens of the step divided by their count, so the objective is exactly the per-token mean
  of the mixed batch (sentences without entities are not over-weighted, unlike length-grouped
  batches with a per-batch mean), while almost no padding is computed.
* float32 and all cores on CPU; bf16 autocast on GPUs that support it.

torch, transformers and peft are imported inside the functions, never at import time: the Train
page imports this module for :func:`check_run`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config, projects
from core.distributed import SINGLE, Group, shard
from core.errors import NerlabError
from core.runconfig import RunConfig
from core.spans import Example

#: Fewer labelled training sentences than this is an error; fewer than RECOMMENDED_TRAIN a warning.
MIN_TRAIN = 10
RECOMMENDED_TRAIN = 100
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
META_FILE = "nerlab.json"


class DataError(NerlabError):
    """The project's data cannot be trained on (no sentences, no entity types, too long...)."""


# ---------------------------------------------------------------------------------------------
# Pre-flight checks (light: no torch)


@dataclass(frozen=True)
class Issue:
    """One pre-flight finding. ``level`` is "error" (blocks the start), "warning" or "info"."""

    level: str
    title: str
    msg: str


def check_run(
    db: Database,
    project_id: int,
    cfg: RunConfig,
    cuda: bool,
    bf16_supported: bool = True,
    template: Any = None,
    gpu_count: int | None = None,
) -> list[Issue]:
    """What stands between this config and a good run, before anything is started.

    Checks: enough labelled training sentences, a labelled dev split (and test split), entity
    types, the template's round-trip (answer → parse → the same spans) on training sentences,
    CUDA for bf16/QLoRA (or a note of what runs instead), the number of GPUs (``gpu_count``
    visible; 1 when unknown), the base model's location, free disk.
    """
    from core import models, templates

    issues: list[Issue] = []
    labels = projects.list_labels(db, project_id)
    train = projects.examples(db, project_id, split="train")
    dev = projects.examples(db, project_id, split="dev")
    test = projects.examples(db, project_id, split="test")
    if not labels:
        issues.append(Issue("error", "No entity types",
                            "Add entity types on the Data page before training."))
    if len(train) < MIN_TRAIN:
        issues.append(Issue("error", "Too few training sentences",
                            f"{len(train)} labelled training sentence(s); at least {MIN_TRAIN} are "
                            "needed (100-500 is where fine-tuning becomes competitive). Label more "
                            "on the Label page."))
    elif len(train) < RECOMMENDED_TRAIN:
        issues.append(Issue("warning", "Few training sentences",
                            f"{len(train)} labelled training sentences; results improve a lot up "
                            f"to a few hundred."))
    if not dev:
        issues.append(Issue("error", "No dev split",
                            "No labelled dev sentences: the run needs them for its dev loss and "
                            "scores. Assign splits on the Data page (e.g. 10% dev)."))
    if not test:
        issues.append(Issue("warning", "No test split",
                            "No labelled test sentences: the run will be scored on dev only."))
    tpl = template
    if tpl is None:
        try:
            tpl = templates.get_template(db, project_id, cfg.template)
        except NerlabError as exc:
            issues.append(Issue("error", "Template", str(exc)))
    if tpl is not None and train and labels:
        names = [row["name"] for row in labels]
        bad = []
        for ex in train[:50]:
            answer = templates.render_answer(tpl, ex.text, ex.spans)
            parsed = templates.parse_output(tpl, answer, ex.text, names)
            if sorted(parsed.spans) != sorted(ex.spans):
                bad.append(ex)
        if bad:
            issues.append(Issue("error", "Template round-trip",
                                f"{len(bad)} of {min(50, len(train))} training answers do not parse "
                                f"back to their spans (first: {bad[0].text[:80]!r}); change the "
                                "output format on the Template page."))
        else:
            issues.append(Issue("info", "Template round-trip",
                                f"Template {tpl.name!r} v{tpl.version}: answers of "
                                f"{min(50, len(train))} training sentences parse back to the same spans."))
    if not cuda:
        if cfg.method == "qlora":
            issues.append(Issue("warning", "QLoRA without CUDA",
                                "No CUDA GPU: the 4-bit base model runs on the CPU through "
                                "bitsandbytes with float32 compute — slow, fine for trying a small "
                                "model; QLoRA is meant for GPUs."))
        if cfg.train.precision == "bf16":
            issues.append(Issue("info", "bf16 without CUDA",
                                "No CUDA GPU: this run uses float32 on the CPU instead of bf16."))
        if not models.is_bundled(cfg.base_model):
            issues.append(Issue("warning", "Large model on CPU",
                                f"No CUDA GPU: {cfg.base_model} trains on the CPU; anything above "
                                "~0.5B parameters is impractically slow there."))
        else:
            issues.append(Issue("info", "Device", f"CPU ({os.cpu_count()} cores), float32."))
    elif cfg.train.precision == "bf16" and not bf16_supported:
        issues.append(Issue("warning", "bf16 not supported",
                            "This GPU has no bf16: the run uses float32 (more memory)."))
    issues.extend(_gpu_issues(cfg, cuda, gpu_count if gpu_count is not None else int(cuda)))
    if not models.is_bundled(cfg.base_model):
        path = Path(cfg.base_model).expanduser()
        looks_local = path.exists() or cfg.base_model.startswith((".", "/", "~"))
        if looks_local and not (path / "config.json").is_file():
            issues.append(Issue("error", "Base model", f"{cfg.base_model} is not a model folder "
                                "(no config.json)."))
        elif not looks_local:
            issues.append(Issue("info", "Base model", f"{cfg.base_model} is loaded from the "
                                "Hugging Face cache (downloaded if the machine can reach the Hub)."))
    free_gb = shutil.disk_usage(config.home()).free / 2**30
    if free_gb < 1:
        issues.append(Issue("warning", "Disk space", f"Only {free_gb:.1f} GB free in "
                            f"{config.home()}; adapters and merged models need room."))
    return issues


def _gpu_issues(cfg: RunConfig, cuda: bool, gpu_count: int) -> list[Issue]:
    """What the ``gpus`` setting will do on this machine."""
    import importlib.util

    gpus = cfg.train.gpus
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if gpus <= 1:
        if cuda and gpu_count > 1:
            return [Issue("info", "Several GPUs", f"{gpu_count} GPUs are visible and this run uses "
                          f"one; set GPUs to {gpu_count} to split every step over all of them.")]
        return []
    out: list[Issue] = []
    if importlib.util.find_spec("accelerate") is None:
        out.append(Issue("error", "Several GPUs", "A run on several GPUs is started with "
                         "accelerate launch, and accelerate is not installed (pip install accelerate)."))
    if cuda and gpus > gpu_count:
        out.append(Issue("error", "Several GPUs", f"{gpus} GPUs asked for, {gpu_count} visible "
                         "(CUDA_VISIBLE_DEVICES decides which): lower GPUs."))
    elif cuda:
        out.append(Issue("info", "Several GPUs", f"{gpus} processes under accelerate launch, one per "
                         f"GPU; each step's {per_step} sentences are split over them (the same run as "
                         "on one GPU, faster)."))
    else:
        cores = os.cpu_count() or 1
        out.append(Issue("info", "Several processes without a GPU",
                         f"No CUDA GPU: the {gpus} processes share the {cores} CPU cores over gloo, "
                         f"{max(1, cores // gpus)} thread(s) each. Whether that beats one process "
                         "depends on the machine (benchmarks/bench_processes.py measures it); it is "
                         "mainly a way to try the multi-GPU path."))
    if per_step < gpus:
        out.append(Issue("warning", "GPUs left idle", f"A step has {per_step} sentences (batch size "
                         f"× accumulation) for {gpus} GPUs: raise the batch size or accumulation."))
    return out


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Encoded:
    """One training example as token ids: ``ids[:n_prompt]`` is the prompt, the rest the answer."""

    ids: list[int]
    n_prompt: int
    example_id: int = 0

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class EncodeStats:
    encoded: int = 0
    truncated: int = 0
    skipped: int = 0


def encode_examples(
    tokenizer: Any,
    tpl: Any,
    examples: Sequence[Example],
    labels: Sequence[dict | str],
    max_length: int,
    shots_for: Callable[[Example], Sequence[Example]] | None = None,
) -> tuple[list[Encoded], EncodeStats]:
    """Render each example with the template (prompt + gold answer + EOS) and tokenize it.

    Examples longer than ``max_length`` lose the end of their answer; examples whose prompt alone
    fills ``max_length`` are skipped (both are counted in the returned stats).
    """
    from core import templates

    out: list[Encoded] = []
    stats = EncodeStats()
    for ex in examples:
        shots = shots_for(ex) if shots_for else ()
        answer = templates.render_answer(tpl, ex.text, ex.spans)
        prompt, target = templates.build_chat(tokenizer, tpl, ex.text, labels, shots=shots,
                                              answer=answer)
        prompt_ids, target_ids = templates.encode_chat(tokenizer, prompt, target)
        if len(prompt_ids) >= max_length:
            stats.skipped += 1
            continue
        ids = prompt_ids + target_ids
        if len(ids) > max_length:
            stats.truncated += 1
            ids = ids[:max_length]
        out.append(Encoded(ids, len(prompt_ids), ex.id))
        stats.encoded += 1
    return out, stats


def shot_picker(tpl: Any, train: Sequence[Example]) -> Callable[[Example], Sequence[Example]] | None:
    """For templates with examples in the prompt: retrieve the most similar *other* training
    sentences for each one (never itself), as inference will."""
    if not getattr(tpl, "n_examples", 0):
        return None
    from core import retrieval

    retriever = retrieval.ExampleRetriever(list(train), method=getattr(tpl, "retrieval", "tfidf"))

    def pick(ex: Example) -> Sequence[Example]:
        return retriever.top_k(ex.text, tpl.n_examples, exclude_id=ex.id)

    return pick


def optimizer_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of one epoch, shuffled (seed + epoch), cut into optimiser batches (mixed lengths)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch] for i in range(0, n, batch)]


def micro_batches(items: Sequence[Encoded], token_budget: int, prefix: int = 0) -> list[list[Encoded]]:
    """Sort one optimiser batch by length and cut it into micro-batches whose padded size stays
    within ``token_budget``: little padding, bounded memory. With a shared ``prefix`` (computed
    once per micro-batch) a micro-batch costs ``prefix + sentences × (longest - prefix)``."""
    ordered = sorted(items, key=lambda e: len(e.ids))
    chunks: list[list[Encoded]] = []
    current: list[Encoded] = []
    for item in ordered:
        longest = max(len(item.ids), max((len(c.ids) for c in current), default=0))
        if current and prefix + (longest - prefix) * (len(current) + 1) > token_budget:
            chunks.append(current)
            current = []
        current.append(item)
    if current:
        chunks.append(current)
    return chunks


#: A common prompt prefix shorter than this is not worth a separate forward pass.
MIN_SHARED_PREFIX = 16


def share_prefix_enabled() -> bool:
    """Prefix sharing is on unless ``NERLAB_SHARE_PREFIX=0`` (for comparisons and debugging)."""
    return os.environ.get("NERLAB_SHARE_PREFIX", "1") != "0"


def shared_prefix(data: Sequence[Encoded]) -> int:
    """Length of the token prefix every example shares (the chat template's system message and
    the instruction before the sentence), kept short of every answer: ``0`` when too short.

    It is computed once per micro-batch and its keys/values are reused by every sentence of the
    micro-batch, with gradients flowing through the shared computation (the loss is unchanged).
    """
    if not data:
        return 0
    first = data[0].ids
    length = min(min(e.n_prompt for e in data) - 1, len(first))
    for e in data[1:]:
        ids = e.ids
        i = 0
        while i < length and ids[i] == first[i]:
            i += 1
        length = i
        if length < MIN_SHARED_PREFIX:
            return 0
    return length if length >= MIN_SHARED_PREFIX else 0


# ---------------------------------------------------------------------------------------------
# Model


def resolve_precision(cfg: RunConfig, device: str, bf16_supported: bool) -> str:
    """"bfloat16" on a GPU that supports it (unless fp32 was asked for), else "float32"."""
    if device == "cuda" and bf16_supported and cfg.train.precision in ("auto", "bf16"):
        return "bfloat16"
    return "float32"


def set_threads() -> int:
    """Use every core on CPU, shared between the processes of a multi-process run
    (``NERLAB_THREADS`` overrides); return the number."""
    import torch

    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    threads = int(os.environ.get("NERLAB_THREADS") or max(1, (os.cpu_count() or 1) // share))
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` when it wraps a
    model: a FutureWarning in every run's log that the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def build_model(cfg: RunConfig, device: str | None = None, log: Callable[[str], None] = print,
                group: Group = SINGLE):
    """Load the base model (4-bit NF4 for QLoRA) and attach a fresh LoRA/DoRA adapter.

    In a multi-process run every process starts from rank 0's adapter weights.
    Returns ``(peft_model, tokenizer, dtype_name)``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from core import models

    info = models.device_info()
    device = device or info.device
    dtype = resolve_precision(cfg, device, info.bf16)
    started = time.perf_counter()
    model, tokenizer = models.load_model(
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
        raise models.ModelError(
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


def _linear_schedule(optimizer: Any, warmup: int, total: int):
    import torch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder, lm_head, logit softcap) of a causal LM, peft-wrapped or not."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(causal.config, "final_logit_softcapping", None)
    return causal.get_decoder(), causal.get_output_embeddings(), softcap


def answer_loss_sum(model: Any, chunk: Sequence[Encoded], pad_id: int, device: str,
                    autocast_dtype: Any = None, prefix: int = 0) -> tuple[Any, int]:
    """Sum of the cross-entropy over the answer tokens of a micro-batch, and their count.

    The hidden states are projected onto the vocabulary only at the positions that predict an
    answer token (never at prompt or padding positions). With ``prefix`` > 0 (the length of the
    token prefix all of ``chunk`` shares, shorter than every prompt), the prefix is run once and
    its key/value cache repeated for the sentences: same loss and gradients, less compute.
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    longest = max(len(e.ids) for e in chunk)
    width = longest - prefix
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), longest), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, e in enumerate(chunk):
        ids[i, : len(e.ids) - prefix] = torch.tensor(e.ids[prefix:])
        mask[i, : len(e.ids)] = 1
        for pos in range(e.n_prompt, len(e.ids)):
            rows.append(i)
            cols.append(pos - 1 - prefix)
            targets.append(e.ids[pos])
    ids, mask = ids.to(device), mask.to(device)
    decoder, head, softcap = _lm_parts(model)
    ctx = (torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        if prefix:
            shared = torch.tensor([chunk[0].ids[:prefix]], device=device)
            cache = decoder(input_ids=shared, use_cache=True).past_key_values
            if len(chunk) > 1:
                cache.batch_repeat_interleave(len(chunk))
            hidden = decoder(input_ids=ids, attention_mask=mask, past_key_values=cache,
                             use_cache=True).last_hidden_state
        else:
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        logits = head(picked).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits, torch.tensor(targets, device=device), reduction="sum")
    return loss, len(targets)


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


def dev_loss(model: Any, data: Sequence[Encoded], pad_id: int, device: str, token_budget: int,
             autocast_dtype: Any = None, prefix: int | None = None,
             group: Group = SINGLE) -> float | None:
    """Per-token mean loss on the answers of ``data`` (no gradients, dropout off); in a
    multi-process run each process scores its share and the sums are added up."""
    import torch

    if not data:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        if prefix is None:
            prefix = shared_prefix(data)
        mine = shard(data, group, length=lambda e: len(e.ids))
        for chunk in micro_batches(mine, token_budget, prefix):
            loss, n = answer_loss_sum(model, chunk, pad_id, device, autocast_dtype, prefix)
            total += float(loss)
            count += n
    total, count = group.sum_floats([total, count], device)
    if was_training:
        model.train()
    return total / max(count, 1)


def plan_steps(n_train: int, cfg: RunConfig) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps) for ``n_train`` encoded sentences."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    per_epoch = max(1, math.ceil(n_train / per_step))
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    return per_epoch, total


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
    :mod:`core.distributed`): the same optimisation as in one process.
    """
    import torch

    hooks = hooks or Hooks()
    if not train:
        raise DataError("No training examples left after encoding (all prompts longer than max length?).")
    t = cfg.train
    per_epoch, total = plan_steps(len(train), cfg)
    per_step = t.batch_size * t.grad_accum
    # Memory per forward pass stays within what batch_size sentences of the longest length take.
    budget = t.batch_size * min(t.max_length, max(len(e.ids) for e in train))
    prefix = 0 if t.gradient_checkpointing or not share_prefix_enabled() else shared_prefix(train)
    warmup = int(round(t.warmup_ratio * total))
    optimizer = build_optimizer(model, cfg)
    scheduler = _linear_schedule(optimizer, warmup, total)
    autocast = torch.bfloat16 if (device == "cuda" and dtype == "bfloat16") else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
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
              + (f"; each step is split over {group.world} processes." if group.enabled else "."))
    model.train()
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
            for chunk in micro_batches(mine, budget, prefix):
                loss_sum, _n = answer_loss_sum(model, chunk, pad_id, device, autocast, prefix)
                (loss_sum / n_answer).backward()
                loss_total += float(loss_sum.detach())
            stop_now = hooks.should_stop()
            if group.enabled:
                group.sum_grads(params)
                loss_total, stops = group.sum_floats([loss_total, float(stop_now)], device)
                stop_now = stops > 0
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
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
            if stop_now:
                result.stopped = True
                break
        else:
            epoch += 1
            result.epochs_done = epoch
            if t.dev_loss_sentences and dev and step < total:
                _dev_report(model, dev, pad_id, device, budget, autocast, step, total, epoch,
                            result, hooks, group)
                if hooks.save:
                    hooks.save("epoch")
            continue
        break
    result.seconds = time.perf_counter() - started
    result.steps = step
    result.train_loss = last_loss
    result.epochs_done = step / per_epoch
    if t.dev_loss_sentences and dev and not result.stopped:
        _dev_report(model, dev, pad_id, device, budget, autocast, step, total,
                    result.epochs_done, result, hooks, group)
    hooks.log(f"Trained {step} steps in {result.seconds:.1f} s: {result.tokens_per_s:.0f} tokens/s"
              + (f", last loss {last_loss:.4f}" if last_loss is not None else "") + ".")
    return result


def _dev_report(model, dev, pad_id, device, budget, autocast, step, total, epoch, result, hooks,
                group=SINGLE):
    started = time.perf_counter()
    value = dev_loss(model, dev, pad_id, device, budget, autocast,
                     None if share_prefix_enabled() else 0, group)
    if value is None:
        return
    result.dev_losses.append((step, value))
    hooks.log(f"Epoch {epoch:.2f}: dev loss {value:.4f} ({len(dev)} sentences, "
              f"{time.perf_counter() - started:.1f} s).")
    if hooks.progress:
        hooks.progress(step, total, epoch=epoch, eval_loss=value)


# ---------------------------------------------------------------------------------------------
# Saving, loading, merging


def save_adapter(model: Any, tokenizer: Any, folder: Path, meta: dict) -> Path:
    """Save the adapter (PEFT format), the tokenizer and ``nerlab.json`` (config, template
    version, labels) atomically: a crash mid-save keeps the previous adapter."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def adapter_path(db: Database, run_id: int) -> Path:
    """The saved adapter folder of a run, or a NerlabError saying why there is none."""
    from core import jobs

    run = jobs.get_run(db, run_id)
    if run["kind"] != "train":
        raise NerlabError(f"Run {run_id} is a {run['kind']} run; only training runs have adapters.")
    folder = Path(run["artifact_path"] or config.runs_dir() / str(run_id) / ADAPTER_DIR)
    if not (folder / "adapter_config.json").is_file():
        raise NerlabError(f"Run {run_id} has no saved adapter (status {run['status']}).")
    return folder


def load_adapter(folder: str | Path, device: str | None = None, merge: bool = False):
    """Load a saved run's base model with its adapter: ``(model, tokenizer)``.

    The base model is the one recorded in ``nerlab.json`` (full precision, even for QLoRA runs).
    """
    from peft import PeftModel

    from core import models

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    base = meta["config"]["base_model"]
    model, tokenizer = models.load_model(base, device=device)
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    with _peft_quietly():
        model = PeftModel.from_pretrained(model, str(folder))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def merge_run(db: Database, run_id: int, out: str | Path | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Merge a run's adapter into its base model and save the result (with the tokenizer) to
    ``runs/<id>/merged`` (or ``out``); return the folder. Loadable with ``from_pretrained``."""
    started = time.perf_counter()
    folder = adapter_path(db, run_id)
    target = Path(out) if out else config.runs_dir() / str(run_id) / MERGED_DIR
    set_threads()
    model, tokenizer = load_adapter(folder, device="cpu", merge=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.copy(folder / META_FILE, tmp / META_FILE)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    log(f"Merged run {run_id}'s adapter into its base model in {time.perf_counter() - started:.1f} s: "
        f"{target}")
    return target


# ---------------------------------------------------------------------------------------------
# The worker's entry point


def run(ctx: Any) -> None:
    """Fine-tune as the run's config says, save the adapter, then predict and score dev/test.

    ``ctx`` is a :class:`core.worker.RunContext`. A stop request ends training between steps; the
    adapter is saved and the run ends "stopped" (the worker decides the status). In a
    multi-process run (``ctx.group``, several GPUs) every process trains its share; rank 0 alone
    saves, reports, and predicts and scores dev/test once the others have left.
    """
    import importlib.util

    from core import models, templates

    db = ctx.db
    group: Group = getattr(ctx, "group", SINGLE)
    cfg = RunConfig.from_dict(ctx.config)
    project_id = ctx.run["project_id"]
    threads = set_threads()
    if ctx.run.get("template_id"):
        tpl = templates.get_template_by_id(db, ctx.run["template_id"])
    else:
        tpl = templates.get_template(db, project_id, cfg.template)
        if group.main:
            db.execute("UPDATE runs SET template_id = ? WHERE id = ?", [tpl.id, ctx.run_id])
            db.conn.commit()
        ctx.run["template_id"] = tpl.id
    labels = projects.list_labels(db, project_id)
    if not labels:
        raise DataError("The project has no entity types.")
    train_ex = projects.examples(db, project_id, split="train")
    dev_ex = projects.examples(db, project_id, split="dev")
    if not train_ex:
        raise DataError("The project has no labelled training sentences.")
    ctx.log(f"Template {tpl.name!r} v{tpl.version}; {len(train_ex)} training and {len(dev_ex)} dev "
            f"sentences; {len(labels)} entity types; {threads} CPU threads.")
    info = models.device_info()
    ctx.log(f"Device: {info.describe()}"
            + (f"; {group.world} processes ({group.backend}), one per "
               + ("GPU" if info.device == "cuda" else "share of the CPU") if group.enabled else "")
            + ".")
    model, tokenizer, dtype = build_model(cfg, info.device, log=ctx.log, group=group)
    label_rows = [{"name": r["name"], "description": r.get("description") or ""} for r in labels]
    try:
        shots = shot_picker(tpl, train_ex)
        train_enc, stats = encode_examples(tokenizer, tpl, train_ex, label_rows,
                                           cfg.train.max_length, shots)
        dev_enc, _dev_stats = encode_examples(
            tokenizer, tpl, dev_ex[: cfg.train.dev_loss_sentences], label_rows,
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
    meta = {
        "run_id": ctx.run_id, "config": cfg.to_dict(), "template": tpl.to_dict(),
        "labels": [r["name"] for r in labels], "base_model": cfg.base_model,
        "device": info.device, "dtype": dtype, "processes": group.world,
    }

    def save(reason: str) -> None:
        save_adapter(model, tokenizer, folder, {**meta, "saved_because": reason})
        ctx.set_artifact(folder)
        ctx.log(f"Adapter saved ({reason}) to {folder}.")

    if group.main:
        hooks = Hooks(log=ctx.log, progress=ctx.progress, should_stop=ctx.should_stop, save=save)
    else:
        hooks = Hooks(log=ctx.log, should_stop=ctx.should_stop)
    result = train_loop(model, tokenizer, train_enc, dev_enc, cfg, info.device, dtype, hooks,
                        group)
    result.truncated, result.skipped = stats.truncated, stats.skipped
    if not group.main:
        return
    meta["result"] = {
        "steps": result.steps, "total_steps": result.total_steps, "epochs": result.epochs_done,
        "train_loss": result.train_loss, "dev_losses": result.dev_losses,
        "tokens_per_s": result.tokens_per_s, "seconds": result.seconds,
        "stopped": result.stopped,
    }
    save("stop" if result.stopped else "end")
    (ctx.run_dir / "result.json").write_text(json.dumps(meta["result"], indent=2))
    if result.stopped or ctx.should_stop():
        return
    if not cfg.train.eval_after:
        ctx.log("Evaluation after training is off.")
        return
    if importlib.util.find_spec("core.inference") is None:
        ctx.log("The evaluation module (core.inference) is not installed: no predictions made.")
        return
    from core import inference

    model.eval()
    model.config.use_cache = True
    if cfg.train.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    tokenizer.padding_side = "left"
    ctx.log("Predicting the dev and test splits with the trained adapter.")
    inference.predict_run(ctx, model, tokenizer, splits=("dev", "test"),
                          limit=cfg.train.eval_limit or None)
    if ctx.should_stop():
        return
    if importlib.util.find_spec("core.evaluate") is not None:
        from core import evaluate

        scores = evaluate.evaluate_run(db, ctx.run_id)
        for split, by_mode in scores.items():
            metrics = by_mode.get("default") if isinstance(by_mode, dict) else None
            if metrics and hasattr(evaluate, "summary_line"):
                ctx.log(f"{split}: {evaluate.summary_line(metrics)}")
