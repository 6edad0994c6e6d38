"""Pre-flight checks before a run starts (no torch)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config, procs
from core.config import MIN_TRAIN, RECOMMENDED_TRAIN
from core.data import projects
from core.errors import NerlabError
from core.models import loader
from core.prompts.roundtrip import check_project
from core.prompts.store import get_template
from core.training import estimate
from core.training.launch import Launch
from core.training.launch import issues as launch_issues
from core.training.runconfig import RunConfig

#: Training sentences whose answers the pre-flight check round-trips.
ROUND_TRIP_SAMPLE = 50


#: The share of the training sentences the "No dev split" fix sets aside as dev, and its seed.
DEV_SHARE = 0.1
DEV_SEED = 0
#: ``Issue.action`` of the "Estimated time" finding: the page offers to time one step (or says
#: one is being timed).
MEASURE = "measure"
MEASURING = "measuring"
#: ``Issue.action`` of the "No dev split" finding: the page offers a button that runs
#: :func:`carve_dev_fix`.
CARVE_DEV = "carve_dev"


@dataclass(frozen=True)
class Issue:
    """One pre-flight finding. ``level`` is "error" (blocks the start), "warning" or "info".

    ``command`` is the shell command that fixes it (the CLI prints it); ``action`` names a fix
    the page offers as a button (e.g. :data:`CARVE_DEV`)."""

    level: str
    title: str
    msg: str
    command: str = ""
    action: str = ""


def carve_dev_fix(db: Database, project_id: int) -> int:
    """The "No dev split" fix: a seeded 10% of the labelled training sentences become dev (test
    is not touched); returns how many moved. The same as ``nerlab split PROJECT --dev 0.1``."""
    return projects.carve_dev(db, project_id, DEV_SHARE, DEV_SEED)


def check_run(
    db: Database,
    project_id: int,
    cfg: RunConfig,
    cuda: bool,
    bf16_supported: bool = True,
    template: Any = None,
    gpu_count: int | None = None,
    launch: Launch | None = None,
) -> list[Issue]:
    """What stands between this config and a good run, before anything is started.

    Checks: enough labelled training sentences, a labelled dev split (and test split), entity
    types, the template's round-trip (answer → parse → the same spans) on training sentences,
    CUDA for bf16/QLoRA (or a note of what runs instead), the number of GPUs (``gpu_count``
    visible; 1 when unknown), how the processes start (``launch``: the user's accelerate config,
    several machines), the base model's location, free disk.
    """
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
        name = projects.get_project(db, project_id)["name"]
        issues.append(Issue(
            "error", "No dev split",
            "No labelled dev sentences: the run needs them for its dev loss and its scores. "
            f"Set a seeded {DEV_SHARE:.0%} of the labelled training sentences aside as dev; the "
            "test sentences stay as they are.",
            command=f"nerlab split {shlex.quote(name)} --dev {DEV_SHARE}",
            action=CARVE_DEV if len(train) >= 2 else "",
        ))
    if not test:
        issues.append(Issue("warning", "No test split",
                            "No labelled test sentences: the run will be scored on dev only."))
    tpl = template
    if tpl is None:
        try:
            tpl = get_template(db, project_id, cfg.template)
        except NerlabError as exc:
            issues.append(Issue("error", "Template", str(exc)))
    if tpl is not None and train and labels:
        (report,) = check_project(db, project_id, tpl, split="train", limit=ROUND_TRIP_SAMPLE)
        if report.failures:
            first = report.failures[0]
            issues.append(Issue("error", "Template round-trip",
                                f"{len(report.failures)} of {report.checked} training answers do not "
                                f"parse back to their spans (first: sentence "
                                f"{report.numbers[first.sentence_id]}, {first.reason}); change the "
                                "output format on the Template page."))
        else:
            issues.append(Issue("info", "Template round-trip",
                                f"Template {tpl.name!r} v{tpl.version}: answers of {report.checked} "
                                "training sentences parse back to the same spans."))
    if tpl is not None and train and labels and dev:
        issues.append(_estimate(db, project_id, cfg))
    if not cuda:
        if cfg.method == "qlora":
            issues.append(Issue("warning", "QLoRA without CUDA",
                                "No CUDA GPU: the 4-bit base model runs on the CPU through "
                                "bitsandbytes with float32 compute — slow, fine for trying a small "
                                "model; QLoRA is meant for GPUs."))
        if cfg.train.precision == "bf16" and not bf16_supported:
            issues.append(Issue("info", "bf16 without CUDA",
                                "No CUDA GPU and no bf16 arithmetic on this CPU: this run uses "
                                "float32 instead of bf16."))
        if not loader.is_bundled(cfg.base_model):
            issues.append(Issue("warning", "Large model on CPU",
                                f"No CUDA GPU: {cfg.base_model} trains on the CPU; anything above "
                                "~0.5B parameters is impractically slow there."))
        else:
            precision = "bf16" if bf16_supported and cfg.train.precision != "fp32" else "float32"
            issues.append(Issue("info", "Device", f"CPU ({os.cpu_count()} cores), {precision}."))
        if procs.tcmalloc() is None and sys.platform.startswith("linux"):
            issues.append(Issue("info", "Memory allocator",
                                "tcmalloc is not installed: training uses glibc's malloc, which "
                                "keeps ~1 GB more memory and runs ~20% slower on a CPU. Install "
                                "it with `sudo apt-get install libtcmalloc-minimal4` (Debian, "
                                "Ubuntu) or `dnf install gperftools-libs` (Fedora)."))
    elif cfg.train.precision == "bf16" and not bf16_supported:
        issues.append(Issue("warning", "bf16 not supported",
                            "This GPU has no bf16: the run uses float32 (more memory)."))
    issues.extend(_gpu_issues(cfg, cuda, gpu_count if gpu_count is not None else int(cuda)))
    issues.extend(Issue(*found) for found in launch_issues(cfg.train.gpus, launch or Launch()))
    if not loader.is_bundled(cfg.base_model):
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


def _estimate(db: Database, project_id: int, cfg: RunConfig) -> Issue:
    """The run's wall time on this machine from a timed step, or how to measure it."""
    command = f"nerlab train {shlex.quote(projects.get_project(db, project_id)['name'])} --estimate"
    m, busy, why = estimate.status(db, project_id, cfg)
    if m is not None:
        wall = estimate.wall_time(db, project_id, cfg, m)
        return Issue("info", "Estimated time", f"{wall.describe()} (timed {m.measured_at}: "
                     f"{m.tokens_per_s:.0f} tokens/s, {m.step_s:.1f} s a step).", command=command)
    if busy:
        return Issue("info", "Estimated time", "Timing one step of this run on this machine…",
                     action=MEASURING)
    return Issue("info", "Estimated time", (f"Timing a step failed: {why}. " if why else "")
                 + "Not measured for these settings on this machine yet: timing one step takes "
                 "about a minute.", command=command, action=MEASURE)


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
