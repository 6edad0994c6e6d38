"""Exact placement: a mention lands on whole tokens of the sentence, or is reported."""

from __future__ import annotations

import re

from core.data.spans import Span
from core.prompts.formats import parse_output
from core.prompts.place import place_all
from core.prompts.template import default_template

NAMES = ["PER", "LOC", "ORG"]


def _ws_tokens(text: str) -> list[tuple[int, int]]:
    """Whitespace tokens, as a CoNLL import of tweets stores them."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def test_handles_and_hashtags_are_whole_tokens():
    text = "@diggy_simmons met diggy in #Greenville near Greenville ."
    tokens = _ws_tokens(text)
    got = place_all([("PER", "diggy"), ("LOC", "Greenville"), ("LOC", "#Greenville")], text, NAMES,
                    tokens)
    assert [(text[s.start:s.end], s.start) for s in got.spans] == [
        ("diggy", 19), ("#Greenville", 28), ("Greenville", 45)]
    assert got.loose == [] and got.hallucinated == []


def test_a_mention_only_inside_a_longer_word_is_not_placed():
    text = "He flew from Perth to Adelaide ."
    got = place_all([("LOC", "Per"), ("LOC", "Adelaide")], text, NAMES)
    assert [text[s.start:s.end] for s in got.spans] == ["Adelaide"]
    assert got.loose == [("Per", "inside a word")]


def test_case_and_spacing_variants_are_placed_and_reported():
    text = "Shares of UMB Financial rose ; New  York traders cheered ."
    got = place_all([("ORG", "Umb Financial"), ("LOC", "New York")], text, NAMES)
    assert [text[s.start:s.end] for s in got.spans] == ["UMB Financial", "New  York"]
    assert sorted(got.loose) == [("New York", "spacing"), ("Umb Financial", "case")]


def test_repeats_take_successive_occurrences_and_no_more():
    text = "aspirin , Aspirin and aspirin"
    got = place_all([("ORG", "aspirin")] * 5, text, NAMES)
    assert [s.start for s in got.spans] == [0, 10, 22]  # exact first, then the other case
    assert got.loose == [("aspirin", "case")]


def test_parse_output_uses_the_sentence_tokens():
    text = "#Greenville fans"
    tpl = default_template("json_list")
    raw = '[{"type": "LOC", "text": "Greenville"}]'
    assert parse_output(tpl, raw, text, NAMES, _ws_tokens(text)).spans == []
    assert parse_output(tpl, raw, text, NAMES).spans == [Span(1, 11, "LOC")]  # typed text: "#" is a token
