"""GPU check: the paths that only a CUDA machine exercises, in a few minutes, as one table.

Run on a machine with an NVIDIA GPU (no network needed; the bundled model is used):

    .venv/bin/python scripts/gpu_check.py                 # the checks below, then the table
    .venv/bin/python scripts/gpu_check.py --steps 60      # longer runs
    .venv/bin/python scripts/gpu_check.py --bench         # also NERLab's trainer vs HF Trainer
    .venv/bin/python scripts/gpu_check.py --out results/  # also write gpu_check.json there

In a temporary data directory with the demo project (BC5CDR), every run through the real worker:

1. bf16 LoRA+ on one GPU: tokens/s, peak memory, dev/test micro-F1.
2. QLoRA (4-bit NF4, double quantisation, bf16 compute) on one GPU: the same figures.
3. With two or more GPUs: the same LoRA+ run on one GPU and on all of them under
   ``accelerate launch`` (DDP through ``accelerate.Accelerator``): tokens/s, speed-up, and the
   largest difference between their step losses (bf16 rounding).
4. With two or more GPUs: QLoRA under an accelerate config with ``distributed_type: FSDP``
   (version 2, weights sharded per decoder layer): peak memory per GPU (rank 0's) next to
   QLoRA on one GPU.
5. With vLLM installed: the LoRA+ run's adapter predicting test sentences with vLLM
   (LoRARequest + structured outputs) and with the built-in batched generation: sentences/s of
   both and how often their spans agree.

Exit code 0 when every check ran, 1 otherwise, 2 without a CUDA GPU. ``$OUT`` (if set) receives
gpu_check.json.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's core/, not an installed copy

from core.data.runs import read_log, run_dir, run_metrics  # noqa: E402
from core.jobs import launcher  # noqa: E402
from core.training.launch import FSDP2_CONFIG  # noqa: E402


def _device() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__,
            "count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda}


def run_training(db, project_id: int, preset: str, timeout_s: float, setup=None,
                 **overrides) -> dict:
    """Start a run through the real worker, wait for it, and collect its figures."""
    from core.training.runconfig import get_preset

    cfg = get_preset(preset).config(**overrides)
    started = time.perf_counter()
    run_id, _ = launcher.submit_training(db, project_id, cfg, name=f"gpu-check {preset}",
                                         setup=setup)
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



COLUMNS = (("check", "Check"), ("setup", "Setup"), ("status", "Status"),
           ("tokens_per_s", "tokens/s"), ("peak_mb", "peak MB/GPU"), ("result", "Result"))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """The checks as one plain-text table (a row per check; missing figures are "-")."""
    cells = [[title for _key, title in COLUMNS]]
    cells += [[_cell(row.get(key)) for key, _title in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _f1(run: dict) -> str:
    test = (run.get("scores") or {}).get("test") or {}
    return f"test micro-F1 {test['micro_f1']:.3f}" if test.get("micro_f1") is not None else ""


def _row(check: str, setup: str, run: dict, result: str = "") -> dict:
    failed = run["status"] != "finished"
    return {"check": check, "setup": setup, "status": run["status"],
            "tokens_per_s": run.get("tokens_per_s"), "peak_mb": run.get("peak_gpu_mem_mb"),
            "result": (run.get("error") or "")[:80] if failed else result}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CUDA checks and figures for NERLab, as one table.")
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct (bundled)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per training run")
    parser.add_argument("--eval-limit", type=int, default=40,
                        help="sentences per split to score (0 = all)")
    parser.add_argument("--predict-sentences", type=int, default=147,
                        help="test sentences for the vLLM vs built-in prediction check")
    parser.add_argument("--bench", action="store_true",
                        help="also run benchmarks/bench_train.py (NERLab vs HF Trainer)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per training run")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    return parser.parse_args(argv)


def _predict_speed(folder: Path, examples: list, backend: str) -> dict:
    """Sentences/s of a run's model on ``examples`` with one backend (vllm or builtin)."""
    import gc

    import torch

    from core.prediction.predictors import load_predictor
    from core.prediction.vllm_backend import BACKEND_ENV

    os.environ[BACKEND_ENV] = "builtin" if backend == "builtin" else "auto"
    predictor = load_predictor(folder, batch_size=32)
    started = time.perf_counter()
    preds = []
    for b in range(0, len(examples), predictor.batch_size):
        preds += predictor.predict(examples[b:b + predictor.batch_size])
    seconds = time.perf_counter() - started
    out = {"backend": predictor.backend.line, "seconds": seconds,
           "sentences_per_s": len(examples) / seconds if seconds else None,
           "spans": [[(s.start, s.end, s.label) for s in p.spans] for p in preds]}
    del predictor
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = _device()
    print("Device:", json.dumps(device))
    if not device["cuda"]:
        print("No CUDA GPU here: nothing to check (the CPU paths are covered by the tests).")
        return 2
    report: dict = {"device": device}
    rows: list[dict] = []
    home = tempfile.mkdtemp(prefix="nerlab-gpu-check-")
    os.environ["NERLAB_HOME"] = home
    ok = True

    if args.bench:
        bench_json = Path(home) / "bench.json"
        cmd = [sys.executable, str(ROOT / "benchmarks/bench_train.py"), "--base-model",
               args.base_model, "--examples", "128", "--batch-size", "8", "--grad-accum", "1",
               "--max-length", "384", "--repeats", "2", "--json", str(bench_json)]
        print("\n$ " + " ".join(cmd), flush=True)
        done = subprocess.run(cmd, env=os.environ.copy())
        ok &= done.returncode == 0
        if bench_json.is_file():
            report["benchmark"] = json.loads(bench_json.read_text())
            rows.append({"check": "trainer vs HF Trainer", "setup": "bf16, 1 GPU",
                         "status": "finished" if done.returncode == 0 else "failed",
                         "result": f"{report['benchmark']['ratio_tokens_per_s']:.2f}× tokens/s"})

    from core.data.db import get_db
    from core.data.demo import ensure_demo_project
    from core.training.launch import Launch

    db = get_db()
    project = ensure_demo_project(db)
    common = dict(base_model=args.base_model, max_steps=args.steps, eval_limit=args.eval_limit)
    print("\nbf16 LoRA+ on one GPU…", flush=True)
    lora = report["loraplus_bf16"] = run_training(
        db, project["id"], "LoRA+ for NER", args.timeout, batch_size=8, grad_accum=1, **common)
    rows.append(_row("bf16 LoRA+", "1 GPU, batch 8", lora, _f1(lora)))
    print("\nQLoRA (4-bit NF4, double quant, bf16 compute) on one GPU…", flush=True)
    qlora = report["qlora"] = run_training(db, project["id"], "QLoRA 4-bit", args.timeout,
                                           lr=5e-4, **common)
    rows.append(_row("QLoRA", "1 GPU, NF4", qlora, _f1(qlora)))
    ok &= lora["status"] == qlora["status"] == "finished"

    n = device["count"]
    if n > 1:
        pair = {}
        for gpus in (1, n):
            print(f"\nLoRA+ on {gpus} GPU(s), batch 8 × accumulation 2…", flush=True)
            pair[gpus] = run_training(db, project["id"], "LoRA+ for NER", args.timeout,
                                      base_model=args.base_model, gpus=gpus,
                                      max_steps=args.steps, batch_size=8, grad_accum=2,
                                      eval_after=False)
        report["ddp"] = pair
        one, many = pair[1], pair[n]
        diffs = [abs(a - b) for a, b in zip(one["step_losses"], many["step_losses"], strict=False)]
        speed = (many["tokens_per_s"] / one["tokens_per_s"]
                 if one["tokens_per_s"] and many["tokens_per_s"] else None)
        rows.append(_row("LoRA+ 1 GPU", "batch 8 × 2", one))
        rows.append(_row(f"DDP {n} GPUs", "accelerate, batch 8 × 2", many,
                         (f"{speed:.2f}× of 1 GPU; " if speed else "")
                         + (f"step losses differ ≤ {max(diffs):.4f}" if diffs else "")))
        ok &= one["status"] == many["status"] == "finished"
        config = Path(home) / "fsdp-qlora.yaml"
        config.write_text(FSDP2_CONFIG.format(n=n))
        print(f"\nQLoRA sharded with FSDP over {n} GPUs…", flush=True)
        fsdp = report["fsdp_qlora"] = run_training(
            db, project["id"], "QLoRA 4-bit", args.timeout, gpus=n, lr=5e-4, eval_after=False,
            setup=Launch(config_file=str(config)), **{**common, "eval_limit": 0})
        mem = (f"{fsdp['peak_gpu_mem_mb'] / qlora['peak_gpu_mem_mb']:.2f}× the 1-GPU QLoRA memory"
               if fsdp.get("peak_gpu_mem_mb") and qlora.get("peak_gpu_mem_mb") else "")
        rows.append(_row(f"FSDP + QLoRA {n} GPUs", "FSDP2, NF4", fsdp, mem))
        ok &= fsdp["status"] == "finished"

    from core.prediction.vllm_backend import vllm_installed

    if vllm_installed() and lora["status"] == "finished":
        from core.data import projects

        folder = run_dir(lora["run_id"]) / "adapter"
        test = projects.examples(db, project["id"], split="test")[: args.predict_sentences]
        speeds = {}
        for backend in ("builtin", "vllm"):
            print(f"\nPredicting {len(test)} test sentences ({backend})…", flush=True)
            try:
                speeds[backend] = _predict_speed(folder, test, backend)
                print(speeds[backend]["backend"], flush=True)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                speeds[backend] = {"error": f"{type(exc).__name__}: {exc}"[:80]}
                ok = False
        report["predict"] = {k: {kk: vv for kk, vv in v.items() if kk != "spans"}
                             for k, v in speeds.items()}
        same = None
        if "spans" in speeds["builtin"] and "spans" in speeds["vllm"]:
            pairs = list(zip(speeds["builtin"]["spans"], speeds["vllm"]["spans"], strict=True))
            same = sum(a == b for a, b in pairs) / max(len(pairs), 1)
        for backend in ("builtin", "vllm"):
            got = speeds[backend]
            rate = got.get("sentences_per_s")
            rows.append({"check": f"predict ({backend})", "setup": f"{len(test)} sentences",
                         "status": "failed" if "error" in got else "finished",
                         "result": got.get("error") or (f"{rate:.1f} sentences/s"
                                   + (f"; same spans {same:.0%}" if backend == "vllm"
                                      and same is not None else ""))})
    else:
        rows.append({"check": "predict (vllm)", "status": "skipped",
                     "result": "vLLM is not installed" if not vllm_installed()
                     else "the LoRA+ run failed"})

    print("\n" + format_table(rows), flush=True)
    report["table"] = rows
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"\nWrote {Path(args.out) / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
