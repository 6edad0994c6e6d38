"""Gold answer -> parse -> the same spans? With the reason when not."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlite_utils import Database

from core.data import projects
from core.data.spans import Example, Span
from core.prompts.formats import parse_output, render_answer
from core.prompts.parse import ParseResult
from core.prompts.template import PromptTemplate


@dataclass(frozen=True)
class RoundTripFailure:
    """A labelled sentence whose gold answer does not parse back to its gold spans."""

    sentence_id: int
    text: str
    answer: str
    expected: list[Span]
    got: list[Span]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sentence_id": self.sentence_id,
            "text": self.text,
            "answer": self.answer,
            "expected": [s.to_dict() for s in self.expected],
            "got": [s.to_dict() for s in self.got],
            "reason": self.reason,
        }


def _explain(tpl: PromptTemplate, text: str, expected: list[Span], got: list[Span], result: ParseResult) -> str:
    missing = [s for s in expected if s not in got]
    reasons: list[str] = []
    if result.status != "ok":
        reasons.append(f"the answer parses as {result.status}")
    for s in missing[:3]:
        mention = text[s.start : s.end]
        where = f"{mention!r} ({s.label}, {s.start}-{s.end})"
        if mention != mention.strip():
            reasons.append(f"{where} begins or ends with whitespace")
            continue
        if tpl.output_format == "inline_tags" and mention.endswith("]"):
            reasons.append(
                f"{where} ends with ']', which the tag format reads as the end of the tag"
            )
            continue
        if tpl.output_format == "inline_tags" and any(c in mention for c in "[]"):
            reasons.append(f"{where} contains a bracket, which the tag format cannot delimit here")
            continue
        count = text.count(mention)
        if count > 1:
            nth = [i for i in range(len(text)) if text.startswith(mention, i)].index(s.start) + 1 \
                if text.startswith(mention, s.start) else 0
            reasons.append(
                f"{where} occurs {count} times and gold marks occurrence {nth}, so the text alone "
                "cannot say which one is meant"
            )
            continue
        if text.casefold().count(mention.casefold()) > 1:
            reasons.append(f"{where} also occurs in another case, so the text alone is ambiguous")
            continue
        reasons.append(f"{where} is not recovered")
    if not reasons:
        extra = [s for s in got if s not in expected]
        reasons.append(
            "the parser finds extra spans: "
            + ", ".join(f"{text[s.start:s.end]!r} ({s.label})" for s in extra[:3])
        )
    return "; ".join(reasons)


def round_trip(
    tpl: PromptTemplate, examples: Iterable[Example], label_names: Sequence[str]
) -> list[RoundTripFailure]:
    """Render every example's gold answer and parse it back; return those that do not come back
    exactly, each with the reason."""
    failures: list[RoundTripFailure] = []
    for ex in examples:
        expected = sorted(ex.spans)
        answer = render_answer(tpl, ex.text, expected)
        result = parse_output(tpl, answer, ex.text, label_names, ex.token_offsets())
        if result.spans != expected or result.status != "ok":
            failures.append(
                RoundTripFailure(
                    ex.id, ex.text, answer, expected, result.spans,
                    _explain(tpl, ex.text, expected, result.spans, result),
                )
            )
    return failures


@dataclass(frozen=True)
class RoundTripReport:
    """How one output format fares on a set of labelled sentences."""

    output_format: str
    checked: int
    failures: list[RoundTripFailure]
    #: sentence id → its 1-based number in the project (what the pages and the CLI show).
    numbers: dict[int, int]

    @property
    def ok(self) -> bool:
        return not self.failures


def check_project(db: Database, project_id: int, tpl: PromptTemplate,
                  formats: Sequence[str] | None = None, split: str | None = None,
                  limit: int | None = None) -> list[RoundTripReport]:
    """Round-trip a project's labelled sentences (of ``split``; the first ``limit``) in each of
    ``formats`` (default: the template's own). The one check behind the Template page, ``nerlab
    template check`` and the pre-flight checks of a run."""
    examples = projects.examples(db, project_id, split=split)
    if limit:
        examples = examples[:limit]
    names = [r["name"] for r in projects.list_labels(db, project_id)]
    numbers = {r["id"]: r["position"] + 1 for r in db.query(
        "SELECT id, position FROM sentences WHERE project_id = ?", [project_id])}
    reports = []
    for fmt in formats or (tpl.output_format,):
        variant = replace(tpl, output_format=fmt)
        failures = round_trip(variant, examples, names)
        reports.append(RoundTripReport(fmt, len(examples), failures,
                                       {f.sentence_id: numbers.get(f.sentence_id, 0) for f in failures}))
    return reports
