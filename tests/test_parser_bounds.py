"""The parser's cost is bounded: milliseconds per kilobyte on the worst answers seen.

Before the bound, an inline answer without tags that does not copy the sentence went to a
quadratic similarity check (6,000 characters on a 1,500-character sentence: 210 s), and a JSON
list repeating one mention 500 times on a long sentence took 45.7 s. The limits here are
generous (hundreds of times what the parser now takes) so that a loaded machine cannot fail them.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from core.prompts.formats import parse_output
from core.prompts.template import default_template

NAMES = ["Chemical", "Disease"]
#: Seconds per parse; the parser now takes milliseconds, the old one took 1.9-210 s here.
LIMIT_S = 1.0


def _sentence(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["aspirin", "pain", "the", "of", "patients", "lithium", "induced", "renal", "failure",
             "and", "with", "(", ")", ",", "mg", "dose", "IL-2", "@user_x", "#Greenville"]
    out = []
    while len(" ".join(out)) < chars:
        out.append(rng.choice(words))
    return " ".join(out)[:chars].rstrip()


def _timed(fmt: str, raw: str, text: str):
    started = time.perf_counter()
    result = parse_output(default_template(fmt), raw, text, NAMES)
    return result, time.perf_counter() - started


@pytest.mark.parametrize("out_chars,text_chars", [(1200, 300), (4800, 1200), (6000, 1500)])
def test_inline_answer_that_does_not_copy_the_sentence(out_chars, text_chars):
    text = _sentence(text_chars, seed=1)
    raw = _sentence(out_chars, seed=2)  # the same words, another order: no tags, no copy
    result, seconds = _timed("inline_tags", raw, text)
    assert result.status in ("ok", "partial", "unparsable")
    assert seconds < LIMIT_S, seconds


def test_inline_answer_with_many_brackets():
    text = _sentence(1500, seed=3)
    raw = "[Chemical: " + "] ".join(text.split()) + " ]" * 2000
    result, seconds = _timed("inline_tags", raw, text)
    assert seconds < LIMIT_S, seconds


@pytest.mark.parametrize("fmt", ["json_list", "json_dict"])
def test_json_answer_repeating_one_mention_500_times(fmt):
    text = _sentence(1500, seed=4)
    mention = "aspirin"
    if fmt == "json_list":
        raw = json.dumps([{"type": "Chemical", "text": mention}] * 500)
    else:
        raw = json.dumps({"Chemical": [mention] * 500})
    result, seconds = _timed(fmt, raw, text)
    assert seconds < LIMIT_S, seconds
    assert len(result.spans) == text.split().count(mention)  # each occurrence once, no more


def test_long_looping_and_garbage_answers():
    text = _sentence(1500, seed=5)
    words = text.split()
    loop = json.dumps([{"type": "Disease", "text": w} for w in words] * 20)[:-1]  # truncated
    noise = "".join(random.Random(6).choice("[]{}\":, abc") for _ in range(20_000))
    for fmt in ("json_list", "json_dict", "inline_tags"):
        for raw in (loop, noise):
            result, seconds = _timed(fmt, raw, text)
            assert seconds < LIMIT_S, (fmt, seconds)
            assert len(result.hallucinated) <= 50 and len(result.loose) <= 50
