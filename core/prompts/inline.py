"""Reading inline-tag answers (``[Type: entity]``) by aligning them with the sentence."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from core.data.spans import Span
from core.prompts.parse import ParseResult, _strip_fences
from core.prompts.place import MAX_LISTED, Placer, canonical_types, place_all, resolve_type

_TAG_OPEN_RE = re.compile(r"\[\s*([^\[\]:\n\"{}]{1,40}?)\s*:[ \t]?")


_AlignPath = Any  # tuple[_AlignPath, Span | str] | None


def _align_inline(
    body: str, start: int, text: str, label_names: Sequence[str], canon: dict[str, str],
) -> tuple[list[Span], list[str], bool, int] | None:
    """Align a tagged output with the sentence it should copy.

    A depth-first search over (output position, sentence position): at a tag opener every
    closing bracket whose content matches the sentence is tried, nearest first, then the
    bracket as a literal character; runs of whitespace match each other. This finds the
    entities even when they contain brackets (``[Chemical: [3H]thymidine]``).

    Returns ``(spans, unknown types, truncated, sentence position reached)`` for the first
    alignment that copies the whole sentence, else for the one that gets furthest before the
    output ends (a truncated answer), or None when the output is not a copy of the sentence.
    The work is bounded by a budget proportional to the two lengths (each state and each
    closing bracket tried costs one), so a long garbage answer costs milliseconds.
    """
    n, m = len(body), len(text)
    budget = 8 * (n + m) + 1000
    # A path is a linked list (parent path, span or unknown type name) shared between branches.
    stack: list[tuple[int, int, _AlignPath]] = [(start, 0, None)]
    dead: set[tuple[int, int]] = set()
    best: tuple[int, _AlignPath, bool] | None = None
    found: tuple[int, _AlignPath, bool] | None = None
    while stack and budget > 0:
        i, j, path = stack.pop()
        if (i, j) in dead:
            continue
        dead.add((i, j))
        budget -= 1
        if j >= m:
            found = (j, path, False)
            break
        if i >= n:
            if best is None or j > best[0]:
                best = (j, path, False)
            continue
        children: list[tuple[int, int, _AlignPath]] = []
        opener = _TAG_OPEN_RE.match(body, i)
        if opener:
            kind = opener.group(1).strip()
            label = resolve_type(kind, label_names, canon)
            # An entity is at most the rest of the sentence: no closing bracket beyond that.
            limit = opener.end() + (m - j) + 1
            close = body.find("]", opener.end(), limit)
            while close != -1 and budget > 0:
                budget -= 1
                content = body[opener.end() : close]
                if content and text.startswith(content, j):
                    item = Span(j, j + len(content), label) if label else kind
                    children.append((close + 1, j + len(content), (path, item)))
                close = body.find("]", close + 1, limit)
            tail = body[opener.end() :]
            if "]" not in tail and text.startswith(tail, j) and (best is None or j >= best[0]):
                best = (j, path, True)  # the output stops inside this tag
        if body[i] == text[j]:
            children.append((i + 1, j + 1, path))
        elif body[i].isspace() and text[j].isspace():
            i2, j2 = i, j
            while i2 < n and body[i2].isspace():
                i2 += 1
            while j2 < m and text[j2].isspace():
                j2 += 1
            children.append((i2, j2, path))
        stack.extend(reversed(children))
    result = found or best
    if result is None:
        return None
    j, path, cut = result
    spans: list[Span] = []
    unknown: list[str] = []
    while path is not None:
        path, item = path
        if isinstance(item, Span):
            spans.append(item)
        elif item not in unknown:
            unknown.insert(0, item)
    return sorted(spans), unknown, cut, j


def parse_inline(raw: str, text: str, label_names: Sequence[str],
                 tokens: Sequence[tuple[int, int]] | None = None) -> ParseResult:
    """Read an answer that copies the sentence with each entity written ``[Type: entity]``."""
    body = _strip_fences(raw)
    canon = canonical_types(label_names)
    n = len(body)
    i = 0
    # Skip a preamble such as "Answer:" when the sentence itself starts later in the output.
    if text and not body.startswith(text[:1]) and not _TAG_OPEN_RE.match(body):
        stripped = body.lstrip()
        i = n - len(stripped)
        for prefix in ("Answer:", "Output:", "answer:", "output:"):
            if body.startswith(prefix, i):
                i += len(prefix)
                while i < n and body[i] in " \t\n":
                    i += 1
    aligned = _align_inline(body, i, text, label_names, canon)
    if aligned is not None:
        spans, unknown, cut, j = aligned
        if j == 0 and not spans and not unknown and not cut:
            return ParseResult([], "unparsable", [], [])
        # An output that ends before the sentence does is truncated, unless only punctuation
        # is missing.
        truncated = cut or any(c.isalnum() for c in text[j:])
        placer = Placer(text, tokens)
        whole = [sp for sp in spans if placer.aligned(sp.start, sp.end)]
        loose = [(text[sp.start:sp.end], "inside a word") for sp in spans if sp not in whole]
        return ParseResult(whole, "partial" if truncated else "ok", [], unknown, loose[:MAX_LISTED])

    # The model changed the sentence: read its tags and find their entities by search.
    entities: list[tuple[str, str]] = []
    pos = 0
    truncated = False
    while True:
        opener = _TAG_OPEN_RE.search(body, pos)
        if not opener:
            break
        close = body.find("]", opener.end())
        nxt = _TAG_OPEN_RE.search(body, opener.end())
        if close == -1:
            truncated = True
            break
        if nxt and nxt.start() < close:  # a tag opened inside another: skip the outer one
            pos = nxt.start()
            continue
        entities.append((opener.group(1).strip(), body[opener.end() : close]))
        pos = close + 1
    if not entities:
        if _similar(body, text):
            return ParseResult([], "partial" if truncated else "ok", [], [])
        return ParseResult([], "unparsable", [], [])
    return ParseResult.placed(place_all(entities, text, label_names, tokens),
                              "partial" if truncated else "ok")


def _similar(a: str, b: str) -> bool:
    """Whether an output without tags is the sentence, case and spacing aside (at least 80% of
    its words in common; linear in the two lengths)."""
    wa, wb = a.casefold().split(), b.casefold().split()
    if not wa or not wb:
        return wa == wb
    if not 0.8 <= len(wa) / len(wb) <= 1.25:
        return False
    return sum((Counter(wa) & Counter(wb)).values()) >= 0.8 * max(len(wa), len(wb))


def render_inline(text: str, spans: Sequence[Span]) -> str:
    """The sentence with each span written ``[Type: entity]``."""
    parts: list[str] = []
    pos = 0
    for s in sorted(spans):
        parts.append(text[pos : s.start])
        parts.append(f"[{s.label}: {text[s.start : s.end]}]")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)
