"""The answer formats a template can ask for: one registry entry each.

An entry says everything about a format in one place: its title for menus, the ``{format}``
text the prompt gives the model, how gold spans are written as the answer the model learns, how
any model output is read back into spans, and how many new tokens an answer may need. A new
format is one :class:`OutputFormat` in :data:`FORMATS` plus its parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.data.spans import Span
from core.errors import TemplateError
from core.prompts.inline import parse_inline, render_inline
from core.prompts.parse import ParseResult, clean_output, parse_json


@dataclass(frozen=True)
class OutputFormat:
    """One answer format.

    Attributes:
        name: the key stored with a template.
        title: how the format is named to a user.
        description: what ``{format}`` becomes in the prompt (kept short: every token here is
            paid for in every training step and every prediction).
        render: ``(sentence, sorted spans) -> answer`` (no end-of-sequence).
        parse: ``(answer, sentence, label names, sentence tokens) -> ParseResult``.
        budget: new tokens an answer may need: ``factor × sentence tokens + extra``.
    """

    name: str
    title: str
    description: str
    render: Callable[[str, Sequence[Span]], str]
    parse: Callable[[str, str, Sequence[str], Sequence[tuple[int, int]] | None], ParseResult]
    budget: tuple[float, int]


def _render_json_list(text: str, spans: Sequence[Span]) -> str:
    return json.dumps([{"type": s.label, "text": text[s.start : s.end]} for s in spans],
                      ensure_ascii=False)


def _render_json_dict(text: str, spans: Sequence[Span]) -> str:
    grouped: dict[str, list[str]] = {}
    for s in spans:
        grouped.setdefault(s.label, []).append(text[s.start : s.end])
    return json.dumps(grouped, ensure_ascii=False)


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "json_list", 'JSON list of {"type", "text"} objects',
            'Answer with a JSON list of {"type": ..., "text": ...} objects in sentence order, '
            "text copied exactly; [] if none.",
            _render_json_list, parse_json, (2.0, 32),
        ),
        OutputFormat(
            "inline_tags", "Inline tags: [TYPE: entity]",
            "Answer with the sentence copied exactly, each entity written as [Type: entity].",
            render_inline, parse_inline, (1.5, 24),
        ),
        OutputFormat(
            "json_dict", "JSON object keyed by type",
            "Answer with a JSON object mapping each type to its entities in sentence order, "
            "text copied exactly; {} if none.",
            _render_json_dict, parse_json, (1.6, 24),
        ),
    )
}
OUTPUT_FORMATS = tuple(FORMATS)
#: How each output format is named to a user.
FORMAT_TITLES = {name: f.title for name, f in FORMATS.items()}


def get_format(name: str) -> OutputFormat:
    """The registry entry of ``name``, or a TemplateError listing the formats."""
    try:
        return FORMATS[name]
    except KeyError:
        raise TemplateError(
            f"Output format {name!r} is not one of {', '.join(OUTPUT_FORMATS)}.") from None


def render_answer(tpl: Any, text: str, spans: Sequence[Span]) -> str:
    """The target the model learns for a sentence with these gold spans (no end-of-sequence).

    ``tpl`` is the template (anything with an ``output_format``)."""
    return get_format(tpl.output_format).render(text, sorted(spans))


def parse_output(tpl: Any, raw: str, text: str, label_names: Sequence[str],
                 tokens: Sequence[tuple[int, int]] | None = None) -> ParseResult:
    """Turn a model's output into spans on ``text``. Never raises; linear in the output's and
    the sentence's lengths.

    Args:
        tpl: the template the output was generated with (anything with an ``output_format``).
        raw: the generated text (without the prompt).
        text: the sentence.
        label_names: the project's entity types; other types are reported in ``unknown_types``.
        tokens: the sentence's tokens (``Example.token_offsets()``); spans fall on them. Default:
            :func:`core.data.spans.tokenize`.
    """
    try:
        if not isinstance(raw, str) or not raw.strip():
            return ParseResult([], "unparsable", [], [])
        return get_format(tpl.output_format).parse(clean_output(raw), text, list(label_names),
                                                   tokens)
    except Exception:  # noqa: BLE001 - the contract is "never raises"; a bad output is data
        return ParseResult([], "unparsable", [], [])
