"""Constrained batched prediction (with and without prompt-lookup drafts) vs one-by-one
``generate`` on the same prompts: sentences per second, side by side.

    .venv/bin/python benchmarks/bench_inference.py [--n 48] [--batch-size 32] [--threads 2]
        [--repeats 2] [--draft 6] [--model-folder runs/1/adapter] [--free]

Uses the demo project's test sentences on CPU (float32) with either the bundled
SmolLM2-135M-Instruct prompted zero-shot with the default template (the default) or a saved model
folder (``--model-folder``: a fine-tuned run's ``adapter`` folder, which answers in its format,
so drafts pay most). Every path gets the same per-sentence budget
(:func:`core.prediction.decoding.token_budget`) and stops at end-of-sequence:

- ``one_by_one``: plain ``model.generate``, one prompt at a time, free (the baseline);
- ``constrained``: batched greedy with the shared-prefix cache and the answer constraint (a
  continuous batch: the default 48 sentences are one and a half batches' worth, and a waiting sentence
  takes a finished one's place);
- ``constrained_draft``: the same with prompt-lookup drafts (:mod:`core.prediction.lookup`);
- with ``--free``: ``free`` and ``free_draft``, the batched paths without the constraint.

The paths run in turn, the order reversed every repeat, so load from other processes that drifts
during the run weighs on all alike. Prints sentences/s, speed-ups over one-by-one, tokens per
forward pass, and how many answers are identical: drafted vs undrafted (token for token: the
same greedy answer) and each batched path vs the one-by-one greedy answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import procs  # noqa: E402
from core.data import projects  # noqa: E402
from core.data.demo import ensure_demo_project  # noqa: E402
from core.models import loader  # noqa: E402
from core.prediction import decoding, lookup  # noqa: E402
from core.prediction.constrain import constraints_for  # noqa: E402
from core.prompts import render  # noqa: E402
from core.prompts.store import get_template  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="test sentences (default 48)")
    parser.add_argument("--batch-size", type=int, default=decoding.DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the cores to use)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every path (default 2)")
    parser.add_argument("--draft", type=int, default=lookup.DRAFT_TOKENS,
                        help=f"draft tokens per row and step (default {lookup.DRAFT_TOKENS})")
    parser.add_argument("--model-folder", default="",
                        help="a saved model folder (e.g. a run's adapter); default: the bundled "
                             "model zero-shot")
    parser.add_argument("--free", action="store_true", help="also time the batched paths unconstrained")
    parser.add_argument("--one-by-one-n", type=int, default=0,
                        help="time one-by-one on only the first N prompts (0 = all n)")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="cap every budget at N tokens on every path (0 = from the sentence)")
    args = parser.parse_args()

    # As NERLab's workers predict (core.procs.compute_env: tcmalloc when installed, sleeping
    # OpenMP threads); a preload only takes effect at a process's start, hence the re-exec.
    env = procs.compute_env(dict(os.environ))
    if env.get("LD_PRELOAD", "") != os.environ.get("LD_PRELOAD", ""):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.update(env)
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
    examples = projects.examples(db, project["id"], split="test")[: args.n]
    started = time.perf_counter()
    if args.model_folder:
        from core.prediction.predictors import load_predictor

        predictor = load_predictor(args.model_folder, device="cpu")
        model, tokenizer, plan = predictor.model, predictor.tokenizer, predictor.plan
        labels, fmt = plan.label_names, plan.template.output_format
        prompts = [plan.prompt(tokenizer, e.id, e.text) for e in examples]
        setting = f"model folder {args.model_folder}"
    else:
        tpl = get_template(db, project["id"])
        labels = [x["name"] for x in projects.list_labels(db, project["id"])]
        fmt = tpl.output_format
        model, tokenizer = loader.load_model(config.BUNDLED_MODEL, device="cpu")
        prompts = [render.build_chat(tokenizer, tpl, e.text, labels)[0] for e in examples]
        setting = "bundled model, zero-shot"
    load_s = time.perf_counter() - started
    budgets = [decoding.token_budget(tokenizer, e.text, fmt) for e in examples]
    if args.max_new_tokens:
        budgets = [min(b, args.max_new_tokens) for b in budgets]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    k = args.one_by_one_n or len(prompts)

    def batched(constrained: bool, draft: int) -> list[decoding.Generation]:
        cons = constraints_for(tokenizer, examples, labels, fmt) if constrained else None
        return decoding.generate_details(model, tokenizer, prompts, budgets, args.batch_size,
                                         constraints=cons, draft=draft)

    paths = {
        "one_by_one": lambda: decoding.generate_one_by_one(model, tokenizer, prompts[:k], budgets[:k]),
        "constrained": lambda: batched(True, 0),
        "constrained_draft": lambda: batched(True, args.draft),
    }
    if args.free:
        paths["free"] = lambda: batched(False, 0)
        paths["free_draft"] = lambda: batched(False, args.draft)
    sentences = {name: (k if name == "one_by_one" else len(prompts)) for name in paths}

    decoding.generate(model, tokenizer, prompts[:2], 4, batch_size=2)  # warm-up

    seconds = dict.fromkeys(paths, 0.0)
    answers: dict[str, list] = {}
    stable = dict.fromkeys(paths, True)  # every repeat gave the same answers
    names = list(paths)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            got = paths[name]()
            took = time.perf_counter() - t0
            seconds[name] += took
            print(f"repeat {r + 1}: {name}: {sentences[name]} sentences in {took:.1f} s", flush=True)
            if name in answers:
                stable[name] &= _texts(got) == _texts(answers[name])
            answers[name] = got

    rates = {name: sentences[name] * args.repeats / seconds[name] for name in paths}
    single = _texts(answers["one_by_one"])

    def same(a: list, b: list) -> str:
        return f"{sum(x == y for x, y in zip(a, b, strict=False))}/{min(len(a), len(b))}"

    result: dict = {
        "setting": setting,
        "device": loader.device_info().describe(),
        "allocator": procs.allocator(),
        "threads": args.threads,
        "model_load_s": round(load_s, 1),
        "sentences": len(prompts),
        "one_by_one_sentences": k,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "draft_tokens": args.draft,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "budget_tokens_mean": round(sum(budgets) / len(budgets), 1),
        "paths": {},
    }
    for name in paths:
        entry = {"seconds": round(seconds[name], 1), "sentences_per_s": round(rates[name], 3),
                 "speedup_vs_one_by_one": round(rates[name] / rates["one_by_one"], 2),
                 "same_answers_every_repeat": stable[name]}
        gens = answers[name]
        if name != "one_by_one":
            tokens = sum(len(g.tokens) for g in gens)
            entry["tokens_per_forward_pass"] = round(tokens / max(1, sum(g.forward_passes for g in gens)), 2)
            entry["identical_to_one_by_one_greedy"] = same(_texts(gens), single)
        result["paths"][name] = entry
    for base in ("constrained", "free"):
        if base in answers:
            a, b = answers[base], answers[base + "_draft"]
            result["paths"][base + "_draft"]["identical_tokens_to_undrafted"] = same(
                [g.tokens for g in b], [g.tokens for g in a])
            result["paths"][base + "_draft"]["speedup_vs_undrafted"] = round(
                rates[base + "_draft"] / rates[base], 2)
    for name, entry in result["paths"].items():
        extra = ""
        if "tokens_per_forward_pass" in entry:
            extra = (f", {entry['tokens_per_forward_pass']} tokens/forward pass, identical to "
                     f"one-by-one greedy {entry['identical_to_one_by_one_greedy']}")
        if "identical_tokens_to_undrafted" in entry:
            extra += f", identical to undrafted {entry['identical_tokens_to_undrafted']}"
        print(f"{name}: {entry['sentences_per_s']:.3f} sentences/s, "
              f"{entry['speedup_vs_one_by_one']}× one-by-one{extra}")
    print(json.dumps(result, indent=2))
    return 0


def _texts(gens: list) -> list[str]:
    return [g if isinstance(g, str) else g.text for g in gens]


if __name__ == "__main__":
    sys.exit(main())
