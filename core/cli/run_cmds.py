"""``nerlab train|join|runs|stop|merge|export-model``: fine-tuning runs without the browser.

``nerlab train NAME`` prints the new run's id and returns at once (the run goes on in the
background); with ``--wait`` it prints progress and its exit code reflects the outcome
(0 finished, 1 failed, 2 stopped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from core import config, procs
from core.cli.follow import EXIT_CODES, run_summary, wait_and_report
from core.data import phases, projects
from core.data.db import get_db
from core.data.runs import list_runs, log_path, plain_text
from core.errors import NerlabError
from core.jobs import launcher
from core.models import loader, quiet
from core.models.adapters import DEFAULT_SHARD_SIZE, merge_run
from core.models.export import export_run
from core.models.gguf_export import OUTTYPES
from core.models.merging import DTYPES
from core.training import estimate
from core.training.checks import check_run
from core.training.launch import DEFAULT_CONFIG, Launch
from core.training.runconfig import (
    DEFAULT_PRESET,
    FIELDS,
    NO_PRESET,
    PRESETS,
    RunConfig,
    default_preset_for,
    get_preset,
)

__all__ = ["EXIT_CODES", "cmd_train", "register", "wait_and_report"]


#: Settings that are not command-line flags (``--preset`` is handled on its own).
_NOT_FLAGS = ("preset",)


def _flag_type(f: dataclasses.Field):
    kind = str(f.type)
    if "bool" in kind:
        return bool
    if "int" in kind:
        return int
    if "float" in kind:
        return float
    if "tuple" in kind:
        return tuple
    return str


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, (_section, f) in FIELDS.items():
        if name in _NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")
        kind = _flag_type(f)
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif kind is tuple:
            parser.add_argument(flag, dest=name, metavar="A,B,...", default=None,
                                help=help_text + " Comma-separated.")
        elif "options" in f.metadata:
            parser.add_argument(flag, dest=name, choices=f.metadata["options"], default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, cuda: bool = False) -> RunConfig:
    """The preset with every flag given on the command line applied. Without ``--preset`` the
    one the Train page starts from on this machine (:func:`default_preset_for`);
    ``--preset none`` starts from the plain defaults."""
    overrides = {}
    for name in FIELDS:
        if name in _NOT_FLAGS:
            continue
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "targets":
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        overrides[name] = value
    if overrides.get("epochs") is not None and getattr(args, "max_steps", None) is None:
        overrides["max_steps"] = 0  # --epochs wins over a preset's max steps
    name = args.preset or default_preset_for(overrides.get("base_model") or config.BUNDLED_MODEL,
                                             cuda)
    if name.strip().lower() == NO_PRESET:
        return RunConfig().with_overrides(**overrides)
    return get_preset(name).config(**overrides)


def cmd_train(args: argparse.Namespace) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    info = loader.device_info()
    cfg = config_from_args(args, cuda=info.device == "cuda")
    setup = launch_from_args(args)
    print(f"Preset: {cfg.preset or NO_PRESET}; {cfg.summary()}", file=sys.stderr)
    issues = check_run(db, project["id"], cfg, cuda=info.device == "cuda", bf16_supported=info.bf16,
                       gpu_count=info.count, launch=setup)
    errors = [i for i in issues if i.level == "error"]
    if args.estimate:
        if errors:
            raise NerlabError(f"{len(errors)} pre-flight check(s) failed: "
                              + "; ".join(f"{i.title}: {i.msg}" for i in errors))
        quiet.quiet_libraries()  # its own lines, not the libraries' bars and kernel notes
        m = estimate.stored(db, project["id"], cfg) or estimate.measure_apart(
            db, project["id"], cfg, log=lambda msg: print(msg, file=sys.stderr))
        print(f"Estimated wall time: {estimate.wall_time(db, project['id'], cfg, m).describe()}.")
        return 0
    for issue in issues:
        if issue.level != "info" or args.wait:
            fix = f" Fix it with: {issue.command}" if issue.command else ""
            print(f"{issue.level}: {issue.title}: {issue.msg}{fix}", file=sys.stderr)
    if errors and not args.force:
        raise NerlabError(f"{len(errors)} pre-flight check(s) failed (see above); fix them or "
                          "pass --force.")
    run_id, started = launcher.submit_training(db, project["id"], cfg, name=args.run_name or "",
                                               setup=setup)
    if getattr(args, "json", False):
        print(json.dumps({"run_id": run_id, "queued": not started,
                          "issues": [{"level": i.level, "title": i.title, "message": i.msg}
                                     for i in issues]}))
    else:
        print(run_id)
    if not started:
        print(f"Run {run_id} is queued behind the active run.", file=sys.stderr)
    if not args.wait:
        return 0
    return wait_and_report(db, run_id)


def launch_from_args(args: argparse.Namespace) -> Launch:
    """How ``nerlab train``'s run starts its processes (``--accelerate-config``, machines)."""
    return Launch(config_file=args.accelerate_config or "", num_machines=args.num_machines,
                  main_process_ip=args.main_process_ip or "",
                  main_process_port=args.main_process_port or 0)


