"""Training throughput: NERLab's trainer vs a plain Hugging Face Trainer + peft script.

Both train the same model (the bundled SmolLM2-135M by default) with the same LoRA+ adapter
(peft's ``create_loraplus_optimizer``), the same hyper-parameters, on the same token ids (the demo
project's BC5CDR training sentences rendered with the default template, loss on the answer
tokens only), for the same number of optimiser steps. Each runs in its own process so that its
peak memory is its own. Printed: tokens per second (real, non-padding tokens of prompt + answer
per second of training), seconds per step, peak memory (resident set size on CPU, peak allocated
on CUDA), the final training loss, and the ratio NERLab / HF.

    .venv/bin/python benchmarks/bench_train.py                      # CPU defaults (a few minutes)
    .venv/bin/python benchmarks/bench_train.py --repeats 2 --hf-bf16  # also HF in bf16, alternating
    .venv/bin/python benchmarks/bench_train.py --profile            # + top operators of NERLab's step
    .venv/bin/python benchmarks/bench_train.py --checkpointing      # + NERLab with gradient checkpointing
    .venv/bin/python benchmarks/bench_train.py --examples 64 --batch-size 8 --grad-accum 1  # GPU
    .venv/bin/python benchmarks/bench_train.py --json results.json

The HF baseline is what a straightforward script does: ``DataCollatorForSeq2Seq`` padding each
batch of a shuffled (mixed-length) data set, labels -100 on the prompt, full-vocabulary logits,
in float32 on a CPU (``--hf-bf16`` adds the same script with ``bf16=True``, i.e. bf16 autocast,
for a same-precision comparison; ``--hf-tcmalloc`` the float32 script under tcmalloc, for a
same-allocator one). NERLab runs as its preset does: packed micro-batches, the
shared prompt prefix, the fused answer-only loss, bf16 where the CPU computes in it
(``NERLAB_CPU_BF16=0 NERLAB_PACK=0`` give the float32, padded loop of before).

Peak memory is the process's peak resident set, measured twice: over the whole process (with
loading the model) and over the training alone (the high-water mark is reset after loading,
``/proc/self/clear_refs``). NERLab's loop runs under the allocator its run workers get
(tcmalloc when installed, see ``core.procs.compute_env``), the HF script under the C library's
malloc as a plain script does (and with ``--hf-tcmalloc`` also under tcmalloc). Each row says
which.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import procs
from core.data import projects
from core.models import loader
from core.prompts.store import get_template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare_data(args: argparse.Namespace) -> list[dict]:
    """The demo's first training sentences as (ids, n_prompt) through NERLab's template."""
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project
    from core.training.batches import encode_examples

    db = get_db()
    project = ensure_demo_project(db)
    tpl = get_template(db, project["id"])
    labels = projects.list_labels(db, project["id"])
    train = projects.examples(db, project["id"], split="train")[: args.examples]
    tokenizer = loader.load_tokenizer(args.base_model, padding_side="right")
    encoded, stats = encode_examples(tokenizer, tpl, train, labels, args.max_length)
    return [{"ids": e.ids, "n_prompt": e.n_prompt} for e in encoded]


def run_config(args: argparse.Namespace, checkpointing: bool = False):
    from core.training.runconfig import get_preset

    return get_preset("Small model on CPU").config(
        base_model=args.base_model, method="loraplus", rank=args.rank, alpha=2.0 * args.rank,
        dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, epochs=float(args.epochs), max_steps=0, warmup_ratio=0.1,
        dev_loss_sentences=0, precision="auto", gradient_checkpointing=checkpointing,
    )


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM, not getrusage's ru_maxrss: a child started by a big parent inherits the parent's
    # resident set at fork in ru_maxrss.
    peak = procs.peak_rss_mb()
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: str) -> None:
    """Start the peak-memory count afresh (after loading): the training's own peak."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    procs.reset_peak_rss()


