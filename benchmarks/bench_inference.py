"""Batched vs one-by-one generation on the same prompts: sentences per second.

    .venv/bin/python benchmarks/bench_inference.py [--n 16] [--batch-size 16] [--threads 2]

Uses the bundled SmolLM2-135M-Instruct on CPU (float32), the demo project's test sentences and
the default instruction template (zero-shot, the slowest case: the base model tends to use its
whole token budget). Both paths get the same per-sentence budget (:func:`core.prediction.decoding.token_budget`)
and stop at end-of-sequence. Prints the figures and how many answers are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from core.data import projects
from core.data.demo import ensure_demo_project
from core.models import loader
from core.prediction import decoding
from core.prompts import render
from core.prompts.store import get_template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="test sentences (default 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the cores to use)")
    parser.add_argument("--one-by-one-n", type=int, default=0,
                        help="time one-by-one on only the first N prompts (0 = all n)")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="cap every budget at N tokens on both sides (0 = from the sentence)")
    parser.add_argument("--compare-plain", action="store_true",
                        help="also time batched generation without the shared-prefix cache")
    args = parser.parse_args()

    os.environ.setdefault("NERLAB_HOME", tempfile.mkdtemp(prefix="nerlab-bench-"))
    cached = ROOT / ".pytest_cache" / "nerlab-models"
    if cached.is_dir():
        os.environ.setdefault("NERLAB_MODELS_DIR", str(cached))

    import torch

    from core import config
    from core.data.db import get_db

    torch.set_num_threads(args.threads)
    db = get_db()
    project = ensure_demo_project(db)
    tpl = get_template(db, project["id"])
    labels = projects.list_labels(db, project["id"])
    started = time.perf_counter()
    model, tokenizer = loader.load_model(config.BUNDLED_MODEL, device="cpu")
    load_s = time.perf_counter() - started
    examples = projects.examples(db, project["id"], split="test")[: args.n]
    prompts = [render.build_chat(tokenizer, tpl, e.text, labels)[0] for e in examples]
    budgets = [decoding.token_budget(tokenizer, e.text, tpl.output_format) for e in examples]
    if args.max_new_tokens:
        budgets = [min(b, args.max_new_tokens) for b in budgets]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    decoding.generate(model, tokenizer, prompts[:2], 4, batch_size=2)  # warm-up

    # One-by-one on the first half, batched on everything, one-by-one on the second half: load
    # from other processes that drifts during the run weighs on both sides alike.
    k = args.one_by_one_n or len(prompts)
    half = k // 2
    t0 = time.perf_counter()
    single = decoding.generate_one_by_one(model, tokenizer, prompts[:half], budgets[:half])
    single_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    batched = decoding.generate(model, tokenizer, prompts, budgets, batch_size=args.batch_size)
    batched_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    single += decoding.generate_one_by_one(model, tokenizer, prompts[half:k], budgets[half:k])
    single_s += time.perf_counter() - t0

    plain_s = None
    if args.compare_plain:
        t0 = time.perf_counter()
        decoding.generate(model, tokenizer, prompts, budgets, batch_size=args.batch_size,
                           prefix_cache=False)
        plain_s = time.perf_counter() - t0

    def new_tokens(texts: list[str]) -> int:
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    single_rate = k / single_s
    batched_rate = len(prompts) / batched_s
    same = sum(a == b for a, b in zip(single, batched[:k], strict=True))
    result = {
        "device": loader.device_info().describe(),
        "threads": args.threads,
        "model_load_s": round(load_s, 1),
        "sentences": len(prompts),
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "budget_tokens_mean": round(sum(budgets) / len(budgets), 1),
        "one_by_one": {"sentences": k, "seconds": round(single_s, 1),
                       "sentences_per_s": round(single_rate, 3),
                       "new_tokens_per_s": round(new_tokens(single) / single_s, 1)},
        "batched": {"sentences": len(prompts), "batch_size": args.batch_size,
                    "seconds": round(batched_s, 1), "sentences_per_s": round(batched_rate, 3),
                    "new_tokens_per_s": round(new_tokens(batched) / batched_s, 1)},
        "speedup": round(batched_rate / single_rate, 2),
        "batched_without_prefix_cache_sentences_per_s": (
            round(len(prompts) / plain_s, 3) if plain_s else None),
        "identical_answers": f"{same}/{k}",
    }
    print(f"one-by-one: {single_rate:.3f} sentences/s ({k} sentences in {single_s:.1f} s)")
    print(f"batched (batch {args.batch_size}): {batched_rate:.3f} sentences/s "
          f"({len(prompts)} sentences in {batched_s:.1f} s)")
    if plain_s:
        print(f"batched without the shared-prefix cache: {len(prompts) / plain_s:.3f} sentences/s")
    print(f"speed-up: {result['speedup']}×; identical answers {same}/{k}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
