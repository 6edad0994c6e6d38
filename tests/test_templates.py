"""Instruction templates: validation, versions in SQLite, rendering, the chat prompt, parsing."""

from __future__ import annotations

import json

import pytest

from core.data import projects
from core.data.spans import Example, Span
from core.errors import NotFound, TemplateError
from core.prompts.formats import OUTPUT_FORMATS, parse_output, render_answer
from core.prompts.render import build_chat, encode_chat, render_prompt
from core.prompts.roundtrip import round_trip
from core.prompts.store import (
    diff,
    get_template,
    get_template_by_id,
    list_templates,
    list_versions,
    save_template,
)
from core.prompts.template import PromptTemplate, default_template, validation_errors

LABELS = [
    {"name": "Chemical", "description": "drugs and chemicals"},
    {"name": "Disease", "description": ""},
]
NAMES = ["Chemical", "Disease"]
TEXT = "Aspirin and aspirin overdose cause pain; aspirin helps."
GOLD = [Span(0, 7, "Chemical"), Span(12, 28, "Disease"), Span(35, 39, "Disease"), Span(41, 48, "Chemical")]


# -- validation ------------------------------------------------------------------------------


def test_default_template_is_valid_for_every_format():
    for fmt in OUTPUT_FORMATS:
        tpl = default_template(fmt)
        assert tpl.output_format == fmt
        assert "sentence" in tpl.placeholders


@pytest.mark.parametrize(
    "instruction, message",
    [
        ("Label {labels}.", "{sentence}"),
        ("Label this: {sentence}", "{labels} or {guidelines}"),
        ("{labels} {sentence} {sentense}", "Unknown placeholder {sentense}"),
        ("", "empty"),
    ],
)
def test_bad_instruction_is_refused_with_a_clear_message(instruction, message):
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        PromptTemplate("t", instruction, "json_list")


def test_unknown_placeholder_error_names_the_line():
    errors = validation_errors("Types: {labels}\nSentence: {sentence}\n{exmaples}")
    assert len(errors) == 1 and "line 3" in errors[0] and "{exmaples}" in errors[0]


def test_examples_placeholder_required_when_examples_are_asked_for():
    with pytest.raises(TemplateError, match="no {examples} placeholder"):
        PromptTemplate("t", "{labels} {sentence}", "json_list", n_examples=3)
    PromptTemplate("t", "{labels} {examples} {sentence}", "json_list", n_examples=3)


def test_system_message_may_not_depend_on_the_sentence():
    with pytest.raises(TemplateError, match="system message"):
        PromptTemplate("t", "{labels} {sentence}", "json_list", system="Read {sentence}")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"output_format": "yaml"}, "Output format"),
        ({"n_examples": 99}, "from 0 to"),
        ({"name": "  "}, "needs a name"),
        ({"retrieval": "bm25"}, "Retrieval method"),
    ],
)
def test_bad_fields_are_refused(changes, message):
    fields = {"name": "t", "instruction": "{labels} {sentence}", "output_format": "json_list"} | changes
    with pytest.raises(TemplateError, match=message):
        PromptTemplate(**fields)


def test_to_dict_from_dict_round_trip_and_unknown_keys():
    tpl = PromptTemplate("mine", "{labels}\n{examples}\n{sentence}", "inline_tags", "sys", 2, retrieval="minilm")
    assert PromptTemplate.from_dict(json.loads(json.dumps(tpl.to_dict()))) == tpl
    with pytest.raises(TemplateError, match="Unknown template field"):
        PromptTemplate.from_dict(tpl.to_dict() | {"temperature": 1})


def test_literal_braces_are_kept_and_nothing_is_evaluated():
    tpl = PromptTemplate(
        "t", 'Like {"type": "X"} or {{labels}}: {labels}\n{sentence}', "json_list"
    )
    out = render_prompt(tpl, "{__import__('os')} {{7*7}}", NAMES)
    assert out.startswith('Like {"type": "X"} or {labels}: Chemical, Disease')
    assert out.endswith("{__import__('os')} {{7*7}}")


# -- storage ---------------------------------------------------------------------------------


