"""The answer tokens' cross-entropy through a frozen LM head, without keeping the logits.

A step of the bundled model has a few hundred answer tokens, each with 49,152 vocabulary
logits: held in float32 for the backward pass (logits, their log-softmax and its gradient)
they take ~150 MB at the moment the activations peak. Since the head is frozen (LoRA adapts the
decoder), the only gradient it passes back is the one to the hidden states, ``(softmax -
one_hot) · W``: it is computed during the forward pass, a chunk of rows at a time, and kept in
the hidden states' size (rows × 576) instead of the vocabulary's. Same loss and gradient as
``cross_entropy(head(hidden).float(), targets, reduction="sum")`` up to float rounding (a test
compares both).

torch is imported inside the functions only.
"""

from __future__ import annotations

import functools
from typing import Any

#: Rows of logits computed at once (each 49,152 floats for the bundled model: 25 MB per chunk).
CHUNK_ROWS = 128


def fusable(head: Any) -> bool:
    """True for a plain frozen linear head (no bias, no adapter on it)."""
    import torch

    return (type(head) is torch.nn.Linear and head.bias is None
            and not head.weight.requires_grad)


def answer_cross_entropy(hidden: Any, head: Any, targets: Any, softcap: float | None = None,
                         chunk_rows: int = CHUNK_ROWS) -> Any:
    """Summed cross-entropy of ``head(hidden)`` (optionally soft-capped) against ``targets``.

    ``hidden`` is (rows, hidden size); the result is a float32 scalar whose backward pass gives
    ``hidden`` its gradient. Heads that :func:`fusable` refuses take the plain path. Without a
    backward pass (the dev loss) the logits are made a chunk of rows at a time too: all at once
    they were ~250 MB of a dev micro-batch's float32 logits and log-softmax.
    """
    import torch
    import torch.nn.functional as F

    def plain(h: Any, t: Any) -> Any:
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return F.cross_entropy(logits, t, reduction="sum")

    if not hidden.requires_grad:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            total += plain(hidden[start : start + chunk_rows], targets[start : start + chunk_rows])
        return total
    if not fusable(head):
        return plain(hidden, targets)
    return _fused_class().apply(hidden, head.weight, targets, softcap or 0.0, chunk_rows)


@functools.cache
def _fused_class():
    """The autograd Function, built on first use (torch is not imported with this module)."""
    import torch

    class FusedAnswerCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, softcap, chunk_rows):  # noqa: ANN001, ANN205
            where = hidden.device.type
            dtype = (torch.get_autocast_dtype(where) if torch.is_autocast_enabled(where)
                     else hidden.dtype)
            w = weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(dtype)
                t = targets[start : start + chunk_rows]
                logits = (h @ w.t()).float()
                capped = None
                if softcap:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                probs = torch.exp(logits - lse[:, None])
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                if capped is not None:
                    probs *= 1.0 - capped * capped
                grad[start : start + chunk_rows] = (probs.to(dtype) @ w).to(hidden.dtype)
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, upstream):  # noqa: ANN001, ANN205
            (grad,) = ctx.saved_tensors
            return grad * upstream.to(grad.dtype), None, None, None, None

    return FusedAnswerCE

