"""What an import hands to the store, and what the store says back.

:class:`SentenceRecord` is one sentence as a file gave it (text, spans, tokens, split, labelled
flag, annotator, timestamps); :class:`AddResult` is the import report: what was added, which
duplicates disagreed with the copy kept, what ``--update`` changed, and the parser's notes.

Sentences are de-duplicated on their text with whitespace ignored, so two copies of a sentence
may place the same entity at different character offsets. :func:`anchored` and :func:`move_spans`
compare and carry spans between such copies by counting non-whitespace characters.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from core.data.spans import Span

#: Where a sentence's split came from: nothing named one (it landed in train), the import named
#: it (the file or the import's split option), somebody moved it by hand, or a random split.
SPLIT_SOURCES = ("default", "import", "hand", "random")


@dataclass
class SentenceRecord:
    """A sentence to add: its text, optional token offsets and optional gold spans."""

    text: str
    spans: list[Span] = field(default_factory=list)
    tokens: list[tuple[int, int]] | None = None
    split: str | None = None
    labelled: bool | None = None
    source: str = ""
    line: int | None = None  # where it came from in its file, for error messages
    unit: str = "line"  # what ``line`` counts: line, task, row, doc (or "validation row")
    annotator: str | None = None  # who labelled it, when the file says
    created_at: str | None = None  # ISO 8601, when the file says
    updated_at: str | None = None
    split_source: str | None = None  # only NERLab's own exports say; else derived on import

    def where(self) -> str:
        return f"{self.unit} {self.line}" if self.line else "a record"


@dataclass
class DuplicateConflict:
    """A duplicate whose labels differ from the copy that was kept."""

    line: int | None  # the dropped copy's line (or task) in the file
    number: int | None  # the kept copy's sentence number in the project (None: not added)
    kept_line: int | None  # the kept copy's line when it came from the same file
    unit: str = "line"

    def describe(self) -> str:
        kept = (f"sentence {self.number}" if self.number else "the copy kept") + (
            f" ({self.unit} {self.kept_line} of this file)" if self.kept_line
            else " (already in the project)"
        )
        return f"{self.unit} {self.line} differs from {kept}"


@dataclass
class AddResult:
    """The import report; :meth:`summary` is one line, :meth:`details` says everything."""

    added: int = 0
    duplicates: int = 0
    new_labels: list[str] = field(default_factory=list)
    conflicts: list[DuplicateConflict] = field(default_factory=list)
    updated: int = 0  # sentences whose annotation --update changed
    spans_added: int = 0
    spans_removed: int = 0
    updated_numbers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the parser set aside, and why
    format: str = ""
    #: ``--annotator NAME``: whose annotations the file holds, and how many of the project's
    #: sentences (already there or new) got one from it or had theirs changed.
    annotator: str | None = None
    annotations: int = 0

    def summary(self) -> str:
        parts = [f"{self.added} sentence(s) added"]
        if self.duplicates and self.annotator is not None:
            parts.append(f"{self.duplicates} already in the project")
        elif self.duplicates:
            parts.append(f"{self.duplicates} duplicate(s) skipped")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} of them with labels that differ from the copy "
                         "kept (the first copy was kept)")
        if self.updated or self.spans_added or self.spans_removed:
            parts.append(f"{self.updated} sentence(s) updated ({self.spans_added} span(s) added, "
                         f"{self.spans_removed} removed)")
        if self.new_labels:
            parts.append("new entity type(s): " + ", ".join(self.new_labels))
        if self.annotator is not None:
            parts.append(f"{self.annotations} annotation(s) by {self.annotator} added or changed")
        if self.notes:
            parts.append(f"{len(self.notes)} note(s)")
        return "; ".join(parts) + "."

    def details(self) -> list[str]:
        """Every line of the report after the summary: notes, conflicts, updated sentences."""
        out = list(self.notes)
        if self.conflicts:
            numbers = sorted({c.number for c in self.conflicts if c.number})
            out.append(
                f"{len(self.conflicts)} duplicate(s) carry labels that differ from the copy kept"
                + (f" (sentence(s) {_ranges(numbers)})" if numbers else "")
                + "; the copy kept is the first one (the project's own, else the first in the file)"
                + ". Re-import with --update to apply the file's labels to sentences already in "
                "the project:"
            )
            out += [f"  {c.describe()}" for c in self.conflicts]
        if self.updated_numbers:
            out.append(f"Updated sentence(s) {_ranges(self.updated_numbers)}.")
        return out

    def to_dict(self) -> dict:
        data = asdict(self)
        data["summary"] = self.summary()
        return data


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"``."""
    parts: list[str] = []
    nums = sorted(set(numbers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(parts)


def _solid(text: str) -> list[int]:
    """Offsets of the text's non-whitespace characters."""
    return [i for i, ch in enumerate(text) if not ch.isspace()]


def anchored(text: str, spans: Sequence[Span]) -> set[tuple[int, int, str]]:
    """Spans as (non-whitespace characters before start, ... before end, label): equal for two
    copies of a sentence that differ only in whitespace."""
    solid = _solid(text)
    return {(bisect.bisect_left(solid, s.start), bisect.bisect_left(solid, s.end), s.label)
            for s in spans}


def move_spans(source: str, target: str, spans: Sequence[Span]) -> list[Span]:
    """The spans of ``source`` placed on ``target``, a copy of it with other whitespace."""
    solid = _solid(target)
    out = []
    for a, b, label in sorted(anchored(source, spans)):
        if a >= b or b > len(solid):
            continue  # a span of whitespace only: nothing to carry
        out.append(Span(solid[a], solid[b - 1] + 1, label))
    return out
