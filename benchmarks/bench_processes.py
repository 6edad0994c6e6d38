"""Data-parallel training: the same run in one process and in N (``gpus`` = N, accelerate launch).

Both go through the real worker on the demo project (BC5CDR), with the same seed, data, steps
and adapter; dropout is 0 so that the two runs compute the same thing. Printed per run: the
training tokens/s the worker measured (all processes together), seconds of training, and the
step losses; then the ratio N / 1 and the largest difference between their step losses (which
should be float rounding, since N processes split every step rather than change it). Repeats
alternate the two so that a noisy machine hurts both alike.

    .venv/bin/python benchmarks/bench_processes.py                 # CPU: 2 processes share the cores
    .venv/bin/python benchmarks/bench_processes.py --processes 4 --batch-size 8 --steps 40   # 4 GPUs
    .venv/bin/python benchmarks/bench_processes.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from core.data.runs import read_log, run_dir, run_metrics
from core.jobs import launcher
from core.models import loader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(db, project_id: int, args: argparse.Namespace, gpus: int) -> dict:
    from core.training.runconfig import get_preset

    cfg = get_preset("Small model on CPU").config(
        base_model=args.base_model, gpus=gpus, max_steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, rank=args.rank, dropout=0.0, max_length=args.max_length,
        dev_loss_sentences=0, eval_after=False, precision="auto",
    )
    run_id, _ = launcher.submit_training(db, project_id, cfg, name=f"bench {gpus} process(es)")
    run = launcher.wait(db, run_id, timeout_s=args.timeout, poll_s=1)
    if run["status"] != "finished":
        raise SystemExit(f"run {run_id} ({gpus} processes) ended {run['status']}: "
                         f"{run['error_message']}\n{read_log(run_id, 30)}")
    result = json.loads((run_dir(run_id) / "result.json").read_text())
    losses = [m["loss"] for m in run_metrics(db, run_id) if m["loss"] is not None]
    return {"run_id": run_id, "processes": gpus, "tokens_per_s": result["tokens_per_s"],
            "train_s": result["seconds"], "losses": losses}


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int,
                        default=max(2, torch.cuda.device_count()) if cuda else 2)
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct (bundled)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    os.environ.setdefault("NERLAB_HOME", tempfile.mkdtemp(prefix="nerlab-bench-processes-"))
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project

    db = get_db()
    project = ensure_demo_project(db)
    print(f"Device: {loader.device_info().describe()}; {args.steps} steps of "
          f"{args.batch_size} × {args.grad_accum} sentences, LoRA+ r{args.rank}, "
          f"1 vs {args.processes} processes, {args.repeats} repeat(s).", flush=True)
    runs: dict[int, list[dict]] = {1: [], args.processes: []}
    for _ in range(args.repeats):
        for gpus in runs:
            run = one_run(db, project["id"], args, gpus)
            runs[gpus].append(run)
            print(f"  {gpus} process(es): {run['tokens_per_s']:.1f} tokens/s, "
                  f"{run['train_s']:.1f} s of training", flush=True)
    mean = {g: statistics.mean(r["tokens_per_s"] for r in rs) for g, rs in runs.items()}
    pairs = zip(runs[1][0]["losses"], runs[args.processes][0]["losses"], strict=True)
    max_diff = max(abs(a - b) for a, b in pairs)
    ratio = mean[args.processes] / mean[1]
    print(f"\n1 process: {mean[1]:.1f} tokens/s; {args.processes} processes: "
          f"{mean[args.processes]:.1f} tokens/s → {ratio:.2f}×; step losses differ by at most "
          f"{max_diff:.2e}.")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": loader.device_info().describe(), "args": vars(args), "runs": runs,
             "mean_tokens_per_s": mean, "ratio": ratio, "max_step_loss_diff": max_diff},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
