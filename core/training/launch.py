"""How a run's processes are started: on this machine alone, or with the user's accelerate config
and on several machines.

A run with ``gpus`` > 1 (processes per machine) is started with ``accelerate launch``
(:func:`core.jobs.launcher.worker_command`). :class:`Launch` holds what ``nerlab train`` adds:

* ``config_file``: the user's accelerate config instead of the one NERLab writes for the run
  (``default``: whatever ``accelerate launch`` finds itself: ``ACCELERATE_CONFIG_FILE`` or
  ``~/.cache/huggingface/accelerate/default_config.yaml``).
* ``num_machines``, ``main_process_ip``, ``main_process_port``: several machines. The machine that
  runs ``nerlab train`` is machine 0 and owns the run; every other machine joins with
  ``nerlab join RUN_ID --machine-rank K`` (same ``NERLAB_HOME``, on a shared folder).

NERLab's trainer runs through ``accelerate.Accelerator`` (:mod:`core.training.engine`): a
config's process layout (machines, processes, addresses) and its distributed type are honoured —
data parallel (MULTI_GPU, DDP) or FSDP with the config's FSDP settings; DeepSpeed is refused (the
pre-flight check says why, :func:`issues`).

The settings travel with the run as ``launch.json`` in its folder. Light: no torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError

LAUNCH_FILE = "launch.json"
#: ``config_file`` value: let ``accelerate launch`` find the user's default config itself.
DEFAULT_CONFIG = "default"

#: An accelerate config for FSDP version 2 over ``{n}`` processes on one machine (the layout the
#: README's FSDP example, the FSDP test and ``scripts/gpu_check.py`` use).
FSDP2_CONFIG = """distributed_type: FSDP
num_machines: 1
num_processes: {n}
mixed_precision: 'no'
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""
#: Distributed types of an accelerate config that NERLab's trainer runs as such.
SUPPORTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP")


@dataclass(frozen=True)
class Launch:
    """How ``accelerate launch`` starts a run's processes (see the module's docstring)."""

    config_file: str = ""
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 0

    def __post_init__(self) -> None:
        if self.num_machines < 1:
            raise ConfigError(f"Machines must be ≥ 1, got {self.num_machines!r}.")
        if not 0 <= self.machine_rank < self.num_machines:
            raise ConfigError(f"Machine rank must be between 0 and {self.num_machines - 1}, got "
                              f"{self.machine_rank!r}.")
        if not 0 <= self.main_process_port < 65536:
            raise ConfigError(f"Port must be between 1 and 65535, got {self.main_process_port!r}.")

    @property
    def plain(self) -> bool:
        """Nothing asked for: NERLab's own config on this machine alone."""
        return self == Launch()

    @property
    def user_config(self) -> Path | None:
        """The user's accelerate config file (None: NERLab's own)."""
        if not self.config_file:
            return None
        if self.config_file == DEFAULT_CONFIG:
            found = os.environ.get("ACCELERATE_CONFIG_FILE") or str(
                Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                / "accelerate" / "default_config.yaml")
            return Path(found)
        return Path(self.config_file).expanduser()

    def on_machine(self, rank: int) -> Launch:
        return replace(self, machine_rank=int(rank))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save(folder: Path, launch: Launch) -> None:
    """Keep a run's launch settings in its folder (none written for a plain launch)."""
    if not launch.plain:
        (folder / LAUNCH_FILE).write_text(json.dumps(launch.to_dict(), indent=2))


def load(folder: Path) -> Launch:
    """A run's launch settings (plain when it has none)."""
    path = folder / LAUNCH_FILE
    if not path.is_file():
        return Launch()
    try:
        return Launch(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Bad launch settings in {path}: {exc}") from None


def read_config(path: Path) -> dict[str, Any]:
    """An accelerate config file (YAML or JSON) as a dict."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"Cannot read the accelerate config {path}: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"The accelerate config {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The accelerate config {path} holds no settings.")
    return data


def processes(gpus: int, launch: Launch) -> int:
    """Processes over all machines: ``gpus`` per machine × machines."""
    return max(1, int(gpus)) * launch.num_machines


def needs_accelerate(gpus: int, launch: Launch) -> bool:
    """True when the run is started with ``accelerate launch`` (not as one plain process)."""
    return gpus > 1 or not launch.plain


def describe(gpus: int, launch: Launch) -> str:
    """What will run, in one sentence (for the pre-flight check and the log)."""
    n = processes(gpus, launch)
    user = launch.user_config
    if user is not None and gpus <= 1:
        where = "the processes the config asks for"
        if launch.num_machines > 1:
            where += f", on {launch.num_machines} machines"
    elif launch.num_machines > 1:
        where = f"{launch.num_machines} machines × {gpus} process(es), {n} in all"
    else:
        where = f"{n} process(es) on this machine"
    cfg = f"your accelerate config {user}" if user else "NERLab's own accelerate config"
    text = f"accelerate launch with {cfg}: {where}"
    if launch.num_machines > 1:
        text += (f"; the main process at {launch.main_process_ip or '?'}:"
                 f"{launch.main_process_port or '?'}")
    return text + "."


def issues(gpus: int, launch: Launch) -> list[tuple[str, str, str]]:
    """``(level, title, message)`` for the pre-flight check: what will run, and what cannot."""
    if not needs_accelerate(gpus, launch):
        return []
    title = "How the run starts"
    out = [("info", title, describe(gpus, launch))]
    if launch.num_machines > 1:
        if not launch.main_process_ip:
            out.append(("error", title, f"{launch.num_machines} machines need the main machine's "
                        "address (--main-process-ip, reachable from the others)."))
        if not launch.main_process_port:
            out.append(("error", title, "Several machines need a fixed port (--main-process-port) "
                        "that every machine can reach."))
        out.append(("info", title, "Start the other machines with `nerlab join RUN_ID "
                    "--machine-rank K` (K = 1.."f"{launch.num_machines - 1}), with NERLAB_HOME on "
                    "a folder every machine shares."))
    user = launch.user_config
    if user is not None:
        if not user.is_file():
            out.append(("error", title, f"No accelerate config at {user} (write one with "
                        "`accelerate config`, or leave out --accelerate-config)."))
            return out
        try:
            data = read_config(user)
        except ConfigError as exc:
            return [*out, ("error", title, str(exc))]
        kind = str(data.get("distributed_type", "NO")).upper()
        if kind == "DEEPSPEED":
            out.append(("error", title, "The config asks for DeepSpeed, which NERLab's trainer "
                        "does not run (DeepSpeed steps the optimiser inside its backward pass; a "
                        "NERLab step has a varying number of micro-batches): use FSDP or "
                        "MULTI_GPU."))
        elif kind not in SUPPORTED_TYPES:
            out.append(("warning", title, f"The config asks for {kind}: NERLab's trainer runs "
                        "data parallel (DDP) or FSDP, and runs this config as data parallel."))
        elif kind == "FSDP":
            out.append(("info", title, "FSDP: the model's weights are sharded over the "
                        "processes with the config's FSDP settings; the adapter is gathered on "
                        "the main process at the end (no mid-run saves), and each process then "
                        "predicts with a whole model."))
        if data.get("num_machines") not in (None, launch.num_machines):
            out.append(("info", title, f"The config says {data['num_machines']} machine(s); "
                        f"--num-machines {launch.num_machines} wins."))
    return out