def test_get_template_creates_the_default_once(db):
    p = projects.create_project(db, "p", labels=NAMES)
    first = get_template(db, p["id"])
    assert first.version == 1 and first.id is not None
    assert get_template(db, p["id"]).id == first.id
    assert len(list_templates(db, p["id"])) == 1


def test_each_saved_edit_is_a_new_version_and_old_versions_stay(db):
    p = projects.create_project(db, "p", labels=NAMES)
    v1 = get_template(db, p["id"])
    edited = PromptTemplate("default", v1.instruction + "\nBe brief.", "inline_tags")
    v2 = save_template(db, p["id"], edited)
    assert (v2.version, v2.output_format) == (2, "inline_tags")
    assert save_template(db, p["id"], edited).id == v2.id  # unchanged: no new version
    assert get_template(db, p["id"]).id == v2.id
    assert get_template(db, p["id"], version=1) == v1
    assert get_template_by_id(db, v1.id) == v1
    assert [r["version"] for r in list_versions(db, p["id"], "default")] == [2, 1]


def test_missing_template_names_the_existing_ones(db):
    p = projects.create_project(db, "p", labels=NAMES)
    get_template(db, p["id"])
    with pytest.raises(NotFound, match="Templates: default"):
        get_template(db, p["id"], "other")
    with pytest.raises(NotFound):
        get_template_by_id(db, 12345)


# -- rendering -------------------------------------------------------------------------------


def test_render_answer_in_each_format():
    spans = [Span(0, 7, "Chemical"), Span(35, 39, "Disease")]
    assert render_answer(default_template("json_list"), TEXT, spans) == (
        '[{"type": "Chemical", "text": "Aspirin"}, {"type": "Disease", "text": "pain"}]'
    )
    assert render_answer(default_template("json_dict"), TEXT, spans) == (
        '{"Chemical": ["Aspirin"], "Disease": ["pain"]}'
    )
    assert render_answer(default_template("inline_tags"), TEXT, spans) == (
        "[Chemical: Aspirin] and aspirin overdose cause [Disease: pain]; aspirin helps."
    )
    assert render_answer(default_template("json_list"), TEXT, []) == "[]"
    assert render_answer(default_template("json_dict"), TEXT, []) == "{}"


def test_render_prompt_fills_every_placeholder():
    shots = [Example(7, "Lithium causes tremor.", (Span(0, 7, "Chemical"), Span(15, 21, "Disease")))]
    tpl = PromptTemplate(
        "t", "Types: {labels}\n{guidelines}\n{format}\n{examples}\nSentence: {sentence}", "json_list",
        n_examples=1,
    )
    out = render_prompt(tpl, TEXT, LABELS, shots)
    assert "Types: Chemical, Disease" in out
    assert "- Chemical: drugs and chemicals\n- Disease" in out
    assert 'Sentence: Lithium causes tremor.\nAnswer: [{"type": "Chemical", "text": "Lithium"}' in out
    assert out.endswith("Sentence: " + TEXT)
    assert "\n\n\n" not in render_prompt(tpl, TEXT, LABELS)  # no examples: no hole left


def test_build_chat_without_chat_template_is_a_plain_prompt():
    prompt, target = build_chat(None, default_template(), TEXT, LABELS, answer="[]")
    assert prompt.endswith("Sentence: " + TEXT + "\n\nAnswer:\n")
    assert target == "[]"
    assert build_chat(None, default_template(), TEXT, LABELS)[1] == ""


