"""Labelled sentences -> token ids, optimiser batches and micro-batches, the shared prompt prefix."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.data.spans import Example
from core.prompts import formats, render
from core.training.runconfig import RunConfig


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
    out: list[Encoded] = []
    stats = EncodeStats()
    for ex in examples:
        shots = shots_for(ex) if shots_for else ()
        answer = formats.render_answer(tpl, ex.text, ex.spans)
        prompt, target = render.build_chat(tokenizer, tpl, ex.text, labels, shots=shots,
                                              answer=answer)
        prompt_ids, target_ids = render.encode_chat(tokenizer, prompt, target)
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


def optimizer_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of one epoch, shuffled (seed + epoch), cut into optimiser batches (mixed lengths)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch] for i in range(0, n, batch)]


def micro_batches(items: Sequence[Encoded], token_budget: int, prefix: int = 0,
                  packed: bool = False) -> list[list[Encoded]]:
    """Sort one optimiser batch by length and cut it into micro-batches whose size stays
    within ``token_budget``: bounded memory. With a shared ``prefix`` (computed once per
    micro-batch) a padded micro-batch costs ``prefix + sentences × (longest - prefix)``, a
    ``packed`` one (no padding) ``prefix + sum(length - prefix)``."""
    ordered = sorted(items, key=lambda e: len(e.ids))
    chunks: list[list[Encoded]] = []
    current: list[Encoded] = []
    size = 0  # packed: the tokens of ``current`` past the prefix
    for item in ordered:
        longest = max(len(item.ids), max((len(c.ids) for c in current), default=0))
        cost = (size + len(item.ids) - prefix if packed
                else (longest - prefix) * (len(current) + 1))
        if current and prefix + cost > token_budget:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item.ids) - prefix
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


def plan_steps(n_train: int, cfg: RunConfig) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps) for ``n_train`` encoded sentences."""
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    per_epoch = max(1, math.ceil(n_train / per_step))
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    return per_epoch, total
