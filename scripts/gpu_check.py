"""GPU check: the training paths that only a CUDA machine exercises, with figures for the notes.

Run on a machine with an NVIDIA GPU (no network needed; the bundled model is used):

    .venv/bin/python scripts/gpu_check.py                 # benchmark + QLoRA + LoRA+ bf16 runs
    .venv/bin/python scripts/gpu_check.py --skip-bench    # only the runs
    .venv/bin/python scripts/gpu_check.py --out results/  # also write gpu_check.json there

It does, in a temporary data directory with the demo project (BC5CDR, 300 training sentences):

1. ``benchmarks/bench_train.py`` with GPU-sized batches: NERLab's trainer vs a plain HF Trainer
   + peft script, bf16, tokens/s and peak CUDA memory of both, and their ratio.
2. A QLoRA run through the real worker process: 4-bit NF4 base with double quantisation, bf16
   compute, ``prepare_model_for_kbit_training``, LoRA on attention + MLP; then dev/test scores.
3. A LoRA+ run in bf16 (the small-model preset, 3 epochs) through the worker, with scores: the
   figure to compare with the CPU runs.
4. With two or more GPUs: the same LoRA+ run (60 steps, batch 8 × accumulation 2) on one GPU and
   on all of them under ``accelerate launch``: tokens/s of both, their ratio, and how far apart
   their step losses are (they should agree to bf16 rounding).

Exit code 0 when every run finished, 1 otherwise. ``$OUT`` (if set) receives gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.data.runs import read_log, run_dir, run_metrics
from core.jobs import launcher

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__,
            "count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda}


def run_training(db, project_id: int, preset: str, timeout_s: float, **overrides) -> dict:
    """Start a run through the real worker, wait for it, and collect its figures."""
    from core.training.runconfig import get_preset

    cfg = get_preset(preset).config(**overrides)
    started = time.perf_counter()
    run_id, _ = launcher.submit_training(db, project_id, cfg, name=f"gpu-check {preset}")
    run = launcher.wait(db, run_id, timeout_s=timeout_s, poll_s=2)
    if run["status"] not in ("finished", "failed", "stopped"):
        launcher.request_stop(db, run_id)
        run = launcher.wait(db, run_id, timeout_s=120)
    metrics = run_metrics(db, run_id)
    steps = [m for m in metrics if m["loss"] is not None]
    evals = [m for m in metrics if m["eval_loss"] is not None]
    scores = {}
    for row in db.query("SELECT split, metrics FROM evaluations WHERE run_id = ? AND mode = 'default'",
                        [run_id]):
        m = json.loads(row["metrics"])
        scores[row["split"]] = {
            "micro_f1": (m.get("micro") or {}).get("f1"), "macro_f1": (m.get("macro") or {}).get("f1"),
            "n_sentences": m.get("n_sentences"), "parse": m.get("parse"),
        }
    result = json.loads((run_dir(run_id) / "result.json").read_text()) if (
        run_dir(run_id) / "result.json").is_file() else {}
    out = {
        "run_id": run_id, "preset": preset, "config": cfg.summary(), "status": run["status"],
        "error": run["error_message"], "wall_s": round(time.perf_counter() - started, 1),
        "train_s": result.get("seconds"), "steps": result.get("steps"),
        "tokens_per_s": result.get("tokens_per_s"),
        "median_step_tokens_per_s": sorted(m["tokens_per_s"] for m in steps)[len(steps) // 2]
        if steps else None,
        "peak_gpu_mem_mb": max((m["gpu_mem_mb"] or 0 for m in steps), default=None),
        "final_train_loss": steps[-1]["loss"] if steps else None,
        "step_losses": [round(m["loss"], 5) for m in steps],
        "dev_losses": [round(m["eval_loss"], 4) for m in evals],
        "scores": scores,
    }
    if run["status"] != "finished":
        out["log_tail"] = read_log(run_id, 40)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="CUDA checks and figures for NERLab training.")
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct (bundled)")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--qlora-steps", type=int, default=60)
    parser.add_argument("--eval-limit", type=int, default=0, help="sentences per split to score (0 = all)")
    parser.add_argument("--timeout", type=float, default=540, help="seconds per training run")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    device = _device()
    print("Device:", json.dumps(device))
    if not device["cuda"]:
        print("No CUDA GPU here: nothing to check (the CPU paths are covered by the tests).")
        return 2
    report: dict = {"device": device}
    home = tempfile.mkdtemp(prefix="nerlab-gpu-check-")
    os.environ["NERLAB_HOME"] = home
    ok = True

    if not args.skip_bench:
        bench_json = Path(home) / "bench.json"
        cmd = [sys.executable, str(ROOT / "benchmarks/bench_train.py"), "--base-model",
               args.base_model, "--examples", "128", "--batch-size", "8", "--grad-accum", "1",
               "--max-length", "384", "--repeats", "2", "--json", str(bench_json)]
        print("\n$ " + " ".join(cmd), flush=True)
        done = subprocess.run(cmd, env=os.environ.copy())
        ok &= done.returncode == 0
        if bench_json.is_file():
            report["benchmark"] = json.loads(bench_json.read_text())

    if not args.skip_runs:
        from core.data.db import get_db
        from core.data.demo import ensure_demo_project

        db = get_db()
        project = ensure_demo_project(db)
        print("\nQLoRA run (4-bit NF4, double quant, bf16 compute) through the worker…", flush=True)
        report["qlora"] = run_training(
            db, project["id"], "QLoRA 4-bit", args.timeout, base_model=args.base_model,
            max_steps=args.qlora_steps, eval_limit=args.eval_limit, lr=5e-4)
        print(json.dumps(report["qlora"], indent=2), flush=True)
        print("\nLoRA+ run in bf16 (small-model preset, 3 epochs) through the worker…", flush=True)
        report["loraplus_bf16"] = run_training(
            db, project["id"], "Small model on CPU", args.timeout, base_model=args.base_model,
            precision="auto", batch_size=8, grad_accum=1, eval_limit=args.eval_limit)
        print(json.dumps(report["loraplus_bf16"], indent=2), flush=True)
        ok &= all(report[k]["status"] == "finished" for k in ("qlora", "loraplus_bf16"))
        if device["count"] > 1:
            report["gpus"] = {}
            for gpus in (1, device["count"]):
                print(f"\nLoRA+ run on {gpus} GPU(s) (60 steps, batch 8 × accumulation 2)…", flush=True)
                report["gpus"][gpus] = run_training(
                    db, project["id"], "LoRA+ for NER", args.timeout, base_model=args.base_model,
                    gpus=gpus, max_steps=60, batch_size=8, grad_accum=2, eval_after=False)
                print(json.dumps(report["gpus"][gpus], indent=2), flush=True)
            one, many = report["gpus"][1], report["gpus"][device["count"]]
            ok &= one["status"] == many["status"] == "finished"
            if one["tokens_per_s"] and many["tokens_per_s"]:
                report["gpus"]["speed-up"] = round(many["tokens_per_s"] / one["tokens_per_s"], 2)
                pairs = zip(one["step_losses"], many["step_losses"], strict=False)
                report["gpus"]["max_step_loss_diff"] = max((abs(a - b) for a, b in pairs),
                                                           default=None)
                print(f"{device['count']} GPUs vs 1: {report['gpus']['speed-up']}× tokens/s; step "
                      f"losses differ by at most {report['gpus']['max_step_loss_diff']}.", flush=True)

    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"\nWrote {Path(args.out) / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
