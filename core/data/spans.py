"""Character-offset spans, tokens and BIO tags: the conversions every other module relies on.

Spans on the text are the truth. Tokens (with their character offsets) and BIO tags are derived
from them when exporting, training or scoring.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_TOKEN_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


@dataclass(frozen=True, order=True)
class Span:
    """An entity mention: ``text[start:end]`` has type ``label``."""

    start: int
    end: int
    label: str

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "label": self.label}


@dataclass(frozen=True)
class Example:
    """A sentence with its gold spans, as training and evaluation see it."""

    id: int
    text: str
    spans: tuple[Span, ...]
    split: str = "train"
    tokens: tuple[tuple[int, int], ...] | None = None

    def token_offsets(self) -> list[tuple[int, int]]:
        """The sentence's tokens: the imported tokenisation when there is one, else the default."""
        return list(self.tokens) if self.tokens else tokenize(self.text)


class SpanError(ValueError):
    """A span that does not fit its sentence (out of range, empty, overlapping)."""


def tokenize(text: str) -> list[tuple[int, int]]:
    """Split text into word and punctuation tokens, returned as ``(start, end)`` offsets."""
    return [(m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def split_at_spans(tokens: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[tuple[int, int]]:
    """The tokens, each cut where a span starts or ends inside it, so that every span falls on
    token boundaries (a tokenisation that agrees with the labels: what an imported sentence
    without tokens of its own is stored with)."""
    cuts = {b for s in spans for b in (s.start, s.end)}
    out: list[tuple[int, int]] = []
    for start, end in tokens:
        inner = sorted(c for c in cuts if start < c < end)
        for a, b in zip([start, *inner], [*inner, end], strict=True):
            out.append((a, b))
    return out


def validate_spans(text: str, spans: Sequence[Span]) -> list[Span]:
    """Return the spans sorted, or raise :class:`SpanError` naming the first bad one."""
    ordered = sorted(spans)
    previous: Span | None = None
    for span in ordered:
        if span.start < 0 or span.end > len(text) or span.end <= span.start:
            raise SpanError(
                f"span {span.start}-{span.end} ({span.label}) is outside the sentence "
                f"of {len(text)} characters or empty"
            )
        if not span.label:
            raise SpanError(f"span {span.start}-{span.end} has no label")
        if previous is not None and span.start < previous.end:
            raise SpanError(
                f"spans overlap: {previous.start}-{previous.end} ({previous.label}) and "
                f"{span.start}-{span.end} ({span.label})"
            )
        previous = span
    return ordered


def spans_to_bio(
    tokens: Sequence[tuple[int, int]], spans: Sequence[Span], scheme: str = "IOB2"
) -> list[str]:
    """Tag tokens with BIO (IOB2, default) or IOBES from character spans.

    A token belongs to a span when they overlap; a span that covers part of a token takes
    the whole token, so spans that do not fall on token boundaries still produce a tag.
    """
    tags = ["O"] * len(tokens)
    for span in sorted(spans):
        inside = [i for i, (s, e) in enumerate(tokens) if s < span.end and e > span.start]
        if not inside:
            continue
        if any(tags[i] != "O" for i in inside):
            # Two spans over one token: keep the first, as conlleval would see only one.
            inside = [i for i in inside if tags[i] == "O"]
            if not inside:
                continue
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + span.label
        if scheme == "IOBES":
            if len(inside) == 1:
                tags[inside[0]] = "S-" + span.label
            else:
                tags[inside[-1]] = "E-" + span.label
    return tags


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIESLU":
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not O or B-/I-/E-/S-TYPE")


def bio_to_spans(
    tokens: Sequence[tuple[int, int]], tags: Sequence[str], text: str | None = None
) -> list[Span]:
    """Turn IOB1, IOB2 or IOBES tags (``L-``/``U-`` as BILOU synonyms) into character spans.

    A chunk starts at ``B``/``S``/``U``, at an ``I``/``E``/``L`` whose type differs from the
    previous tag's (IOB1 and conlleval's reading of a stray ``I``), and ends after ``E``/``S``.
    Raises ``ValueError`` on a tag that is not a BIO tag.
    """
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    spans: list[Span] = []
    start = end = None
    label = ""
    for (s, e), tag in zip(tokens, tags, strict=True):
        prefix, kind = _split_tag(tag)
        begins = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and (start is None or kind != label))
        if prefix == "O" or begins:
            if start is not None:
                spans.append(Span(start, end, label))
                start = None
        if prefix == "O":
            continue
        if start is None:
            start, label = s, kind
        end = e
        if prefix in ("E", "L", "S", "U"):
            spans.append(Span(start, end, label))
            start = None
    if start is not None:
        spans.append(Span(start, end, label))
    return spans


def text_from_tokens(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join tokens with single spaces; return the text and each token's offsets."""
    offsets: list[tuple[int, int]] = []
    pos = 0
    for word in words:
        offsets.append((pos, pos + len(word)))
        pos += len(word) + 1
    return " ".join(words), offsets
