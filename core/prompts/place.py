"""Mentions a model wrote -> exact spans on the sentence's tokens.

A model names each entity by its text; this module finds where in the sentence it stands.

- Only whole tokens: a span starts at a token start and ends at a token end of the sentence's
  tokens (its import tokenisation, or :func:`core.data.spans.tokenize` for typed text), so "Per"
  is never placed inside "Perth", nor "diggy" inside "@diggy_simmons".
- Exact text first. A whole-token match in another case ("umb" for "UMB") or with other spacing
  is placed and reported as such (``loose``: ``case`` or ``spacing``); a mention found only inside
  longer tokens is not placed and is reported as ``inside a word``.
- Repeats: the k-th mention of a string takes its k-th free occurrence; longer mentions are
  placed first, so a short one never takes a place inside a long one.

Every distinct mention is searched once and each repeat is a step of a cursor, so placing is
linear in the answer and the sentence, however often a looping model repeats itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.data.spans import Span, tokenize

#: How a placed or refused mention differs from an exact whole-token copy.
LOOSE_KINDS = ("case", "spacing", "inside a word")
#: Mentions longer than this are not searched with the spacing-insensitive pattern.
_MAX_PATTERN = 500
#: At most this many distinct hallucinated or loose mentions are listed (a looping answer can
#: hold thousands).
MAX_LISTED = 50


@dataclass
class Placement:
    """Spans for a list of ``(type, mention)`` pairs, and what could not be placed exactly."""

    spans: list[Span] = field(default_factory=list)
    hallucinated: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)
    #: ``(mention, kind)`` with kind in :data:`LOOSE_KINDS`.
    loose: list[tuple[str, str]] = field(default_factory=list)


def canonical_types(label_names: Sequence[str]) -> dict[str, str]:
    """Case-folded type name → the project's spelling."""
    mapping: dict[str, str] = {}
    for name in label_names:
        mapping.setdefault(name.casefold(), name)
    return mapping


def resolve_type(kind: str, label_names: Sequence[str], canon: dict[str, str]) -> str | None:
    """The project's entity type a model's type string means, or None."""
    kind = kind.strip()
    if kind in label_names:
        return kind
    return canon.get(kind.casefold())


class Placer:
    """Map mentions to free, non-overlapping whole-token occurrences in one sentence."""

    def __init__(self, text: str, tokens: Sequence[tuple[int, int]] | None = None) -> None:
        self.text = text
        offsets = list(tokens) if tokens else tokenize(text)
        self.starts = {s for s, _e in offsets}
        self.ends = {e for _s, e in offsets}
        folded = text.casefold()
        self.folded = folded if len(folded) == len(text) else None
        self.taken = bytearray(len(text))
        #: mention → (whole-token occurrences in order of preference, kind of match, cursor)
        self._found: dict[str, list] = {}

    def aligned(self, start: int, end: int) -> bool:
        """Whether text[start:end] starts at a token start and ends at a token end."""
        return start in self.starts and end in self.ends

    def _search(self, mention: str) -> list:
        """``[candidates, why not, cursor]``: the mention's whole-token occurrences, each with
        how it matches, in order of preference (exact, then other case, then other spacing), or
        no candidates and why (``inside a word`` or ``missing``)."""
        text = self.text
        exact = _occurrences(text, mention)
        candidates = [(o, None) for o in exact if self.aligned(*o)]
        seen = {o for o, _kind in candidates}
        folded: list[tuple[int, int]] = []
        if self.folded is not None:
            folded = _occurrences(self.folded, mention.casefold())
            candidates += [(o, "case") for o in folded if self.aligned(*o) and o not in seen]
            seen |= {o for o, _kind in candidates}
        squeezed = "".join(mention.split())
        spaced: list[tuple[int, int]] = []
        if squeezed and len(squeezed) <= _MAX_PATTERN and squeezed != mention:
            pattern = r"\s*".join(re.escape(c) for c in squeezed)
            spaced = [(m.start(), m.end()) for m in re.finditer(pattern, text, re.IGNORECASE)]
            candidates += [(o, "spacing") for o in spaced if self.aligned(*o) and o not in seen]
        if candidates:
            return [candidates, None, 0]
        return [[], "inside a word" if (exact or folded or spaced) else "missing", 0]

    def place(self, mention: str) -> tuple[tuple[int, int] | None, str | None]:
        """``((start, end), kind)`` for the mention's next free whole-token occurrence (kind None
        for an exact match, else ``case`` or ``spacing``); ``(None, why)`` otherwise, why being
        ``repeat`` (every occurrence is taken), ``inside a word`` or ``missing``."""
        mention = mention.strip()
        if not mention:
            return None, "missing"
        found = self._found.get(mention)
        if found is None:
            found = self._found[mention] = self._search(mention)
        candidates, why, cursor = found
        if not candidates:
            return None, why
        while cursor < len(candidates):
            (start, end), kind = candidates[cursor]
            cursor += 1
            if not any(self.taken[start:end]):
                self.taken[start:end] = b"\x01" * (end - start)
                found[2] = cursor
                return (start, end), kind
        found[2] = cursor
        return None, "repeat"


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int]]:
    found, i = [], haystack.find(needle)
    while i != -1:
        found.append((i, i + len(needle)))
        i = haystack.find(needle, i + 1)
    return found


def place_all(entities: Sequence[tuple[str, str]], text: str, label_names: Sequence[str],
              tokens: Sequence[tuple[int, int]] | None = None) -> Placement:
    """Spans for ``(type, mention)`` pairs on ``text`` (see the module's rules)."""
    canon = canonical_types(label_names)
    out = Placement()
    placer = Placer(text, tokens)
    hallucinated: dict[str, None] = {}
    loose: dict[tuple[str, str], None] = {}
    order = sorted(range(len(entities)), key=lambda i: -len(entities[i][1].strip()))
    for i in order:
        kind, mention = entities[i]
        label = resolve_type(kind, label_names, canon)
        if label is None:
            if kind.strip() and kind.strip() not in out.unknown_types:
                out.unknown_types.append(kind.strip())
            continue
        where, how = placer.place(mention)
        if where is not None:
            out.spans.append(Span(where[0], where[1], label))
        if how == "missing" and mention.strip():
            hallucinated.setdefault(mention.strip())
        elif how in LOOSE_KINDS:
            loose.setdefault((mention.strip(), how))
    out.spans.sort()
    out.hallucinated = list(hallucinated)[:MAX_LISTED]
    out.loose = list(loose)[:MAX_LISTED]
    out.unknown_types = out.unknown_types[:MAX_LISTED]
    return out
