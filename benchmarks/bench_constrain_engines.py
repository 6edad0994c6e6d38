"""Which constrained-decoding engine fits NERLab's per-sentence constraint? Setup and mask costs.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_constrain_engines.py [--n 20] [--engines ...]

Each sentence has its own grammar (its token-aligned spans are the only allowed entity texts),
so the cost that matters is compiling one grammar per sentence, then one mask per generated
token. For every engine this script builds the ``json_list`` grammar of each demo test sentence
(labels: the demo's two types; entity text: any token-aligned span of the sentence, JSON-escaped),
then walks the tokens of the sentence's gold answer and times the full next-token mask at every
step, and for :mod:`core.constrain` also the check of one token (what greedy decoding does
first: the argmax is usually allowed).

None of the external engines expresses "each entity used no more often than it occurs": that
rule would have to be checked on top of them (or the grammar recompiled after every entity).

The external engines are optional and are not NERLab dependencies; install them apart, e.g.
``pip install --no-deps --target /tmp/engines/llguidance llguidance`` (likewise ``xgrammar``
with ``apache-tvm-ffi``, ``outlines-core``, ``transformers-cfg`` with ``termcolor``) and put the
folders on PYTHONPATH. Engines that fail to import are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def candidates(ex) -> list[str]:
    """JSON-escaped token-aligned spans of a sentence (the grammar's entity texts)."""
    toks = ex.token_offsets()
    out = set()
    for i, (a, _) in enumerate(toks):
        for _, e in toks[i:]:
            piece = ex.text[a:e]
            if piece == piece.strip():
                out.add(json.dumps(piece, ensure_ascii=False)[1:-1])
    return sorted(out)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def fmt_ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"median {statistics.median(xs) * 1e3:.2f} ms (max {max(xs) * 1e3:.1f})"


# ---------------------------------------------------------------------------------------------


def bench_ours(tok, data, labels):
    from core.prediction import constrain, vocab

    _, vocab_s = timed(vocab.TokenVocab.from_tokenizer, tok)
    token_vocab = vocab.TokenVocab.from_tokenizer(tok)
    _, trie_s = timed(lambda: token_vocab.trie)
    setup, masks, checks = [], [], []
    accepted = 0
    for ex, gold_ids in data:
        c, s = timed(constrain.AnswerConstraint, token_vocab, ex.text, labels, "json_list", ex.token_offsets())
        setup.append(s)
        for t in gold_ids:
            _, m = timed(c.allowed_tokens)
            masks.append(m)
            c._pending = None
            ok, k = timed(c.allows, t)
            checks.append(k)
            if not ok:
                break
            c.advance(t)
            accepted += 1
    return {"one-time": vocab_s + trie_s, "setup": setup, "mask": masks, "check": checks,
            "accepted": accepted}


def bench_llguidance(tok, data, labels):
    import llguidance
    import llguidance.hf
    import llguidance.torch  # noqa: F401

    lltok, once = timed(llguidance.hf.from_tokenizer, tok)
    setup, masks = [], []
    accepted = 0
    for ex, gold_ids in data:
        lark = (
            'start: "[" (item (", " item)*)? "]"\n'
            'item: "{\\"type\\": \\"" LABEL "\\", \\"text\\": \\"" MENTION "\\"}"\n'
            "LABEL: " + " | ".join(json.dumps(x) for x in labels) + "\n"
            "MENTION: " + " | ".join(json.dumps(c) for c in candidates(ex)) + "\n"
        )

        def build(lark=lark):
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
            m = llguidance.LLMatcher(lltok, grammar)
            if m.is_error():
                raise RuntimeError(m.get_error())
            m.compute_bitmask()  # the first mask is where the lazy lexer does its work
            return m

        matcher, s = timed(build)
        setup.append(s)
        for t in gold_ids:
            _, m = timed(matcher.compute_bitmask)
            masks.append(m)
            if not matcher.consume_token(t):
                break
            accepted += 1
    return {"one-time": once, "setup": setup, "mask": masks, "accepted": accepted}


def bench_xgrammar(tok, data, labels):
    import xgrammar as xgr

    info, once = timed(xgr.TokenizerInfo.from_huggingface, tok)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    setup, masks = [], []
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    accepted = 0
    for ex, gold_ids in data:
        ebnf = (
            'root ::= "[" (item (", " item)*)? "]"\n'
            'item ::= "{\\"type\\": \\"" label "\\", \\"text\\": \\"" mention "\\"}"\n'
            "label ::= " + " | ".join(json.dumps(x) for x in labels) + "\n"
            "mention ::= " + " | ".join(json.dumps(c) for c in candidates(ex)) + "\n"
        )

        def build(ebnf=ebnf):
            return xgr.GrammarMatcher(compiler.compile_grammar(ebnf))

        matcher, s = timed(build)
        setup.append(s)
        for t in gold_ids:
            _, m = timed(matcher.fill_next_token_bitmask, bitmask)
            masks.append(m)
            if not matcher.accept_token(t):
                break
            accepted += 1
    return {"one-time": once, "setup": setup, "mask": masks, "accepted": accepted}


def bench_outlines(tok, data, labels, pieces):
    import re

    import outlines_core as oc

    def build_vocab():
        mapping: dict[bytes, list[int]] = {}
        for i, p in enumerate(pieces):
            if p:
                mapping.setdefault(p, []).append(i)
        return oc.Vocabulary(tok.eos_token_id, mapping)

    vocab, once = timed(build_vocab)
    setup, masks = [], []
    accepted = 0
    for ex, gold_ids in data[:3]:  # slow: a few sentences are enough to see the scale
        item = (re.escape('{"type": "') + "(" + "|".join(re.escape(x) for x in labels) + ")"
                + re.escape('", "text": "') + "(" + "|".join(re.escape(c) for c in candidates(ex))
                + ")" + re.escape('"}'))
        regex = r"\[(" + item + "(, " + item + r")*)?\]"
        index, s = timed(oc.Index, regex, vocab)
        setup.append(s)
        guide = oc.Guide(index)
        for t in gold_ids:
            _, m = timed(guide.get_tokens)
            masks.append(m)
            try:
                guide.advance(t)
            except Exception:  # noqa: BLE001
                break
            accepted += 1
    return {"one-time": once, "setup": setup, "mask": masks, "accepted": accepted}


def bench_transformers_cfg(tok, data, labels):
    import torch

    # transformers-cfg checks the tokenizer's class; transformers 5 loads SmolLM2's as
    # TokenizersBackend, so load the same files as GPT2TokenizerFast for it.
    from transformers import GPT2TokenizerFast
    from transformers_cfg.generation.logits_process import GrammarConstrainedLogitsProcessor
    from transformers_cfg.grammar_utils import IncrementalGrammarConstraint

    tok = GPT2TokenizerFast.from_pretrained(tok.name_or_path)
    setup, masks = [], []
    accepted = 0
    for ex, gold_ids in data[:3]:
        ebnf = (
            'root ::= "[" (item (", " item)*)? "]"\n'
            'item ::= "{\\"type\\": \\"" label "\\", \\"text\\": \\"" mention "\\"}"\n'
            "label ::= " + " | ".join(json.dumps(x) for x in labels) + "\n"
            "mention ::= " + " | ".join(json.dumps(c) for c in candidates(ex)) + "\n"
        )
        constraint, s = timed(IncrementalGrammarConstraint, ebnf, "root", tok)
        setup.append(s)
        proc = GrammarConstrainedLogitsProcessor(constraint)
        ids = torch.tensor([[1]])
        scores = torch.zeros((1, len(tok)))
        for t in gold_ids[:20]:
            _, m = timed(proc, ids, scores.clone())
            masks.append(m)
            ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
            accepted += 1
    return {"one-time": 0.0, "setup": setup, "mask": masks, "accepted": accepted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="demo test sentences")
    parser.add_argument("--engines", nargs="*",
                        default=["ours", "llguidance", "xgrammar", "outlines-core", "transformers-cfg"])
    args = parser.parse_args()
    os.environ.setdefault("NERLAB_HOME", tempfile.mkdtemp(prefix="nerlab-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once, not after retries

    from transformers import AutoTokenizer

    from core.data import projects
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project
    from core.models import loader
    from core.prediction import vocab
    from core.prompts import formats, template

    db = get_db()
    project = ensure_demo_project(db)
    labels = [r["name"] for r in projects.list_labels(db, project["id"])]
    tok = AutoTokenizer.from_pretrained(str(loader.ensure_bundled_model()))
    tpl = template.default_template("json_list")
    data = []
    for ex in projects.examples(db, project["id"], split="test")[: args.n]:
        gold = formats.render_answer(tpl, ex.text, ex.spans)
        data.append((ex, tok(gold, add_special_tokens=False)["input_ids"]))
    n_cands = [len(candidates(ex)) for ex, _ in data]
    print(f"{len(data)} sentences; entity-text alternatives per grammar: median "
          f"{statistics.median(n_cands):.0f}, max {max(n_cands)}; gold answers "
          f"{sum(len(g) for _, g in data)} tokens")
    pieces = vocab.token_pieces(tok)
    runners = {
        "ours": lambda: bench_ours(tok, data, labels),
        "llguidance": lambda: bench_llguidance(tok, data, labels),
        "xgrammar": lambda: bench_xgrammar(tok, data, labels),
        "outlines-core": lambda: bench_outlines(tok, data, labels, pieces),
        "transformers-cfg": lambda: bench_transformers_cfg(tok, data, labels),
    }
    for name in args.engines:
        try:
            res = runners[name]()
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{name:17s} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        line = (f"{name:17s} one-time {res['one-time']:.2f} s | per-sentence setup "
                f"{fmt_ms(res['setup'])} over {len(res['setup'])} | full mask {fmt_ms(res['mask'])}")
        line += f" | gold tokens accepted {res['accepted']}"
        if "check" in res:
            line += f" | one-token check {fmt_ms(res['check'])}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
