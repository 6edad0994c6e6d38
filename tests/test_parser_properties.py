"""Property-based tests (hypothesis) of the output formats and the parser.

- For every output format, parsing the rendered gold answer gives back exactly the gold spans, on
  generated sentences with repeated mentions, punctuation, quotes, brackets and unicode.
- The parser never raises, and whatever it returns is valid: sorted, non-overlapping spans
  inside the sentence, of known types.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from core.data.spans import Span, split_at_spans, tokenize, validate_spans
from core.prompts.formats import OUTPUT_FORMATS, parse_output, render_answer
from core.prompts.template import default_template

TYPES = ["Chemical", "Disease", "Gene ID"]
TEMPLATES = {fmt: default_template(fmt) for fmt in OUTPUT_FORMATS}

# Entity words and filler words use disjoint letters, so a filler word never contains an entity
# by accident; both use the same punctuation, quotes and brackets.
PUNCT = "'\"[](){}.,:;-/%+&*!?`\\"
ENTITY_LETTERS = "abcXYZéßΩ漢03İ"
FILLER_LETTERS = "mnoqrsuvwMNÖüжñ7"
SEPARATORS = [" ", " ", " ", ", ", " (", ") ", "; ", " - ", ' "', '" ', " '", "' ", " [", "] ", "\t", " … "]


def _word(letters: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=letters + PUNCT, min_size=1, max_size=7).filter(
        lambda w: any(c in letters for c in w)
    )


@st.composite
def labelled_sentences(draw) -> tuple[str, list[Span]]:
    """A sentence built from filler words and entity mentions (an entity string can recur, always
    with the same type, as annotators label repeated mentions), with its gold spans."""
    pool_size = draw(st.integers(1, 4))
    strings = draw(
        st.lists(
            st.lists(_word(ENTITY_LETTERS), min_size=1, max_size=3).map(" ".join),
            min_size=pool_size, max_size=pool_size, unique=True,
        )
    )
    pool = [(s, draw(st.sampled_from(TYPES))) for s in strings]
    segments = draw(
        st.lists(
            st.one_of(_word(FILLER_LETTERS).map(lambda w: ("word", w)),
                      st.integers(0, pool_size - 1).map(lambda i: ("entity", i))),
            min_size=1, max_size=12,
        )
    )
    text, spans = "", []
    for n, (kind, value) in enumerate(segments):
        if n:
            text += draw(st.sampled_from(SEPARATORS))
        if kind == "word":
            text += value
        else:
            mention, label = pool[value]
            spans.append(Span(len(text), len(text) + len(mention), label))
            text += mention
    return text, spans


def stored_tokens(text: str, gold: list[Span]) -> list[tuple[int, int]]:
    """The tokens such a sentence is stored with: its words, cut at the gold spans' ends (as an
    import keeps them); placement puts mentions on whole tokens only."""
    return split_at_spans(tokenize(text), gold)


def occurrences(text: str, needle: str) -> list[int]:
    return [i for i in range(len(text)) if text.startswith(needle, i)]


def unambiguous(text: str, spans: list[Span]) -> bool:
    """Whether the sentence's text alone says which occurrence each mention is: every
    occurrence of an entity string is a gold mention or lies inside a longer gold mention.
    (Otherwise no text-only answer format can tell them apart; the inline tags can.)"""
    gold = {(s.start, s.end) for s in spans}
    for s in spans:
        mention = text[s.start : s.end]
        for i in occurrences(text, mention):
            j = i + len(mention)
            if (i, j) in gold:
                continue
            if not any(g.start <= i and j <= g.end and g.end - g.start > len(mention) for g in spans):
                return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_sentences(), st.sampled_from(["json_list", "json_dict"]))
@example(("aspirin overdose after aspirin", [Span(0, 16, "Disease"), Span(23, 30, "Chemical")]), "json_dict")
@example(('a "quoted" name, \'single\' and ünïcödé', [Span(2, 10, "Chemical"), Span(27, 37, "Disease")]), "json_list")
def test_json_formats_round_trip(sentence, fmt):
    text, gold = sentence
    assume(unambiguous(text, gold))
    tpl = TEMPLATES[fmt]
    result = parse_output(tpl, render_answer(tpl, text, gold), text, TYPES, stored_tokens(text, gold))
    assert result.status == "ok"
    assert result.spans == gold
    assert result.hallucinated == [] and result.unknown_types == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_sentences())
@example(("Uptake of [3H]thymidine fell.", [Span(10, 23, "Chemical")]))
@example(("a] b] c", [Span(0, 4, "Chemical")]))
@example(("[x] [[y]]", [Span(1, 2, "Chemical"), Span(6, 7, "Disease")]))
@example(("x [Chemical: y] z", [Span(16, 17, "Disease")]))
def test_inline_tags_round_trip_even_when_ambiguous(sentence):
    """Inline tags say where each mention is, so repeated strings are no problem. The one thing
    they cannot say is whether a ']' right after an entity ends the tag or belongs to the entity:
    "[Chemical: 0]]" reads as the entity "0" followed by "]" (the nearest bracket closes a tag),
    so entities ending in ']' are left out here (and named by the round-trip check)."""
    text, gold = sentence
    assume(not any(text[s.start : s.end].endswith("]") for s in gold))
    tpl = TEMPLATES["inline_tags"]
    result = parse_output(tpl, render_answer(tpl, text, gold), text, TYPES, stored_tokens(text, gold))
    assert result.status == "ok"
    assert result.spans == gold


def check_valid(result, text: str) -> None:
    assert result.status in ("ok", "partial", "unparsable")
    assert validate_spans(text, result.spans) == result.spans
    assert all(s.label in TYPES for s in result.spans)
    assert all(isinstance(h, str) for h in result.hallucinated)
    assert all(isinstance(u, str) and u not in TYPES for u in result.unknown_types)


JSONISH = st.lists(
    st.sampled_from(['[', ']', '{', '}', '"', "'", ',', ':', ' ', '\n', '```', 'json', 'type', 'text',
                     'Chemical', 'chemical', 'Disease', 'Drug', 'aspirin', 'pain', 'asp', '\\', '\\u00e9',
                     '\\ud83d', 'null', '[Chemical: ', '[Disease:', 'Aspirin and', '<|im_end|>']),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), JSONISH), st.sampled_from(OUTPUT_FORMATS))
def test_parser_never_raises_and_returns_valid_spans(raw, fmt):
    text = "Aspirin and aspirin overdose cause pain; aspirin helps."
    check_valid(parse_output(TEMPLATES[fmt], raw, text, TYPES), text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_sentences(), st.sampled_from(OUTPUT_FORMATS), st.data())
def test_truncated_answers_keep_only_complete_entities(sentence, fmt, data):
    """Cutting a gold answer anywhere never invents entities: what comes back is valid, and each
    span is a gold mention's string with its type (it may sit on another occurrence of that string
    when the cut removed the longer mention that covered it), and never more mentions than gold."""
    text, gold = sentence
    if fmt == "inline_tags":
        # A cut inside "[Chemical: [3H]thymidine]" after "[3H]" reads as a complete tag: with a
        # bracket in the entity, a truncated tag cannot be told from a finished one.
        assume(not any("]" in text[s.start : s.end] for s in gold))
    tpl = TEMPLATES[fmt]
    answer = render_answer(tpl, text, gold)
    cut = data.draw(st.integers(0, len(answer)))
    result = parse_output(tpl, answer[:cut], text, TYPES, stored_tokens(text, gold))
    check_valid(result, text)
    mentions = {(text[s.start : s.end], s.label) for s in gold}
    assert {(text[s.start : s.end], s.label) for s in result.spans} <= mentions
    assert len(result.spans) <= len(gold)
    if fmt == "inline_tags":
        assert set(result.spans) <= set(gold)


@settings(max_examples=100, deadline=None)
@given(labelled_sentences())
def test_json_answers_survive_reformatting(sentence):
    """Pretty-printed, single-quoted or fenced JSON reads the same as the compact answer."""
    text, gold = sentence
    assume(unambiguous(text, gold))
    tpl = TEMPLATES["json_list"]
    items = json.loads(render_answer(tpl, text, gold))
    for raw in (
        json.dumps(items, indent=2, ensure_ascii=True),
        "```json\n" + json.dumps(items) + "\n```",
        "The entities are: " + json.dumps(items) + " (done)",
    ):
        assert parse_output(tpl, raw, text, TYPES, stored_tokens(text, gold)).spans == gold