def top_operators(args: argparse.Namespace, data: list[dict], steps: int = 4, top: int = 5) -> None:
    """A profile of NERLab's first ``steps`` steps: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from core.models.loader import set_threads
    from core.training.batches import Encoded
    from core.training.loop import Hooks, build_model, train_loop

    set_threads()
    cfg = run_config(args).with_overrides(max_steps=steps)
    device = loader.device_info().device
    model, tokenizer, dtype = build_model(cfg, device, log=lambda m: None)
    encoded = [Encoded(d["ids"], d["n_prompt"]) for d in data]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_loop(model, tokenizer, encoded, [], cfg, device, dtype, Hooks(log=lambda m: None))
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    print(f"profile of {steps} steps ({dtype}, packing {'on' if os.environ.get('NERLAB_PACK', '1') != '0' else 'off'}): "
          f"{total / 1e6:.1f} s of self CPU time; top {top} operators:")
    for e in rows[:top]:
        print(f"  {e.key[:52]:52} {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"{e.self_cpu_time_total / 1e6:7.2f} s  {e.count:6d} calls")


def bench_nerlab(args: argparse.Namespace, data: list[dict]) -> dict:
    """NERLab's loop: answer-only logits, length-sorted micro-batches inside mixed batches."""
    from core.models.loader import set_threads
    from core.training.batches import Encoded
    from core.training.loop import Hooks, build_model, train_loop

    set_threads()
    cfg = run_config(args, checkpointing=args.impl == "nerlab-ckpt")
    device = loader.device_info().device
    model, tokenizer, dtype = build_model(cfg, device, log=lambda m: None)
    encoded = [Encoded(d["ids"], d["n_prompt"]) for d in data]
    steps: list[float] = []
    whole_peak = _peak_memory_mb(device)
    _reset_peak(device)
    cpu_started = time.process_time()
    result = train_loop(model, tokenizer, encoded, [], cfg, device, dtype,
                        Hooks(log=lambda m: None, progress=lambda *a, **k: steps.append(k["loss"])))
    return {
        "impl": args.impl, "device": device, "dtype": dtype, "steps": result.steps,
        "seconds": result.seconds, "tokens": result.tokens, "tokens_per_s": result.tokens_per_s,
        "s_per_step": result.seconds / max(result.steps, 1), "final_loss": result.train_loss,
        "train_peak_mb": _peak_memory_mb(device),  # since the reset
        "peak_mem_mb": max(whole_peak, _peak_memory_mb(device)),
        "cpu_s": time.process_time() - cpu_started, "allocator": procs.allocator(),
    }


def bench_hf(args: argparse.Namespace, data: list[dict]) -> dict:
    """A plain Trainer + peft script with the same model, adapter, optimiser and schedule."""
    import math

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from core.models.loader import set_threads

    set_threads()
    cfg = run_config(args)
    info = loader.device_info()
    device = info.device
    bf16 = (device == "cuda" and info.bf16) or args.impl == "hf-bf16"
    path = loader.resolve(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if bf16 else torch.float32).to(device)
    model.config.use_cache = False
    torch.manual_seed(cfg.train.seed)
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets), bias="none", task_type="CAUSAL_LM"))
    rows = [{"input_ids": d["ids"], "attention_mask": [1] * len(d["ids"]),
             "labels": [-100] * d["n_prompt"] + d["ids"][d["n_prompt"]:]} for d in data]
    dataset = Dataset.from_list(rows)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    total = math.ceil(cfg.train.epochs * math.ceil(len(rows) / per_step))
    optimizer = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=cfg.train.lr, loraplus_lr_ratio=cfg.lora.loraplus_ratio,
        loraplus_weight_decay=cfg.train.weight_decay)
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="nerlab-bench-hf-"),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        num_train_epochs=cfg.train.epochs,
        learning_rate=cfg.train.lr,
        lr_scheduler_type="linear",
        warmup_steps=int(round(cfg.train.warmup_ratio * total)),
        max_grad_norm=cfg.train.max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=bf16,
        use_cpu=device == "cpu",
        seed=cfg.train.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        optimizers=(optimizer, None), callbacks=[Losses()],
    )
    tokens = sum(len(d["ids"]) for d in data) * cfg.train.epochs
    whole_peak = _peak_memory_mb(device)
    _reset_peak(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    out = trainer.train()
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    return {
        "impl": args.impl, "device": device, "dtype": "bfloat16" if bf16 else "float32",
        "steps": out.global_step, "seconds": seconds, "tokens": tokens,
        "tokens_per_s": tokens / seconds, "s_per_step": seconds / max(out.global_step, 1),
        "final_loss": losses[-1] if losses else None,
        "train_peak_mb": _peak_memory_mb(device),  # since the reset
        "peak_mem_mb": max(whole_peak, _peak_memory_mb(device)), "cpu_s": cpu_s,
        "allocator": procs.allocator(),
    }


#: What the benchmark can time: NERLab's loop, the same with gradient checkpointing, the HF
#: script (float32 on CPU), the HF script in bf16, the HF script (float32) under tcmalloc.
IMPLS = ("nerlab", "nerlab-ckpt", "hf", "hf-bf16", "hf-tcmalloc")


def child(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.data).read_text())
    result = (bench_nerlab if args.impl.startswith("nerlab") else bench_hf)(args, data)
    Path(args.out).write_text(json.dumps(result))


