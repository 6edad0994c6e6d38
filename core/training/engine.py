"""How a training step's gradients are made and applied: one process, or several through
``accelerate.Accelerator`` (whose config — written by NERLab or the user's — picks DDP or FSDP).

The loss of a micro-batch is :func:`core.training.loop.answer_loss_sum` (answer-only logits, the
shared prompt prefix's key/value cache, token-budget micro-batches). Over several processes it
runs inside :class:`AnswerLossModule`, an ``nn.Module`` around the peft model, so that
``accelerator.prepare`` can wrap it: DistributedDataParallel's hooks, or FSDP's all-gathers of
the sharded weights, need the forward to go through the wrapped module.

Why the optimisation is the same as in one process:

* every process divides its answer-token loss sum by the *whole* step's answer-token count;
* DDP and FSDP *average* the gradients over the processes, so each process's loss is multiplied
  by the number of processes (:attr:`Engine.scale`): the average of N such gradients is the sum
  of the shares, the gradient of the step's per-token mean;
* gradients are synchronised once per step: every micro-batch but the last runs under
  ``accelerator.no_sync``;
* a process with fewer micro-batches than another runs filler ones (a real sentence of the step,
  weight 0): DDP needs every process in the step's one synchronised backward, FSDP needs the same
  number of forward and backward passes everywhere (each gathers the sharded weights).

FSDP (version 2) shards the model's weights; after training the adapter is gathered on rank 0
(:meth:`Engine.adapter_state`) and shared with the other processes, which then predict with a
model rebuilt from it (:func:`core.training.fine_tune.run`). DeepSpeed is refused with a message:
its engine takes the optimiser step inside ``backward``, while NERLab's steps are made of a
varying number of micro-batches.

One process uses :class:`Engine` without an Accelerator: plain ``backward`` and ``step``, as fast
as before. torch and accelerate are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from core.errors import ConfigError
from core.training.distributed import Group

#: What runs a step's forward and backward passes, by accelerate's distributed type.
SINGLE_KIND = "one process"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def requested_kind() -> str:
    """What ``accelerate launch`` asked this process for (from its environment): FSDP, DEEPSPEED
    or DDP."""
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "DEEPSPEED"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "FSDP"
    return "DDP"


def answer_loss_module(loss_fn: Callable[..., Any]):
    """The ``nn.Module`` class whose forward is ``loss_fn(peft_model, chunk, ...)`` (built
    lazily: torch is not imported at module level)."""
    import torch

    class AnswerLossModule(torch.nn.Module):
        """The peft model, with the answer-only loss as its forward: ``forward(chunk, pad_id,
        device, autocast_dtype, prefix)`` returns ``(loss_sum, n_answer_tokens)``."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            # accelerate's FSDP auto-wrap policy reads the layer classes to shard from here.
            self._no_split_modules = getattr(base, "_no_split_modules", None)

        def forward(self, chunk, pad_id, device, autocast_dtype=None, prefix=0):
            return loss_fn(self.model, chunk, pad_id, device, autocast_dtype, prefix)

    return AnswerLossModule


