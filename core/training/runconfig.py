"""Typed fine-tuning configuration: the single source of defaults, help texts and presets.

A :class:`RunConfig` holds a :class:`LoraSettings` (the adapter) and a :class:`TrainSettings`
(the optimisation). Every field carries its help text and widget range in ``metadata``, so the
Train page builds its form from here and the CLI its ``--help``. Values are validated in
``__post_init__`` with messages that name the bad value. The config round-trips through JSON
(:meth:`RunConfig.to_dict` / :meth:`RunConfig.from_dict`) and is stored with each run.

This module is light (no torch): the Train page imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core import config
from core.errors import ConfigError

#: Fine-tuning methods. ``loraplus`` is LoRA with the LoRA+ optimiser (B matrices learn faster);
#: ``qlora`` is LoRA on a 4-bit NF4 base model; ``dora`` is weight-decomposed LoRA.
METHODS = ("lora", "loraplus", "qlora", "dora")


METHOD_LABELS = {
    "lora": "LoRA",
    "loraplus": "LoRA+ (faster-learning B matrices)",
    "qlora": "QLoRA (4-bit NF4 base model)",
    "dora": "DoRA (weight-decomposed LoRA)",
}


PRECISIONS = ("auto", "bf16", "fp32")


#: Modules LoRA adapts in Llama-style models (attention and MLP); same as core.models.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")




def _help(text: str, **widget: Any) -> dict[str, Any]:
    return {"help": text, **widget}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class LoraSettings:
    """The adapter: which modules get low-rank matrices, how big, and LoRA+'s learning-rate ratio."""

    rank: int = field(default=16, metadata=_help(
        "LoRA rank r: size of the low-rank matrices. 8-16 suits NER; higher learns more and "
        "needs more memory.", min=1, max=512, step=1))
    alpha: float = field(default=32.0, metadata=_help(
        "LoRA alpha: the update is scaled by alpha / r. Usually 2 × rank.", min=0.1, max=2048.0,
        step=1.0))
    dropout: float = field(default=0.05, metadata=_help(
        "Dropout on the LoRA input. 0 is fastest (on CPU dropout costs ~20% of a step); 0.05-0.1 "
        "regularises small data sets.", min=0.0, max=0.9, step=0.01))
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS, metadata=_help(
        "Module names that get adapters: attention (q/k/v/o_proj) and MLP (gate/up/down_proj) "
        "for Llama-style models."))
    loraplus_ratio: float = field(default=16.0, metadata=_help(
        "LoRA+ only: learning rate of the B matrices ÷ that of the A matrices (the paper uses 16).",
        min=1.0, max=256.0, step=1.0))

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        _check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
               f"LoRA rank must be a whole number ≥ 1, got {self.rank!r}.")
        _check(self.alpha > 0, f"LoRA alpha must be > 0, got {self.alpha!r}.")
        _check(0 <= self.dropout < 1, f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")
        _check(bool(self.targets), "LoRA needs at least one target module (e.g. q_proj, v_proj).")
        for target in self.targets:
            _check(target.replace("_", "").replace(".", "").isalnum(),
                   f"Target module {target!r} is not a module name (letters, digits, _ and .).")
        _check(self.loraplus_ratio >= 1, f"LoRA+ ratio must be ≥ 1, got {self.loraplus_ratio!r}.")


@dataclass
class TrainSettings:
    """Optimisation: how long, how fast, how much at once."""

    epochs: float = field(default=3.0, metadata=_help(
        "Passes over the training sentences (ignored when max steps > 0).", min=0.1, max=100.0,
        step=0.5))
    max_steps: int = field(default=0, metadata=_help(
        "Stop after this many optimiser steps; 0 = train for the number of epochs.", min=0,
        max=1_000_000, step=1))
    lr: float = field(default=2e-4, metadata=_help(
        "Learning rate (of the A matrices for LoRA+). Small models want more (5e-4), 8B models "
        "less (5e-5 to 2e-4).", min=1e-7, max=1e-1, format="%.1e"))
    batch_size: int = field(default=4, metadata=_help(
        "Sentences per forward pass. Lower it first when the GPU runs out of memory.", min=1,
        max=512, step=1))
    grad_accum: int = field(default=2, metadata=_help(
        "Batches accumulated per optimiser step: effective batch = batch size × this.", min=1,
        max=512, step=1))
    max_length: int = field(default=512, metadata=_help(
        "Longest prompt + answer in tokens; longer examples are cut at the end of the answer "
        "(counted in the log).", min=32, max=32_768, step=16))
    warmup_ratio: float = field(default=0.05, metadata=_help(
        "Share of the steps spent warming the learning rate up from 0 (then linear decay).",
        min=0.0, max=0.5, step=0.01))
    weight_decay: float = field(default=0.0, metadata=_help(
        "AdamW weight decay on the adapter weights (LoRA+ passes it as loraplus_weight_decay).",
        min=0.0, max=1.0, step=0.01))
    max_grad_norm: float = field(default=1.0, metadata=_help(
        "Clip the gradient norm to this; 0 = no clipping.", min=0.0, max=100.0, step=0.1))
    seed: int = field(default=42, metadata=_help(
        "Random seed for the adapter's initialisation and the order of the sentences.", min=0,
        max=2**31 - 1, step=1))
    gpus: int = field(default=1, metadata=_help(
        "GPUs to train on, one process each (data parallel, started with accelerate launch). "
        "Every step is split over them and the effective batch stays batch size × accumulation, "
        "so N GPUs give the same run about N× faster.", min=1, max=64, step=1))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in the backward pass: much less memory, ~30% slower."))
    precision: str = field(default="auto", metadata=_help(
        "auto = bf16 where the GPU or CPU computes in bf16 (CPUs with AVX512-BF16 or AMX: "
        "about 2× faster, half the memory), else float32.", options=PRECISIONS))
    dev_loss_sentences: int = field(default=200, metadata=_help(
        "Dev sentences used for the dev loss after each epoch (0 = no dev loss).", min=0,
        max=100_000, step=10))
    eval_after: bool = field(default=True, metadata=_help(
        "When training ends, predict the dev and test splits and score them."))
    eval_limit: int = field(default=0, metadata=_help(
        "Predict at most this many sentences per split after training (0 = all of them).",
        min=0, max=1_000_000, step=10))
    constrained: bool = field(default=True, metadata=_help(
        "Predict with constrained decoding: every answer is well-formed and every entity is whole "
        "words of its sentence, each used no more often than it occurs. Off: free generation, "
        "to compare."))

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "seed", "gpus",
                     "dev_loss_sentences", "eval_limit"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool),
                   f"{name.replace('_', ' ')} must be a whole number, got {value!r}.")
        _check(self.epochs > 0, f"Epochs must be > 0, got {self.epochs!r}.")
        _check(self.max_steps >= 0, f"Max steps must be ≥ 0, got {self.max_steps!r}.")
        _check(0 < self.lr < 1, f"Learning rate must be between 0 and 1, got {self.lr!r}.")
        _check(self.batch_size >= 1, f"Batch size must be ≥ 1, got {self.batch_size!r}.")
        _check(self.grad_accum >= 1, f"Gradient accumulation must be ≥ 1, got {self.grad_accum!r}.")
        _check(self.max_length >= 32, f"Max length must be ≥ 32 tokens, got {self.max_length!r}.")
        _check(0 <= self.warmup_ratio < 1, f"Warm-up ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        _check(self.weight_decay >= 0, f"Weight decay must be ≥ 0, got {self.weight_decay!r}.")
        _check(self.max_grad_norm >= 0, f"Max grad norm must be ≥ 0, got {self.max_grad_norm!r}.")
        _check(self.seed >= 0, f"Seed must be ≥ 0, got {self.seed!r}.")
        _check(self.gpus >= 1, f"GPUs must be ≥ 1, got {self.gpus!r}.")
        _check(self.precision in PRECISIONS,
               f"Precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        _check(self.eval_limit >= 0, f"Eval limit must be ≥ 0, got {self.eval_limit!r}.")
        _check(self.dev_loss_sentences >= 0,
               f"Dev loss sentences must be ≥ 0, got {self.dev_loss_sentences!r}.")


@dataclass
class RunConfig:
    """Everything a fine-tuning run needs besides the data: stored as JSON with the run."""

    method: str = field(default="loraplus", metadata=_help(
        "LoRA; LoRA+ (B matrices learn ratio × faster, converges in fewer steps); QLoRA (4-bit "
        "base model, for big models on small GPUs); DoRA (weight-decomposed LoRA).",
        options=METHODS))
    base_model: str = field(default=config.BUNDLED_MODEL, metadata=_help(
        "The bundled SmolLM2-135M, a Hugging Face id (e.g. meta-llama/Meta-Llama-3-8B-Instruct) "
        "or a local model folder."))
    template: str = field(default="default", metadata=_help(
        "Name of the instruction template (its latest version is used and recorded)."))
    preset: str = field(default="", metadata=_help("The preset these settings started from."))
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = _build(LoraSettings, self.lora)
        if isinstance(self.train, dict):
            self.train = _build(TrainSettings, self.train)
        _check(self.method in METHODS,
               f"Method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        _check(bool(str(self.base_model).strip()), "A base model is needed.")

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["lora"]["targets"] = list(self.lora.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error naming them."""
        return _build(cls, dict(data))

    # -- flat access (CLI flags, form fields) --------------------------------------------------

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat name (``rank``, ``lr``, ``method``, ...)."""
        out: dict[str, Any] = {}
        for name, (section, _f) in FIELDS.items():
            out[name] = getattr(getattr(self, section) if section else self, name)
        return out

    def with_overrides(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed by flat name; validates the result."""
        data = self.to_dict()
        for name, value in changes.items():
            if name not in FIELDS:
                raise ConfigError(f"Unknown setting {name!r}. Known: {', '.join(FIELDS)}.")
            section, _f = FIELDS[name]
            if isinstance(value, tuple):
                value = list(value)
            (data[section] if section else data)[name] = value
        return RunConfig.from_dict(data)

    @property
    def uses_loraplus(self) -> bool:
        return self.method == "loraplus"

    @property
    def quantization(self) -> str | None:
        return "nf4" if self.method == "qlora" else None

    def summary(self) -> str:
        """One line for lists and logs."""
        t = self.train
        length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
        extra = f", ratio {self.lora.loraplus_ratio:g}" if self.uses_loraplus else ""
        return (f"{self.method} r={self.lora.rank} α={self.lora.alpha:g}{extra}, lr {t.lr:g}, "
                f"{length}, batch {t.batch_size}×{t.grad_accum}, max {t.max_length} tokens")


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown setting(s) {', '.join(unknown)} in {cls.__name__}.")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"Bad settings for {cls.__name__}: {exc}") from None


def _fields_index() -> dict[str, tuple[str, dataclasses.Field]]:
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in ("lora", "train"):
            continue
        index[f.name] = ("", f)
    for section, cls in (("lora", LoraSettings), ("train", TrainSettings)):
        for f in dataclasses.fields(cls):
            index[f.name] = (section, f)
    return index


#: Flat setting name → (section or "", dataclass field with help text and widget range).
FIELDS: dict[str, tuple[str, dataclasses.Field]] = _fields_index()




@dataclass(frozen=True)
class Preset:
    """A named starting point, with where its numbers come from."""

    name: str
    description: str
    settings: dict[str, Any]

    def config(self, **overrides: Any) -> RunConfig:
        """The preset's config with optional flat overrides applied."""
        return RunConfig(preset=self.name).with_overrides(**{**self.settings, **overrides})


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "Small model on CPU",
            "For the bundled SmolLM2-135M on a CPU: LoRA+ r=16, α=32, ratio 16, a higher learning "
            "rate (5e-4) and several epochs, which small models need to learn the format; no "
            "dropout (it costs ~20% of a CPU step); bf16 where the CPU computes in it.",
            dict(method="loraplus", rank=16, alpha=32.0, dropout=0.0, loraplus_ratio=16.0,
                 targets=DEFAULT_TARGETS, lr=5e-4, epochs=3.0, batch_size=4, grad_accum=2,
                 max_length=384, warmup_ratio=0.05, precision="auto"),
        ),
        Preset(
            "LoRA+ for NER",
            "LoRA+ paper setting for NER: rank 16, alpha 32, B/A learning-rate ratio 16, adapters on "
            "attention and MLP; converges in ~60% of plain LoRA's steps and scored higher on "
            "CoNLL-2003 and biomedical NER.",
            dict(method="loraplus", rank=16, alpha=32.0, dropout=0.05, loraplus_ratio=16.0,
                 targets=DEFAULT_TARGETS, lr=1e-4, epochs=3.0, batch_size=8, grad_accum=1,
                 max_length=512, warmup_ratio=0.05),
        ),
        Preset(
            "Llama-3 financial NER",
            "Instruction tuning of Llama-3-8B on financial NER (micro-F1 0.894): LoRA r=8, α=16, "
            "dropout 0, 3 epochs, lr 5e-5, batch 4 × grad-accum 6, bf16, max 400 tokens.",
            dict(method="lora", rank=8, alpha=16.0, dropout=0.0, targets=DEFAULT_TARGETS,
                 lr=5e-5, epochs=3.0, batch_size=4, grad_accum=6, max_length=400,
                 warmup_ratio=0.03, precision="bf16"),
        ),
        Preset(
            "QLoRA 4-bit",
            "QLoRA: the base model in 4-bit NF4 with double quantisation and bf16 compute, LoRA on "
            "all linear layers (r=64, α=16, dropout 0.05, lr 2e-4); fits 8B models in ~10 GB.",
            dict(method="qlora", rank=64, alpha=16.0, dropout=0.05, targets=DEFAULT_TARGETS,
                 lr=2e-4, epochs=3.0, batch_size=4, grad_accum=4, max_length=512,
                 warmup_ratio=0.03, gradient_checkpointing=True),
        ),
        Preset(
            "DoRA",
            "DoRA: LoRA with a learned magnitude per output (rank 32, α=64, dropout 0.05, lr 1e-4); "
            "closer to full fine-tuning at the same rank, ~20% slower per step than LoRA.",
            dict(method="dora", rank=32, alpha=64.0, dropout=0.05, targets=DEFAULT_TARGETS,
                 lr=1e-4, epochs=3.0, batch_size=4, grad_accum=2, max_length=512,
                 warmup_ratio=0.05),
        ),
    )
}


DEFAULT_PRESET = "Small model on CPU"




def get_preset(name: str) -> Preset:
    """A preset by name (case-insensitive), or a ConfigError listing the known ones."""
    for key, preset in PRESETS.items():
        if key.lower() == name.strip().lower():
            return preset
    raise ConfigError(f"No preset {name!r}. Presets: {', '.join(PRESETS)}.")


#: What ``--preset`` takes for "no preset, the plain defaults".
NO_PRESET = "none"


def default_preset_for(base_model: str, cuda: bool) -> str:
    """The preset to offer first: the small-model one on CPU, LoRA+ for NER on a GPU."""
    return "LoRA+ for NER" if cuda else DEFAULT_PRESET