@pytest.mark.slow
def test_build_chat_uses_the_smollm2_chat_template(bundled_model_path):
    from core.models.loader import load_tokenizer

    tok = load_tokenizer(str(bundled_model_path))
    tpl = default_template()
    answer = render_answer(tpl, TEXT, GOLD)
    prompt, target = build_chat(tok, tpl, TEXT, LABELS, answer=answer)
    assert prompt.startswith("<|im_start|>system\n" + tpl.system + "<|im_end|>\n<|im_start|>user\n")
    assert prompt.endswith("Sentence: " + TEXT + "<|im_end|>\n<|im_start|>assistant\n")
    assert target == answer + "<|im_end|>" and tok.eos_token == "<|im_end|>"
    # Inference sees exactly the training prompt.
    assert build_chat(tok, tpl, TEXT, LABELS)[0] == prompt
    # The separately tokenised prompt + answer equal the tokenised whole, and end with EOS.
    for fmt in OUTPUT_FORMATS:
        t = default_template(fmt)
        p, a = build_chat(tok, t, TEXT, LABELS, answer=render_answer(t, TEXT, GOLD))
        p_ids, a_ids = encode_chat(tok, p, a)
        assert p_ids + a_ids == tok(p + a, add_special_tokens=False)["input_ids"]
        assert a_ids[-1] == tok.eos_token_id
        assert p_ids == tok.apply_chat_template(
            [{"role": "system", "content": t.system}, {"role": "user", "content": render_prompt(t, TEXT, LABELS)}],
            tokenize=True, add_generation_prompt=True, return_dict=True,
        )["input_ids"]


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_gold_answers_round_trip(fmt):
    tpl = default_template(fmt)
    result = parse_output(tpl, render_answer(tpl, TEXT, GOLD), TEXT, NAMES)
    assert (result.spans, result.status) == (GOLD, "ok")


@pytest.mark.parametrize(
    "raw, spans, status",
    [
        ('```json\n[{"type": "Chemical", "text": "aspirin"}]\n```', [Span(12, 19, "Chemical")], "ok"),
        ("Here you go: [{'type': 'Chemical', 'text': 'Aspirin'},] Hope it helps!", [Span(0, 7, "Chemical")], "ok"),
        ('[{"type": "Chemical", "text": "Aspirin"}, {"type": "Disease", "text": "pa', [Span(0, 7, "Chemical")], "partial"),
        ('[{"type": "chemical", "text": "Aspirin"}', [Span(0, 7, "Chemical")], "partial"),
        ('{"Chemical": ["aspirin", "aspirin", "aspirin"]}', [Span(0, 7, "Chemical"), Span(12, 19, "Chemical"), Span(41, 48, "Chemical")], "ok"),
        ('{"entities": [{"label": "Disease", "entity": "PAIN"}]}', [Span(35, 39, "Disease")], "ok"),
        ("[]", [], "ok"),
        ("No entities here.", [], "unparsable"),
        ("", [], "unparsable"),
        ('[{"type": "Chem', [], "unparsable"),
    ],
)
def test_parser_tolerates_messy_json(raw, spans, status):
    result = parse_output(default_template("json_list"), raw, TEXT, NAMES)
    assert (result.spans, result.status) == (spans, status)


def test_repeated_mentions_map_to_successive_occurrences_exact_case_first():
    text = "aspirin, Aspirin and aspirin"
    result = parse_output(default_template(), '[{"type": "Chemical", "text": "aspirin"}, {"type": "Chemical", "text": "aspirin"}]', text, NAMES)
    assert result.spans == [Span(0, 7, "Chemical"), Span(21, 28, "Chemical")]
    result = parse_output(default_template(), '[{"type": "Chemical", "text": "ASPIRIN"}]', text, NAMES)
    assert result.spans == [Span(0, 7, "Chemical")]


def test_short_mention_does_not_steal_an_occurrence_inside_a_longer_one():
    text = "aspirin overdose after aspirin"
    raw = '{"Chemical": ["aspirin"], "Disease": ["aspirin overdose"]}'
    result = parse_output(default_template("json_dict"), raw, text, NAMES)
    assert result.spans == [Span(0, 16, "Disease"), Span(23, 30, "Chemical")]


def test_hallucinations_and_unknown_types_are_counted_separately():
    raw = '[{"type": "Chemical", "text": "morphine"}, {"type": "Drug", "text": "aspirin"}, {"type": "Disease", "text": "pain"}]'
    result = parse_output(default_template(), raw, TEXT, NAMES)
    assert result.spans == [Span(35, 39, "Disease")]
    assert (result.hallucinated, result.unknown_types, result.status) == (["morphine"], ["Drug"], "ok")