def _forward(args: argparse.Namespace) -> list[str]:
    return ["--base-model", args.base_model, "--examples", str(args.examples),
            "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
            "--max-length", str(args.max_length), "--epochs", str(args.epochs),
            "--rank", str(args.rank), "--lr", str(args.lr), "--dropout", str(args.dropout)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct (bundled)")
    parser.add_argument("--examples", type=int, default=32, help="training sentences")
    parser.add_argument("--batch-size", type=int, default=4, help="as the CPU preset (4)")
    parser.add_argument("--grad-accum", type=int, default=2, help="as the CPU preset (2)")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--dropout", type=float, default=0.0, help="as the CPU preset (0)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate them this many times")
    parser.add_argument("--hf-bf16", action="store_true",
                        help="also time the HF script with bf16=True (same precision as NERLab's)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="also time NERLab's loop with gradient checkpointing (less memory)")
    parser.add_argument("--hf-tcmalloc", action="store_true",
                        help="also time the HF script under tcmalloc (NERLab's workers' allocator)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="first print the top operators of NERLab's first STEPS steps")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        child(args)
        return 0

    home = os.environ.get("NERLAB_HOME") or tempfile.mkdtemp(prefix="nerlab-bench-")
    os.environ["NERLAB_HOME"] = home
    # As NERLab's workers run (core.procs.compute_env), for both: sleeping OpenMP threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    data = prepare_data(args)
    if args.profile:
        top_operators(args, data, steps=args.profile)
    work = Path(tempfile.mkdtemp(prefix="nerlab-bench-data-"))
    (work / "data.json").write_text(json.dumps(data))
    n_tokens = sum(len(d["ids"]) for d in data)
    n_answer = sum(len(d["ids"]) - d["n_prompt"] for d in data)
    print(f"{len(data)} sentences, {n_tokens} tokens ({n_answer} answer tokens); "
          f"batch {args.batch_size} × accumulation {args.grad_accum}, max length "
          f"{args.max_length}, {args.epochs} epoch(s), LoRA+ r={args.rank}, dropout {args.dropout}")
    impls = [i for i in IMPLS if (i != "hf-bf16" or args.hf_bf16)
             and (i != "hf-tcmalloc" or args.hf_tcmalloc)
             and (i != "nerlab-ckpt" or args.checkpointing)]
    results: list[dict] = []
    for repeat in range(args.repeats):
        for impl in impls if repeat % 2 == 0 else impls[::-1]:
            out = work / f"{impl}-{repeat}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--impl", impl,
                   "--data", str(work / "data.json"), "--out", str(out), *_forward(args)]
            # NERLab's loop runs as its run workers do (core.procs.compute_env: tcmalloc when
            # installed); the HF script as a plain script does (and, with --hf-tcmalloc, also so).
            env = os.environ.copy()
            if impl in ("nerlab", "nerlab-ckpt", "hf-tcmalloc"):
                env = procs.compute_env(env)
            subprocess.run(cmd, check=True, env=env)
            result = json.loads(out.read_text())
            results.append(result)
            result["tokens_per_cpu_s"] = result["tokens"] / max(result["cpu_s"], 1e-9)
            print(f"  {impl:11} {result['tokens_per_s']:8.1f} tokens/s  "
                  f"{result['tokens_per_cpu_s']:8.1f} tokens/CPU-s  {result['s_per_step']:7.2f} s/step  "
                  f"peak {result['peak_mem_mb']:6.0f} MB (training {result['train_peak_mb']:6.0f})  "
                  f"loss {result['final_loss']:.4f}  ({result['device']}, {result['dtype']}, "
                  f"{result['allocator']})",
                  flush=True)

    def mean(impl: str) -> dict:
        """The runs of one implementation averaged (alternating order evens out load drift)."""
        rows = [r for r in results if r["impl"] == impl]
        out = dict(rows[-1])
        for k in ("tokens_per_s", "tokens_per_cpu_s", "s_per_step", "peak_mem_mb",
                  "train_peak_mb", "seconds"):
            out[k] = sum(r[k] for r in rows) / len(rows)
        return out

    means = {impl: mean(impl) for impl in impls}
    ours = means["nerlab"]
    names = {"nerlab": "NERLab", "nerlab-ckpt": "NERLab ckpt", "hf": "HF+peft", "hf-bf16": "HF bf16", "hf-tcmalloc": "HF tcmalloc"}
    print()
    print(f"mean of {args.repeats} run(s) each ({'CPU resident set' if ours['device'] == 'cpu' else 'CUDA peak allocated'}):")
    print(f"{'':10}{'tokens/s':>10}{'tok/CPU-s':>11}{'s/step':>8}{'peak MB':>9}{'train MB':>10}"
          f"{'final loss':>12}{'  vs NERLab: speed, memory'}")
    summary = {}
    for impl, r in means.items():
        speed = ours["tokens_per_s"] / r["tokens_per_s"]
        memory = ours["peak_mem_mb"] / r["peak_mem_mb"]
        summary[impl] = {"ratio_tokens_per_s": speed, "ratio_peak_memory": memory,
                         "ratio_train_peak_memory": ours["train_peak_mb"] / r["train_peak_mb"],
                         "ratio_tokens_per_cpu_s": ours["tokens_per_cpu_s"] / r["tokens_per_cpu_s"]}
        vs = "" if impl == "nerlab" else (f"  {speed:.2f}× tokens/s, {memory:.2f}× peak "
                                          f"({summary[impl]['ratio_train_peak_memory']:.2f}× in training)")
        print(f"{names[impl]:10}{r['tokens_per_s']:10.1f}{r['tokens_per_cpu_s']:11.1f}"
              f"{r['s_per_step']:8.2f}{r['peak_mem_mb']:9.0f}{r['train_peak_mb']:10.0f}"
              f"{r['final_loss']:12.4f}{vs}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) * 1.5:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores - the "
              "machine is shared, wall-clock figures are noisy; tokens per CPU-second less so.")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