class Engine:
    """A step's backward passes and its optimiser update (see the module's docstring).

    Built by :func:`create`; ``loss`` has :func:`~core.training.loop.answer_loss_sum`'s signature.
    """

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, group: Group,
                 loss_fn: Callable[..., Any], accelerator: Any = None, wrapped: Any = None,
                 kind: str = SINGLE_KIND) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.group = group
        self._loss_fn = loss_fn
        self.accelerator = accelerator
        self.wrapped = wrapped
        self.kind = kind
        self.params = [p for p in model.parameters() if p.requires_grad]

    # -- what the loop asks ----------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None

    @property
    def sharded(self) -> bool:
        """True when the weights are sharded over the processes (FSDP): every forward pass is a
        collective, the adapter must be gathered to be saved, and the processes predict with a
        rebuilt model."""
        return self.kind == "FSDP"

    @property
    def scale(self) -> float:
        """What each process's loss is multiplied by so that the averaged gradient is the sum."""
        return float(self.group.world) if self.distributed else 1.0

    def loss(self, model: Any, chunk: Sequence[Any], pad_id: int, device: str,
             autocast_dtype: Any = None, prefix: int = 0, step_prefix: Any = None
             ) -> tuple[Any, int]:
        """The loss sum and answer-token count of a micro-batch (through the wrapped module when
        there is one; ``model`` is then the module it wraps). ``step_prefix`` (one process
        only): the prefix's keys and values computed once for the step."""
        if self.wrapped is None:
            if step_prefix is not None:
                return self._loss_fn(model, chunk, pad_id, device, autocast_dtype, prefix,
                                     step_prefix=step_prefix)
            return self._loss_fn(model, chunk, pad_id, device, autocast_dtype, prefix)
        return self.wrapped(chunk, pad_id, device, autocast_dtype, prefix)

    def schedule(self, chunks: Sequence[Any], filler: Any) -> list[tuple[Any, float]]:
        """``(micro-batch, weight)`` this process runs in a step: its own with weight 1, then
        fillers (``filler``, weight 0) up to what the processes need to run together: at least
        one each under DDP, as many as the busiest process under FSDP."""
        out = [(chunk, 1.0) for chunk in chunks]
        if not self.distributed:
            return out
        need = 1
        if self.sharded:
            need = int(self.max_int(len(out)))
        return out + [(filler, 0.0)] * max(0, need - len(out))

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the processes."""
        if not self.distributed:
            return int(value)
        import torch

        tensor = torch.tensor([int(value)], device=self.accelerator.device)
        return int(self.accelerator.reduce(tensor, reduction="max").item())

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """A few numbers summed over the processes (the step's loss sum, stop flags)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64,
                              device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Around a micro-batch's forward *and* backward passes: gradients are synchronised over
        the processes on the ``last`` one only (DDP decides it at the forward pass)."""
        if not self.distributed or last:
            yield
            return
        with self.accelerator.no_sync(self.wrapped):
            yield

    def backward(self, loss_sum: Any, n_step_answer: int, weight: float = 1.0) -> None:
        """Backward pass of a micro-batch's share of the step's per-token mean loss (``weight``
        0: a filler, see :meth:`schedule`)."""
        if not self.distributed:
            (loss_sum / n_step_answer).backward()
            return
        self.accelerator.backward(loss_sum * (weight * self.scale) / n_step_answer)

    def step(self, max_grad_norm: float) -> None:
        """Clip, update the adapter, advance the learning rate, clear the gradients."""
        if self.distributed:
            if max_grad_norm:
                self.accelerator.clip_grad_norm_(self.wrapped.parameters(), max_grad_norm)
        elif max_grad_norm:
            import torch

            torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def adapter_state(self) -> dict[str, Any] | None:
        """Sharded weights only (every process calls it): the trained adapter's weights, gathered
        on rank 0 and shared with every process (CPU tensors, peft's names). None otherwise."""
        if not self.sharded:
            return None
        from peft import get_peft_model_state_dict

        full = self.accelerator.get_state_dict(self.wrapped)  # a collective; rank 0 gets it all
        state = None
        if self.group.main:
            inner = {k.removeprefix("model."): v for k, v in full.items()}
            state = {k: v.detach().cpu().clone()
                     for k, v in get_peft_model_state_dict(self.model, state_dict=inner).items()}
        return self.group.broadcast_object(state)

    def describe(self) -> str:
        """For the log."""
        if not self.distributed:
            return SINGLE_KIND
        return f"{self.kind} through accelerate over {self.group.world} processes"


def restore_adapter(model: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from :meth:`Engine.adapter_state`) into a fresh peft ``model``."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise RuntimeError(f"The gathered adapter does not fit the model: {unexpected[:3]} ...")


def create(model: Any, optimizer: Any, scheduler: Any, group: Group,
           loss_fn: Callable[..., Any]) -> Engine:
    """The step engine of this process: plain for one process, else an Accelerator that wraps
    :class:`AnswerLossModule` as the launch config says (DDP or FSDP)."""
    if not group.enabled:
        return Engine(model, optimizer, scheduler, group, loss_fn)
    kind = requested_kind()
    accelerator = _accelerator(kind)
    module = answer_loss_module(loss_fn)(model)
    wrapped, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    return Engine(model, optimizer, scheduler, group, loss_fn, accelerator, wrapped,
                  "FSDP" if kind == "FSDP" else "DDP")


def _accelerator(kind: str):
    """An Accelerator over the process group :func:`core.training.distributed.init` joined."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    if kind == "DEEPSPEED":
        raise ConfigError(
            "The accelerate config asks for DeepSpeed, which NERLab's trainer does not run: "
            "DeepSpeed takes the optimiser step inside its backward pass, while a NERLab step is "
            "made of a varying number of micro-batches. Use distributed_type FSDP (ZeRO-3's "
            "sharding) or MULTI_GPU (data parallel) in the config.")
    cpu = not torch.cuda.is_available()
    if kind == "FSDP" and cpu:
        if os.environ.get("FSDP_VERSION", "1").strip() != "2":
            raise ConfigError(
                "FSDP version 1 does not run on a CPU (torch: 'Inconsistent compute device and "
                "device_id: cpu vs cpu:0'): set fsdp_version: 2 in the accelerate config.")
        # accelerate applies FSDP only on accelerators (on a CPU its state says MULTI_CPU and the
        # FSDP settings are dropped); FSDP2 itself runs over gloo, so a laptop or a test can
        # try an FSDP setup: tell accelerate the gloo group is a multi-device one.
        state = PartialState(cpu=True)
        if state.distributed_type == DistributedType.MULTI_CPU:
            state.distributed_type = DistributedType.MULTI_GPU
        cpu = False  # the state is made: do not let the Accelerator turn it back into MULTI_CPU
    accelerator = Accelerator(
        cpu=cpu,  # without it, accelerate sees no process group on a CPU (distributed type NO)
        device_placement=False,  # the model is already where build_model put it (4-bit too)
        step_scheduler_with_optimizer=False,  # one scheduler step per optimiser step, not N
        # The processes run different numbers of forward passes: no per-forward collectives.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    if accelerator.distributed_type == DistributedType.NO or accelerator.num_processes < 2:
        raise RuntimeError(
            f"accelerate does not see the run's {os.environ.get('WORLD_SIZE')} processes "
            f"(distributed type {accelerator.distributed_type}): the gradients would not be "
            "shared. Start the run with accelerate launch (nerlab train --gpus N).")
    return accelerator
