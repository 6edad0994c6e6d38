"""Retrieved examples: the most similar labelled sentences, never the sentence itself."""

from __future__ import annotations

import pytest

from core.data import projects
from core.data.spans import Example, Span
from core.errors import RetrievalError
from core.prompts.formats import render_answer
from core.prompts.render import build_chat
from core.prompts.retrieval import ExampleRetriever
from core.prompts.template import PromptTemplate

TRAIN = [
    Example(1, "Lithium causes tremor in patients.", (Span(0, 7, "Chemical"), Span(15, 21, "Disease"))),
    Example(2, "Cocaine use was linked to myocardial infarction.", (Span(0, 7, "Chemical"),)),
    Example(3, "Haloperidol induced catalepsy in rats.", (Span(0, 11, "Chemical"),)),
    Example(4, "Lithium toxicity and tremor were reported.", (Span(0, 7, "Chemical"),)),
    Example(5, "The weather was fine.", ()),
]


def test_tfidf_ranks_the_most_similar_first():
    r = ExampleRetriever(TRAIN)
    got = r.top_k("Tremor after lithium therapy.", 2)
    assert [e.id for e in got] == [4, 1] or [e.id for e in got] == [1, 4]
    assert r.top_k("Cocaine and myocardial infarction", 1)[0].id == 2


def test_never_returns_the_sentence_itself():
    r = ExampleRetriever(TRAIN)
    for ex in TRAIN:
        ids = [e.id for e in r.top_k(ex.text, 4, exclude_id=ex.id)]
        assert ex.id not in ids and len(ids) == 4
    # Same text under another id (a dev copy of a train sentence) is not retrieved either.
    assert 3 not in [e.id for e in r.top_k("Haloperidol  induced catalepsy in rats.", 4)]


def test_fills_up_to_k_and_is_deterministic():
    r = ExampleRetriever(TRAIN)
    got = r.top_k("zzz qqq", 3)
    assert [e.id for e in got] == [1, 2, 3]
    assert r.top_k("lithium", 10) == r.top_k("lithium", 10)
    assert len(r.top_k("lithium", 10)) == 5
    assert r.top_k("lithium", 0) == []
    assert ExampleRetriever([]).top_k("lithium", 3) == []


def test_batch_matches_single_queries():
    r = ExampleRetriever(TRAIN)
    texts = [e.text for e in TRAIN]
    assert r.top_k_batch(texts, 2, [e.id for e in TRAIN]) == [r.top_k(e.text, 2, e.id) for e in TRAIN]


def test_unknown_method_is_refused():
    with pytest.raises(RetrievalError, match="bm25"):
        ExampleRetriever(TRAIN, method="bm25")


def test_retrieved_examples_fill_the_prompt_for_training(demo, db):
    train = projects.examples(db, demo["id"], split="train")
    r = ExampleRetriever(train)
    tpl = PromptTemplate("rag", "{labels}\n{examples}\nSentence: {sentence}", "json_list", n_examples=2)
    ex = train[0]
    shots = r.top_k(ex.text, 2, exclude_id=ex.id)
    prompt, target = build_chat(None, tpl, ex.text, ["Chemical", "Disease"], shots, render_answer(tpl, ex.text, ex.spans))
    assert prompt.count("Answer: ") == 2 and shots[0].text in prompt
    assert prompt.count(ex.text) == 1  # the sentence appears once: as the question


@pytest.mark.slow
def test_minilm_retrieval_uses_the_bundled_encoder():
    r = ExampleRetriever(TRAIN, method="minilm")
    got = r.top_k("Patients on lithium developed a tremor.", 2)
    assert {e.id for e in got} == {1, 4}
    assert r.top_k("Patients on lithium developed a tremor.", 2, exclude_id=1)[0].id == 4
    assert [e.id for e in r.top_k("Rats given haloperidol became cataleptic.", 1)] == [3]


@pytest.mark.slow
def test_minilm_reuses_training_vectors_and_matches_fresh_encoding():
    r = ExampleRetriever(TRAIN, method="minilm")
    texts = [TRAIN[0].text, "Rats given haloperidol became cataleptic."]
    cached = r._embed(texts)
    fresh = r._encoder.encode(texts)
    assert (cached - fresh).abs().max().item() < 1e-5
    assert r.top_k_batch(texts, 2, [TRAIN[0].id, None]) == [r.top_k(t, 2, x) for t, x in zip(texts, [TRAIN[0].id, None], strict=True)]
