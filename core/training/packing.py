"""A micro-batch's sentences as model inputs: padded rows, or rows packed without padding.

Packing puts several sentences end to end in one row; a ``(rows, 1, width, prefix + width)``
mask lets each token see the shared prompt prefix and the earlier tokens of its own sentence
only, and each token keeps the position it would have alone: the same loss and gradients as one
row per sentence, without computing padding. The attention kernels compute every (query, key)
pair of a row, masked or not, so one long row trades padding for attention work; the sentences
are dealt into the number of rows that costs least by :func:`cost` (linear layers per token,
attention per pair, from the model's shape).

torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Attention kernels do fewer FLOP/s than matrix products of the linear layers (measured on
#: CPU: ~100 vs ~150 GFLOP/s in bf16), so a pair counts this much more than its FLOPs say.
ATTENTION_SLOWDOWN = 1.5
#: When the model's shape is unknown: attention work per (query, key) pair relative to the
#: linear layers' work per token (SmolLM2-135M's figure).
DEFAULT_PAIR_WEIGHT = 4e-4


def pair_weight(config: Any) -> float:
    """Work of one (query, key) attention pair relative to one token through the linear
    layers, forward and backward (the frozen base passes gradients to its inputs only)."""
    try:
        d = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or d // heads)
        ff = int(config.intermediate_size)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return DEFAULT_PAIR_WEIGHT
    linear = 3 * 2 * (2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * ff)
    attention = 3.5 * 4 * heads * head_dim
    return ATTENTION_SLOWDOWN * attention / linear


def deal(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Sentence indices dealt into ``rows`` rows, longest first into the shortest row."""
    out: list[list[int]] = [[] for _ in range(rows)]
    totals = [0] * rows
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(rows), key=lambda r: totals[r])
        out[r].append(i)
        totals[r] += lengths[i]
    return [sorted(r) for r in out if r]


def cost(rows: Sequence[Sequence[int]], lengths: Sequence[int], prefix: int,
         weight: float) -> float:
    """Estimated work of a layout: every row padded to the widest, every pair attended."""
    width = max(sum(lengths[i] for i in r) for r in rows)
    return len(rows) * width * (1.0 + weight * (prefix + width))


def layout(lengths: Sequence[int], prefix: int, weight: float) -> list[list[int]]:
    """The cheapest way to deal sentences (their lengths past the prefix) into rows."""
    best: list[list[int]] | None = None
    best_cost = 0.0
    for n_rows in range(1, len(lengths) + 1):
        rows = deal(lengths, n_rows)
        c = cost(rows, lengths, prefix, weight)
        if best is None or c < best_cost:
            best, best_cost = rows, c
    return best or []


def padded_inputs(chunk: Sequence[Any], pad_id: int, prefix: int):
    """One row per sentence (minus the shared prefix), right-padded to the longest:
    ``(ids, 2-D mask, rows, cols, targets)``; ``rows``/``cols`` are where the hidden state
    predicting each answer token is."""
    import torch

    longest = max(len(e.ids) for e in chunk)
    ids = torch.full((len(chunk), longest - prefix), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), longest), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, e in enumerate(chunk):
        ids[i, : len(e.ids) - prefix] = torch.tensor(e.ids[prefix:])
        mask[i, : len(e.ids)] = 1
        for pos in range(e.n_prompt, len(e.ids)):
            rows.append(i)
            cols.append(pos - 1 - prefix)
            targets.append(e.ids[pos])
    return ids, mask, rows, cols, targets


def packed_inputs(chunk: Sequence[Any], pad_id: int, prefix: int, kind: str,
                  weight: float = DEFAULT_PAIR_WEIGHT):
    """The sentences (minus the shared prefix) end to end in the rows :func:`layout` picks:
    ``(ids, 4-D mask, position ids, rows, cols, targets)``. ``kind`` is "bool" (True = may
    attend, for sdpa) or "float" (0 / most negative, for eager attention). A padding token
    sees the prefix (or itself), so that no softmax row is empty; nothing reads its output."""
    import torch

    lengths = [len(e.ids) - prefix for e in chunk]
    dealt = layout(lengths, prefix, weight)
    width = max(sum(lengths[i] for i in r) for r in dealt)
    ids = torch.full((len(dealt), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(dealt), width), dtype=torch.long)
    segment = torch.full((len(dealt), width), -1, dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, members in enumerate(dealt):
        offset = 0
        for i in members:
            e = chunk[i]
            n = len(e.ids) - prefix
            ids[r, offset : offset + n] = torch.tensor(e.ids[prefix:])
            positions[r, offset : offset + n] = torch.arange(prefix, len(e.ids))
            segment[r, offset : offset + n] = i
            for pos in range(e.n_prompt, len(e.ids)):
                rows.append(r)
                cols.append(offset + pos - 1 - prefix)
                targets.append(e.ids[pos])
            offset += n
    same = segment[:, :, None] == segment[:, None, :]
    earlier = positions[:, None, :] <= positions[:, :, None]
    own = same & earlier & (segment[:, None, :] >= 0)
    pad = segment < 0
    if prefix == 0:  # a padding token attends to itself
        own |= torch.diag_embed(pad)
    allowed = torch.cat([torch.ones((len(dealt), width, prefix), dtype=torch.bool), own], dim=2)
    allowed = allowed[:, None]
    if kind == "bool":
        mask = allowed
    else:
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return ids, mask, positions, rows, cols, targets
