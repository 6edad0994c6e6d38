"""Constrained vs free greedy generation: speed, setup and mask costs, and answer validity.

    .venv/bin/python benchmarks/bench_constrain.py [--n 8] [--repeats 3] [--format json_list]
                                                   [--batch-size 16] [--threads 2]

Uses the bundled SmolLM2-135M-Instruct on CPU (float32), the demo project's first N test
sentences and the default template, zero-shot (the case where the free model writes prose or
other JSON shapes). Both sides use the same batched loop with the shared-prefix cache
(:func:`core.prediction.decoding.generate_details`) and the same per-sentence budgets; the constrained
side builds its constraints inside the timed region. The two sides alternate (free, constrained,
then constrained, free, ...) so that load from other processes weighs on both alike; the figure
to read is the ratio of each adjacent pair, not an absolute time.

Printed: sentences/s and generated tokens/s each way, the ratio (constrained / free), the
per-sentence setup of a constraint, the constraint's time per generated token (one-token checks,
and how often the argmax was refused and a next-best token or a full mask was needed), and how
many answers were unparsable or named entities that are not in the sentence, each way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="test sentences (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="free/constrained pairs (default 3)")
    parser.add_argument("--format", default="json_list",
                        choices=["json_list", "json_dict", "inline_tags", "all"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the cores to use)")
    parser.add_argument("--max-new-tokens", type=int, default=0,
                        help="cap every budget at N tokens on both sides (0 = from the sentence)")
    args = parser.parse_args()

    os.environ.setdefault("NERLAB_HOME", tempfile.mkdtemp(prefix="nerlab-bench-"))
    cached = ROOT / ".pytest_cache" / "nerlab-models"
    if cached.is_dir():
        os.environ.setdefault("NERLAB_MODELS_DIR", str(cached))

    import torch

    from core import config
    from core.data import projects
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project
    from core.models import loader
    from core.prediction import constrain, decoding, vocab
    from core.prompts import formats, render, template

    torch.set_num_threads(args.threads)
    db = get_db()
    project = ensure_demo_project(db)
    labels = projects.list_labels(db, project["id"])
    names = [r["name"] for r in labels]
    model, tokenizer = loader.load_model(config.BUNDLED_MODEL, device="cpu")
    examples = projects.examples(db, project["id"], split="test")[: args.n]

    t0 = time.perf_counter()
    token_vocab = vocab.TokenVocab.from_tokenizer(tokenizer)
    _ = token_vocab.trie
    once_s = time.perf_counter() - t0
    print(f"SmolLM2-135M-Instruct, CPU, {args.threads} threads, {len(examples)} demo test sentences, "
          f"batch {args.batch_size}, zero-shot; vocabulary bytes + trie built once in {once_s:.2f} s")

    output_formats = (["json_list", "json_dict", "inline_tags"] if args.format == "all"
                      else [args.format])
    for fmt in output_formats:
        tpl = template.default_template(fmt)
        prompts = [render.build_chat(tokenizer, tpl, e.text, labels)[0] for e in examples]
        budgets = [decoding.token_budget(tokenizer, e.text, fmt) for e in examples]
        if args.max_new_tokens:
            budgets = [min(b, args.max_new_tokens) for b in budgets]
        decoding.generate(model, tokenizer, prompts[:2], 4, batch_size=2)  # warm-up

        # This format's prompts and budgets bound as defaults (ruff B023; called in this
        # iteration only, so the same values as before).
        def free(prompts=prompts, budgets=budgets):
            return decoding.generate_details(model, tokenizer, prompts, budgets, batch_size=args.batch_size)

        def constrained(prompts=prompts, budgets=budgets, fmt=fmt):
            cons = constrain.constraints_for(tokenizer, examples, names, fmt)
            return decoding.generate_details(model, tokenizer, prompts, budgets,
                                              batch_size=args.batch_size, constraints=cons)

        runs: dict[str, list[tuple[float, int]]] = {"free": [], "constrained": []}
        outputs = {}
        for r in range(args.repeats):
            order = [("free", free), ("constrained", constrained)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                gens = fn()
                seconds = time.perf_counter() - t0
                runs[name].append((seconds, sum(len(g.tokens) for g in gens)))
                outputs[name] = gens
                print(f"  {fmt} run {r + 1} {name}: {seconds:.1f} s, {runs[name][-1][1]} tokens", flush=True)
        ratios = [f[0] / c[0] for f, c in zip(runs["free"], runs["constrained"], strict=True)]
        tok_ratios = [(c[1] / c[0]) / (f[1] / f[0])
                      for f, c in zip(runs["free"], runs["constrained"], strict=True)]
        print(f"\n== {fmt}")
        for name in ("free", "constrained"):
            secs = [s for s, _ in runs[name]]
            toks = runs[name][0][1]
            print(f"{name:12s} {len(examples) / statistics.median(secs):6.3f} sentences/s "
                  f"(median of {len(secs)}: {', '.join(f'{s:.1f}' for s in secs)} s), "
                  f"{toks} tokens generated, {toks / statistics.median(secs):6.2f} tokens/s")
        print(f"ratio constrained/free, sentences/s: median {statistics.median(ratios):.3f} "
              f"(each pair: {', '.join(f'{x:.3f}' for x in ratios)}); target >= 0.85")
        print(f"ratio constrained/free, tokens/s:    median {statistics.median(tok_ratios):.3f} "
              f"(each pair: {', '.join(f'{x:.3f}' for x in tok_ratios)})")

        # Setup and mask costs, on their own (not inside the timed runs above).
        t0 = time.perf_counter()
        for _ in range(5):
            constrain.constraints_for(tokenizer, examples, names, fmt)
        setup_ms = (time.perf_counter() - t0) / (5 * len(examples)) * 1e3
        stats = {"allows": [0, 0.0], "choose": [0, 0.0], "advance": [0, 0.0], "allowed_tokens": [0, 0.0],
                 "finish": [0, 0.0]}
        originals = {k: getattr(constrain.AnswerConstraint, k) for k in stats}

        def timed(name, originals=originals, stats=stats):
            fn = originals[name]

            def wrapper(self, *a, **kw):
                t = time.perf_counter()
                try:
                    return fn(self, *a, **kw)
                finally:
                    stats[name][0] += 1
                    stats[name][1] += time.perf_counter() - t
            return wrapper

        for k in stats:
            setattr(constrain.AnswerConstraint, k, timed(k))
        try:
            t0 = time.perf_counter()
            gens = constrained()
            inst_s = time.perf_counter() - t0
        finally:
            for k, fn in originals.items():
                setattr(constrain.AnswerConstraint, k, fn)
        steps = sum(len(g.tokens) for g in gens)
        own = stats["allows"][1] + stats["advance"][1] + stats["choose"][1] + stats["finish"][1]
        inner = stats["allowed_tokens"][1]  # inside choose
        print(f"constraint setup: {setup_ms:.2f} ms per sentence")
        print(f"constraint work per generated token: {own / max(steps, 1) * 1e3:.3f} ms "
              f"({own:.2f} s of {inst_s:.1f} s in an instrumented run, {own / inst_s:.1%}); "
              f"argmax refused at {stats['choose'][0]} of {steps} steps "
              f"({stats['choose'][1] / max(stats['choose'][0], 1) * 1e3:.2f} ms each), "
              f"full masks {stats['allowed_tokens'][0]} ({inner / max(stats['allowed_tokens'][0], 1) * 1e3:.2f} ms each)")

        for name in ("free", "constrained"):
            gens = outputs[name]
            unparsable = partial = halluc = unknown = off_tokens = completed = 0
            for ex, g in zip(examples, gens, strict=True):
                parsed = formats.parse_output(tpl, g.text, ex.text, names)
                unparsable += parsed.status == "unparsable"
                partial += parsed.status == "partial"
                halluc += bool(parsed.hallucinated)
                unknown += bool(parsed.unknown_types)
                offsets = ex.token_offsets()
                starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
                off_tokens += any(s.start not in starts or s.end not in ends for s in parsed.spans)
                completed += g.completed
            print(f"{name:12s} answers: {unparsable} unparsable, {partial} partial, {halluc} with "
                  f"hallucinated entities, {unknown} with unknown types, {off_tokens} with spans off "
                  f"the tokens" + (f", {completed} completed after the budget ran out"
                                   if name == "constrained" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