def cmd_join(args: argparse.Namespace) -> int:
    """Another machine of a run over several machines: start its processes (in the foreground)."""
    import subprocess

    db = get_db()
    command = launcher.join_command(db, args.run_id, args.machine_rank)
    print(" ".join(command), file=sys.stderr)
    if args.print:
        return 0
    # As this machine's own workers compute (tcmalloc, sleeping OpenMP threads, bounded kernel
    # caches).
    return subprocess.call(command, env=procs.compute_env(dict(os.environ)))


def cmd_runs(args: argparse.Namespace) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    launcher.refresh(db)
    rows = list_runs(db, project["id"])
    now_doing = phases.current(db, [r["id"] for r in rows])
    if args.json:
        for r in rows:
            r["phase"] = now_doing.get(r["id"])
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"No runs in {project['name']!r}. Start one with: nerlab train {project['name']!r}")
        return 0
    for r in rows:
        status = r["status"]
        if status == "running" and r["stop_requested"]:
            status = "stopping"
        detail = run_summary(r)
        if r["id"] in now_doing:
            detail = phases.describe(now_doing[r["id"]], launcher.format_duration)
        print(f"{r['id']:>4}  {r['kind']:<9} {status:<9} {plain_text(r['name'], 30):<20} "
              f"{r['created_at']}  {detail}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    db = get_db()
    print(launcher.request_stop(db, args.run))
    if args.wait:
        started = time.monotonic()
        run = launcher.wait(db, args.run, timeout_s=600, poll_s=0.5)
        took = launcher.format_duration(time.monotonic() - started)
        if run["status"] in config.FINAL_STATUSES:
            kept = f"; adapter: {run['artifact_path']}" if run["artifact_path"] else ""
            print(f"Run {args.run} {run['status']} ({took}){kept}.")
        else:
            print(f"Run {args.run} is still {run['status']} after {took}; see its log: "
                  f"{log_path(args.run)}")
            return 1
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    db = get_db()
    merge_run(db, args.run, out=args.out, dtype=args.dtype, max_shard_size=args.max_shard_size)
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    db = get_db()
    result = export_run(db, args.run, fmt=args.format, out=args.out, outtype=args.outtype)
    print(f"Ollama: ollama create {result['name']} -f {result['modelfile']}")
    print(f"llama.cpp: llama-cli -m {result['gguf']}")
    return 0


def register(subparsers) -> None:
    """Add ``train``, ``runs``, ``stop``, ``merge`` and ``export-model`` to the ``nerlab`` parser."""
    p = subparsers.add_parser(
        "train", help="start a fine-tuning run in the background (prints its id)",
        description=("Start a fine-tuning run. Presets: " + "; ".join(
            f"{name!r}: {preset.description}" for name, preset in PRESETS.items())),
    )
    p.add_argument("name", help="project")
    p.add_argument("--preset", help="start from a preset: " + ", ".join(repr(n) for n in PRESETS)
                   + f" (default: {DEFAULT_PRESET!r} on a CPU, 'LoRA+ for NER' on a GPU, as on the "
                   f"Train page; {NO_PRESET!r}: the plain defaults)")
    p.add_argument("--run-name", help="a name for the run (default train-ID)")
    p.add_argument("--estimate", action="store_true",
                   help="do not start: time one step of this run on this machine (about a minute, "
                   "once per data and settings) and print how long the whole run would take")
    p.add_argument("--wait", action="store_true",
                   help="print every phase's progress until the run ends; exit 0 finished, "
                   "1 failed, 2 stopped")
    p.add_argument("--force", action="store_true", help="start despite failed pre-flight checks")
    p.add_argument("--json", action="store_true",
                   help="print the new run as JSON (run_id, queued, pre-flight issues) instead of its id")
    p.add_argument("--accelerate-config", metavar="FILE",
                   help="start the processes with this accelerate config (its machines and "
                   f"processes; {DEFAULT_CONFIG!r}: the one `accelerate launch` finds itself, "
                   "ACCELERATE_CONFIG_FILE or the default) instead of NERLab's own")
    p.add_argument("--num-machines", type=int, default=1,
                   help="machines the run spans (--gpus processes on each); this one is machine 0, "
                   "the others join with `nerlab join RUN_ID --machine-rank K`")
    p.add_argument("--main-process-ip", help="this machine's address, as the others reach it")
    p.add_argument("--main-process-port", type=int, help="a port the other machines can reach")
    _add_setting_flags(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "join", help="start this machine's processes of a run over several machines",
        description="On machine K of a run started with --num-machines N (K = 1..N-1), with the "
        "same NERLAB_HOME (a shared folder): run its processes until the run ends.")
    p.add_argument("run_id", type=int)
    p.add_argument("--machine-rank", type=int, required=True, help="this machine's number, 1..N-1")
    p.add_argument("--print", action="store_true", help="only print the command")
    p.set_defaults(func=cmd_join)

    p = subparsers.add_parser("runs", help="list a project's runs with status and progress")
    p.add_argument("name", help="project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("stop", help="stop a run (it saves its adapter and ends 'stopped')")
    p.add_argument("run", type=int, help="run id")
    p.add_argument("--wait", action="store_true", help="wait until it has stopped")
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("merge", help="merge a run's adapter into its base model and save it")
    p.add_argument("run", type=int, help="run id")
    p.add_argument("--out", help="output folder (default: runs/ID/merged in the data directory)")
    p.add_argument("--dtype", choices=list(DTYPES),
                   help="dtype of the merged weights (merged in fp32, cast at the end); default: "
                   "the training dtype of a GPU run in bf16, else the base model's own half "
                   "precision, else fp32")
    p.add_argument("--max-shard-size", default=DEFAULT_SHARD_SIZE,
                   help="largest safetensors file; bigger models are split into shards with an "
                   "index (default %(default)s)")
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser(
        "export-model", help="export a run for llama.cpp / Ollama (GGUF file and Modelfile)",
        description="Write the run's merged model as a GGUF file (Llama-family models) and an "
        "Ollama Modelfile holding the run's prompt. Merges first (fp32) when there is no merged "
        "model yet.")
    p.add_argument("run", type=int, help="run id")
    p.add_argument("--format", choices=["gguf"], default="gguf")
    p.add_argument("--out", help="output folder (default: runs/ID/export in the data directory)")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16",
                   help="tensor type in the GGUF file (default %(default)s; q8_0 is about half "
                   "the size)")
    p.set_defaults(func=cmd_export_model)