@pytest.mark.parametrize(
    "raw, spans, status",
    [
        ("[Chemical: Aspirin] and aspirin overdose cause [Disease: pain]; aspirin helps.", [Span(0, 7, "Chemical"), Span(35, 39, "Disease")], "ok"),
        ("Answer: [Chemical: Aspirin] and aspirin overdose cause pain; aspirin helps.", [Span(0, 7, "Chemical")], "ok"),
        ("[Chemical: Aspirin] and [Disease: aspirin overdose] cau", [Span(0, 7, "Chemical"), Span(12, 28, "Disease")], "partial"),
        ("[Chemical: Aspirin] and [Disease: aspirin ov", [Span(0, 7, "Chemical")], "partial"),
        ("The drug [Chemical: aspirin] causes [Disease: pain]", [Span(12, 19, "Chemical"), Span(35, 39, "Disease")], "ok"),
        (TEXT, [], "ok"),
        ("I do not know.", [], "unparsable"),
    ],
)
def test_inline_tag_parser(raw, spans, status):
    result = parse_output(default_template("inline_tags"), raw, TEXT, NAMES)
    assert (result.spans, result.status) == (spans, status)


def test_inline_tags_with_brackets_inside_the_entity():
    text = "Uptake of [3H]thymidine fell."
    gold = [Span(10, 23, "Chemical")]
    tpl = default_template("inline_tags")
    answer = render_answer(tpl, text, gold)
    assert answer == "Uptake of [Chemical: [3H]thymidine] fell."
    assert parse_output(tpl, answer, text, NAMES).spans == gold


def test_parser_never_raises_on_odd_input():
    for raw in [None, 42, "[" * 5000, "{" * 300 + "}", "\\u12", '"\\ud800"', "[{'type': 'Chemical', 'text': }]", "]]]"]:
        for fmt in OUTPUT_FORMATS:
            result = parse_output(default_template(fmt), raw, TEXT, NAMES)  # type: ignore[arg-type]
            assert result.status in ("ok", "partial", "unparsable")


def test_round_trip_reports_ambiguous_sentences_with_a_reason():
    text = "salt water and salt"
    ex = Example(5, text, (Span(15, 19, "Chemical"),))
    failures = round_trip(default_template("json_list"), [ex], NAMES)
    assert len(failures) == 1 and failures[0].sentence_id == 5
    assert "occurs 2 times" in failures[0].reason and "occurrence 2" in failures[0].reason
    assert round_trip(default_template("inline_tags"), [ex], NAMES) == []


def test_round_trip_passes_on_the_demo_project(demo, db):
    examples = projects.examples(db, demo["id"])
    names = [r["name"] for r in projects.list_labels(db, demo["id"])]
    for fmt in OUTPUT_FORMATS:
        failures = round_trip(default_template(fmt), examples, names)
        assert len(failures) <= 0.02 * len(examples), [f.reason for f in failures[:5]]


def test_a_looping_truncated_list_keeps_its_entities():
    raw = "[" + '{"type": "Chemical", "text": "aspirin"}, ' * 300 + '{"type": "Chem'
    result = parse_output(default_template(), raw, TEXT, NAMES)
    assert result.status == "partial"
    assert result.spans == [Span(0, 7, "Chemical"), Span(12, 19, "Chemical"), Span(41, 48, "Chemical")]
    deep = parse_output(default_template(), "[" * 80 + '{"type": "Chemical", "text": "pain"}', TEXT, NAMES)
    assert deep.status in ("partial", "unparsable")


def test_diff_shows_what_changed_for_the_model():
    v1 = default_template()
    v2 = PromptTemplate("default", v1.instruction.replace("Find", "List"), "inline_tags", v1.system, version=2)
    text = diff(v1, v2)
    assert "-output format: json_list" in text and "+output format: inline_tags" in text
    assert "+List the entities" in text
    assert diff(v1, PromptTemplate(**{**v1.to_dict(), "version": 7})) == ""


def test_saving_for_a_missing_project_says_so(db):
    with pytest.raises(NotFound, match="No project with id 999"):
        save_template(db, 999, default_template())


def test_concurrent_first_use_from_two_connections_gives_one_default(home):
    """The page and a worker may both create the default at once: one v1, no error."""
    import threading

    from core.data.db import get_db

    db = get_db()
    p = projects.create_project(db, "race", labels=NAMES)
    results, errors = [], []

    def first_use():
        try:
            results.append(get_template(get_db(), p["id"]).id)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert [r["version"] for r in list_versions(db, p["id"], "default")] == [1]
