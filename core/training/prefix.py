"""The prompt prefix every training sentence shares: its keys and values computed once and read
by the sentences (:func:`core.training.loop.answer_loss_sum`), also under gradient checkpointing.

transformers drops a key/value cache from a checkpointed decoder layer, because the backward
pass replays the layer and a cache that grew on the first run would then hold the layer's own
keys twice. The prefix's cache here never grows (:func:`read_only`): a layer reads the prefix's
keys and values followed by its own and leaves the cache as it was, so a replay sees what the
first run saw, and the layers may keep it (:func:`reading_prefix`). The prefix's own forward
pass runs without checkpointing (:func:`prefix_cache`): its keys and values are what the
sentences' gradients flow back into. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any


def lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder, lm_head, logit softcap) of a causal LM, peft-wrapped or not."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(causal.config, "final_logit_softcapping", None)
    return causal.get_decoder(), causal.get_output_embeddings(), softcap


@functools.cache
def _prefix_layer() -> type:
    import torch
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """A cache layer that a forward pass reads without growing."""

        def update(self, key_states, value_states, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            return (torch.cat([self.keys, key_states], dim=-2),
                    torch.cat([self.values, value_states], dim=-2))

    return PrefixLayer


def _plain(layer: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return type(layer) is DynamicLayer or type(layer) is _prefix_layer()


def supported(model: Any) -> bool:
    """Whether the prefix can be shared by a model with gradient checkpointing on: its cache
    layers are plain growing ones (not sliding windows, not linear attention)."""
    try:
        from transformers.cache_utils import DynamicCache

        layers = DynamicCache(config=lm_parts(model)[0].config).layers
    except Exception:  # noqa: BLE001 - an unusual model: do not share the prefix
        return False
    return bool(layers) and all(_plain(x) for x in layers)


def read_only(cache: Any) -> Any:
    """``cache`` with every layer read without growing (see the module docstring); a cache
    with other layers (sliding windows) as it is: it is shared without checkpointing only
    (:func:`supported`)."""
    if all(_plain(layer) for layer in cache.layers):
        cls = _prefix_layer()
        for layer in cache.layers:
            layer.__class__ = cls
    return cache


def _checkpointing(decoder: Any) -> list[Any]:
    """The decoder and its layers where gradient checkpointing is on."""
    return [m for m in decoder.modules() if getattr(m, "gradient_checkpointing", False) is True]


def checkpointing(decoder: Any) -> bool:
    """Whether gradient checkpointing is on in ``decoder``."""
    return bool(_checkpointing(decoder))


def _checkpointed_layers(decoder: Any) -> list[Any]:
    return [m for m in _checkpointing(decoder) if hasattr(m, "_can_checkpoint_with_cache")]


_MISSING = object()


@contextlib.contextmanager
def _layers_set(layers: Sequence[Any], name: str, value: Any) -> Iterator[None]:
    before = [(layer, layer.__dict__.get(name, _MISSING)) for layer in layers]
    for layer in layers:
        setattr(layer, name, value)
    try:
        yield
    finally:
        for layer, old in before:
            if old is _MISSING:
                layer.__dict__.pop(name, None)
            else:
                setattr(layer, name, old)


def prefix_cache(model: Any, ids: Sequence[int], device: str, autocast_dtype: Any = None) -> Any:
    """The key/value cache of one row of prefix tokens, with its graph (gradients flow back
    through it); computed without checkpointing, read-only."""
    import torch

    decoder = lm_parts(model)[0]
    ctx = (torch.autocast(device_type=device, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    with ctx, _layers_set(_checkpointing(decoder), "gradient_checkpointing", False):
        cache = decoder(input_ids=torch.tensor([list(ids)], device=device), use_cache=True).cache
    return read_only(cache)


def reading_prefix(decoder: Any) -> contextlib.AbstractContextManager:
    """Checkpointed decoder layers keep the (read-only) prefix cache they are given."""
    return _layers_set(_checkpointed_layers(decoder), "_can_checkpoint_with_cache", True)


class StepPrefix:
    """The shared prompt prefix's keys and values, computed once for a whole optimiser step
    instead of once per micro-batch (one process; see :func:`core.training.loop.train_loop`).

    Each micro-batch attends to detached copies of the prefix's keys and values that collect
    their gradients over the step (:meth:`cache`); :meth:`backward` then passes the sum through
    the prefix's own graph once. By the chain rule the adapter gets the same gradients as when
    every micro-batch computed the prefix itself, for one prefix pass per step instead of one per
    micro-batch, which lets micro-batches be small (less memory) for little extra work.
    """

    def __init__(self, model: Any, ids: Sequence[int], device: str,
                 autocast_dtype: Any = None) -> None:
        import torch

        self._args = (model, list(ids), device, autocast_dtype)
        # Under gradient checkpointing the prefix is checkpointed too: computed without its
        # graph now, again with it (the same random state) when its gradients are passed back.
        self._recompute = checkpointing(lm_parts(model)[0]) and torch.is_grad_enabled()
        self._rng = _rng_state(device) if self._recompute else None
        with torch.no_grad() if self._recompute else contextlib.nullcontext():
            self._cache = prefix_cache(*self._args)
        self._outputs: list[Any] = []
        self._leaves: list[Any] = []
        for layer in self._cache.layers:
            for tensor in (layer.keys, layer.values):
                self._outputs.append(tensor)
                self._leaves.append(tensor.detach().requires_grad_(
                    self._recompute or tensor.requires_grad))

    def cache(self, rows: int) -> Any:
        """A key/value cache of the prefix for a micro-batch of ``rows`` rows."""
        import copy

        cache = copy.copy(self._cache)
        cache.layers = [copy.copy(layer) for layer in self._cache.layers]
        for i, layer in enumerate(cache.layers):
            layer.keys, layer.values = self._leaves[2 * i], self._leaves[2 * i + 1]
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def backward(self) -> None:
        """The step's gradients of the prefix's keys and values, through the prefix's graph."""
        import torch

        outputs = self._outputs
        if self._recompute and any(leaf.grad is not None for leaf in self._leaves):
            with _rng_restored(self._args[2], self._rng):
                cache = prefix_cache(*self._args)
            outputs = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        pairs = [(out, leaf.grad) for out, leaf in zip(outputs, self._leaves, strict=True)
                 if leaf.grad is not None and out.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self._outputs, self._leaves = [], []


def _rng_state(device: str) -> tuple[Any, Any]:
    import torch

    return torch.get_rng_state(), (torch.cuda.get_rng_state() if device == "cuda" else None)


@contextlib.contextmanager
def _rng_restored(device: str, state: tuple[Any, Any]) -> Iterator[None]:
    """The random state ``state`` inside (dropout draws the same masks), the outer one after."""
    import torch

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1])
        yield
