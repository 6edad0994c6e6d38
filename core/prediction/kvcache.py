"""The key/value cache of a batch being generated: its rows' first pass, and rows leaving and
joining it (continuous batching in :func:`core.prediction.decoding._greedy`).

Every row's keys and values sit in one ``(rows, heads, positions, head size)`` tensor per layer,
with a ``(rows, positions)`` mask of the positions the row attends to: the shared prompt prefix,
its own suffix (left-padded) and its chosen tokens; rejected drafts and padding are holes. Keys
carry their rotary positions already, so positions may be dropped or moved without changing
what a row attends to. torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _device(model: Any):
    return next(model.parameters()).device


def prefill(model: Any, rows: Sequence[Sequence[int]], pad_id: int, shared: tuple[int, Any]):
    """The first forward pass of ``rows`` on top of the shared prefix's cache: their suffixes
    left-padded after the prefix. Returns ``(cache, mask, last position, last logits)``."""
    import copy

    import torch

    device = _device(model)
    plen, prefix_cache = shared
    suffixes = [list(r[plen:]) for r in rows]
    width = max(len(s) for s in suffixes)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, plen + width), dtype=torch.long)
    mask[:, :plen] = 1
    for r, s in enumerate(suffixes):
        input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, plen + width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, plen:]
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(batch)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    return out.cache, mask, positions[:, -1:], out.logits[:, -1:, :]


def compact(cache: Any, mask: Any) -> Any:
    """Drop the cache positions no row attends to any more (left padding, rejected drafts):
    each row keeps its attended keys and values in order, left-padded to the row with the most.
    Keys carry their rotary positions already, so their slots may move. Returns the new mask."""
    import torch

    width = int(mask.sum(1).max())
    if width == mask.shape[1]:
        return mask
    index = torch.sort(mask, dim=1, stable=True).indices[:, -width:]
    for layer in cache.layers:
        where = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys, layer.values = layer.keys.gather(2, where), layer.values.gather(2, where)
    return mask.gather(1, index)


def merge(cache: Any, mask: Any, other: Any, other_mask: Any) -> Any:
    """Append the rows of ``other`` (a cache with its mask) to ``cache``: the shorter one is
    padded on the left with positions nobody attends to. Returns the joint mask."""
    import torch

    width = max(mask.shape[1], other_mask.shape[1])

    def padded(layer_tensor: Any, n: int) -> Any:
        if n == 0:
            return layer_tensor
        shape = list(layer_tensor.shape)
        shape[2] = n
        return torch.cat([layer_tensor.new_zeros(shape), layer_tensor], dim=2)

    grow, grow_other = width - mask.shape[1], width - other_mask.shape[1]
    for layer, extra in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([padded(layer.keys, grow), padded(extra.keys, grow_other)], dim=0)
        layer.values = torch.cat([padded(layer.values, grow), padded(extra.values, grow_other)],
                                 dim=0)
    return torch.cat([torch.nn.functional.pad(mask, (grow, 0)),
                      torch.nn.functional.pad(other_mask, (grow_other, 0))], dim=0)


def croppable(cache: Any) -> bool:
    """Whether rejected draft positions can be cut off the cache (every layer a plain,
    growing key/value layer)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # another transformers: no drafts rather than no cache
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and hasattr(cache, "crop") and all(type(x) is DynamicLayer for x in layers)
