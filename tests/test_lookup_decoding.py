"""Prompt-lookup drafts: the same greedy answers in fewer forward passes."""

from __future__ import annotations

import pytest

from core.data import projects
from core.models import loader
from core.prediction import decoding, kvcache, lookup
from core.prediction.constrain import constraints_for
from core.prompts import render
from core.prompts.plan import fixed_shots
from core.prompts.template import default_template


def test_drafter_continues_the_longest_matched_tail():
    d = lookup.Drafter([[1, 2, 3, 4, 5, 6], [9, 3, 7, 8]])
    assert d.propose(3) == []  # nothing written yet
    for t in (0, 2, 3):
        d.extend(t)
    assert d.propose(2) == [4, 5]  # "2 3" matches the first reference, longer than "3" alone
    d.extend(7)
    assert d.propose(5) == [8]  # "3 7" only in the second
    for t in (0, 2):  # the answer's own text: "0 2" was followed by "3 7"
        d.extend(t)
    assert d.propose(4) == [3, 7, 0, 2]
    assert d.propose(0) == []


def test_sample_answer_writes_every_type_in_the_format():
    assert lookup.sample_answer("json_list", ["Chemical", "Disease"]) == (
        '[{"type": "Chemical", "text": "X"}, {"type": "Disease", "text": "X"}]')
    assert "Disease" in lookup.sample_answer("json_dict", ["Chemical", "Disease"])
    assert lookup.sample_answer("json_list", []) == ""


def test_references_tokenize_words_as_an_answer_opens_them(bundled_model_path):
    tokenizer = loader.load_tokenizer(str(bundled_model_path))
    text = "Naloxone reverses clonidine ."
    refs = lookup.references(tokenizer, [1, 2, 3], text, "json_list", ["Chemical"])
    bare = tokenizer("clonidine", add_special_tokens=False)["input_ids"]
    assert refs[0] == [1, 2, 3]
    assert any(r[: len(bare)] == bare for r in refs[1:])  # "clonidine" without its space


@pytest.fixture(scope="module")
def smol(bundled_model_path):
    import torch

    torch.set_num_threads(2)
    return loader.load_model(str(bundled_model_path))


def _two_shot_prompts(db, demo, tokenizer, n):
    """(labels, template, the n shortest test sentences, their prompts) with two examples in
    the prompt: the base model then answers in the format, and copies."""
    labels = [x["name"] for x in projects.list_labels(db, demo["id"])]
    tpl = default_template()
    shots = fixed_shots(projects.examples(db, demo["id"], split="train"), 2)
    examples = sorted(projects.examples(db, demo["id"], split="test"), key=lambda e: len(e.text))[:n]
    prompts = [render.build_chat(tokenizer, tpl, e.text, labels, shots)[0] for e in examples]
    return labels, tpl, examples, prompts


@pytest.mark.slow
def test_drafts_change_no_answer(db, demo, smol):
    """Batches of greedy answers with and without drafts: the same tokens (constrained and free),
    with a row that ends early, in fewer forward passes."""
    model, tokenizer = smol
    labels, tpl, examples, prompts = _two_shot_prompts(db, demo, tokenizer, 4)
    caps = [min(40, decoding.token_budget(tokenizer, e.text, tpl.output_format)) for e in examples]
    caps[2] = 5  # ends early, on its budget
    for constrained in (True, False):
        runs = {}
        for draft in (0, 6):
            cons = constraints_for(tokenizer, examples, labels, tpl.output_format) if constrained else None
            runs[draft] = decoding.generate_details(model, tokenizer, prompts, caps, batch_size=4,
                                                    constraints=cons, draft=draft)
        for plain, drafted in zip(runs[0], runs[6], strict=True):
            assert drafted.tokens == plain.tokens
            assert drafted.text == plain.text
            assert drafted.logprobs == pytest.approx(plain.logprobs, abs=1e-3)
            assert drafted.completed == plain.completed and drafted.spans == plain.spans
        assert len(runs[6][2].tokens) <= 5
        if constrained:  # closed answers stop their rows before their budgets
            assert any(len(g.tokens) < c for g, c in zip(runs[6], caps, strict=True))
        passes = {d: sum(g.forward_passes for g in gens) for d, gens in runs.items()}
        assert passes[6] < passes[0], passes


@pytest.mark.slow
def test_rows_joining_as_others_finish_change_no_answer(db, demo, smol, monkeypatch):
    """Continuous batching: six prompts two at a time (each later one joins the batch's cache
    as a row finishes, the cache's unused positions dropped) give the tokens of six prompts in
    one batch, with drafts and without, constrained and free; progress counts every prompt."""
    model, tokenizer = smol
    labels, tpl, examples, prompts = _two_shot_prompts(db, demo, tokenizer, 6)
    caps = [min(30, decoding.token_budget(tokenizer, e.text, tpl.output_format)) for e in examples]
    caps[1], caps[4] = 3, 7  # rows that end early make room for the waiting ones
    joined = []
    merge = kvcache.merge
    monkeypatch.setattr(kvcache, "merge", lambda *a: joined.append(1) or merge(*a))
    for constrained in (True, False):
        for draft in (0, 6):
            def run(batch_size, seen, constrained=constrained, draft=draft):
                cons = (constraints_for(tokenizer, examples, labels, tpl.output_format)
                        if constrained else None)
                return decoding.generate_details(
                    model, tokenizer, prompts, caps, batch_size=batch_size, constraints=cons,
                    draft=draft, progress=lambda done, n: seen.append((done, n)))
            seen_all, seen_two = [], []
            together, two = run(6, seen_all), run(2, seen_two)
            for a, b in zip(together, two, strict=True):
                assert b.tokens == a.tokens and b.text == a.text
                assert b.logprobs == pytest.approx(a.logprobs, abs=1e-3)
                assert b.spans == a.spans and b.completed == a.completed
            for seen in (seen_all, seen_two):
                assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert joined  # rows did join a running batch
