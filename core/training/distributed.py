"""Data-parallel training over several GPUs, one process per GPU (``accelerate launch``).

A run with ``gpus`` > 1 is started as ``accelerate launch --multi_gpu --num_processes N -m
core.jobs.worker RUN_ID`` (see :func:`core.jobs.launcher.worker_command`); accelerate starts N copies of the
worker through ``torch.distributed.run`` with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set.

How the work is split, and why the result is the same as on one GPU:

* Every process builds the same optimiser batches (same seed, same epoch shuffle) and takes its
  share of each one (:func:`shard`: sorted by length, dealt round-robin, so every GPU gets about
  the same number of tokens). The effective batch stays ``batch_size × grad_accum``: N GPUs make
  the same run about N times faster instead of changing its hyper-parameters.
* The gradients are made and applied through ``accelerate.Accelerator``
  (:mod:`core.training.engine`): the launch config's distributed type decides whether the model
  is replicated (DDP) or its weights sharded (FSDP). Each process divides its answer-token loss
  sum by the *whole* step's answer-token count and the engine scales it so that the averaged
  gradient is exactly the gradient of the step's per-token mean.
* The adapter starts identical everywhere (broadcast from rank 0), every process applies the same
  gradient, so the weights stay identical; only rank 0 writes progress, the log, the
  adapter and the run's status. A stop (button, SIGTERM) is agreed on at each step so that all
  processes leave the loop together.

Single-process runs use :data:`SINGLE`, whose methods do nothing. torch is imported inside the
functions only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Group:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        """True for the process that writes the status, the metrics and the adapter."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # -- collectives (no-ops for a single process) ---------------------------------------------

    def sum_floats(self, values: Sequence[float], device: str) -> list[float]:
        """Sum a few numbers over the processes (loss sums, counts, stop flags)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def broadcast_params(self, params: Sequence[Any]) -> None:
        """Copy rank 0's values of ``params`` to every process (the adapter's initial weights)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_true(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them (an agreed stop)."""
        if not self.enabled:
            return bool(flag)
        return self.sum_floats([1.0 if flag else 0.0], self.device)[0] > 0

    def gather_object(self, value: Any) -> list[Any] | None:
        """Every process's ``value``, in rank order, on rank 0 (None on the others)."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(value, out, dst=0)
        return out

    @property
    def device(self) -> str:
        """Where this process's collectives live: its GPU under NCCL, else the CPU."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"

    def close(self) -> None:
        """Leave the process group (after the last collective)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


#: A run in one process.
SINGLE = Group()


# What torch.distributed raises in a survivor when another process of the group has died
# (gloo: "Connection closed by peer", NCCL: "DistBackendError", a watchdog's abort, a timeout).
_LOST_PEER_NAMES = ("DistBackendError", "DistNetworkError")


_LOST_PEER_TEXT = ("connection closed by peer", "connection reset by peer", "broken pipe",
                   "remote worker crash", "communicator was aborted", "socket timeout",
                   "timed out waiting for", "nccl watchdog")


def lost_peer(exc: BaseException) -> bool:
    """True when ``exc`` says another process of the run went away (not a fault of this one)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(_LOST_PEER_NAMES):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _LOST_PEER_TEXT)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else default


def init() -> Group:
    """Join the launcher's process group when there is one (``WORLD_SIZE`` > 1), else SINGLE.

    On CUDA each process takes the GPU of its local rank (NCCL); without CUDA the processes share
    the CPU (gloo) — only useful to try a multi-GPU setup on a laptop or in tests.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"Process {rank} wants GPU {local_rank}, but only {torch.cuda.device_count()} "
                "GPU(s) are visible: lower the number of GPUs of the run."
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        # Long timeout: rank 0 may convert the bundled model or load an 8B one while the others wait.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Group(rank=rank, world=world, local_rank=local_rank, backend=backend)


def shard(items: Sequence[Any], group: Group, length: Any = len) -> list[Any]:
    """This process's share of one optimiser batch: sorted by length, dealt round-robin, so the
    processes get about the same number of tokens."""
    if not group.enabled:
        return list(items)
    ordered = sorted(items, key=length)
    return ordered[group.rank :: group.world]
