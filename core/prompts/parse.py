"""Any model output -> spans on the sentence; never raises."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.data.spans import Span
from core.prompts.place import Placement, place_all

ParseStatus = Literal["ok", "partial", "unparsable"]


@dataclass(frozen=True)
class ParseResult:
    """Spans recovered from one model output, and what went wrong on the way.

    Attributes:
        spans: sorted, non-overlapping spans on the sentence.
        status: ``ok`` (read completely), ``partial`` (truncated or malformed parts were dropped),
            ``unparsable`` (nothing could be read).
        hallucinated: entity strings that do not occur in the sentence.
        unknown_types: types the model used that are not entity types of the project.
        loose: ``(mention, kind)`` of mentions that are not exact whole-token copies of the
            sentence (:data:`core.prompts.place.LOOSE_KINDS`); ``case`` and ``spacing`` ones
            are placed, ``inside a word`` ones are not.
    """

    spans: list[Span] = field(default_factory=list)
    status: ParseStatus = "ok"
    hallucinated: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)
    loose: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def placed(cls, placement: Placement, status: ParseStatus) -> ParseResult:
        return cls(placement.spans, status, placement.hallucinated, placement.unknown_types,
                   placement.loose)

    def details(self) -> dict[str, Any]:
        """What is stored with a prediction besides its spans and status."""
        return {"hallucinated": list(self.hallucinated), "unknown_types": list(self.unknown_types),
                "loose": [list(x) for x in self.loose]}

    def to_dict(self) -> dict[str, Any]:
        return {"spans": [s.to_dict() for s in self.spans], "status": self.status, **self.details()}


_FENCE_RE = re.compile(r"(?:^|\n)[ \t]*```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


def _strip_fences(raw: str) -> str:
    """The inside of the first code fence, or the text itself when there is none."""
    m = _FENCE_RE.search(raw)
    if m and m.group(1).strip():
        return m.group(1)
    return raw


class _Truncated(Exception):
    """The loose JSON reader hit the end of the text inside a value."""


class _Loose:
    """A forgiving JSON reader: single quotes, trailing or missing commas, bare words, and a
    truncated end (the values completed so far are kept and ``truncated`` is set)."""

    MAX_DEPTH = 50

    def __init__(self, s: str, pos: int) -> None:
        self.s = s
        self.pos = pos
        self.truncated = False
        self.malformed = False

    def ws(self) -> None:
        while self.pos < len(self.s) and self.s[self.pos].isspace():
            self.pos += 1

    def value(self, depth: int = 0) -> Any:
        if depth > self.MAX_DEPTH:
            raise ValueError("nested too deeply")
        self.ws()
        if self.pos >= len(self.s):
            raise _Truncated
        c = self.s[self.pos]
        if c == "[":
            return self.array(depth)
        if c == "{":
            return self.obj(depth)
        if c in "\"'“”‘’":
            return self.string()
        return self.bare()

    def _items(self, close: str, depth: int, read_item) -> None:
        self.pos += 1
        while True:
            self.ws()
            if self.pos >= len(self.s):
                self.truncated = True
                return
            c = self.s[self.pos]
            if c == close:
                self.pos += 1
                return
            if c == ",":
                self.pos += 1
                continue
            if c in "]}":  # a closing bracket of the wrong kind
                self.malformed = True
                self.pos += 1
                return
            start = self.pos
            try:
                read_item()
            except _Truncated:
                self.truncated = True
                self.pos = len(self.s)
                return
            if self.pos == start:  # no progress: skip the character
                self.malformed = True
                self.pos += 1

    def array(self, depth: int) -> list:
        out: list = []
        self._items("]", depth, lambda: out.append(self.value(depth + 1)))
        return out

    def obj(self, depth: int) -> dict:
        out: dict = {}

        def item() -> None:
            key = self.value(depth + 1)
            self.ws()
            if self.pos >= len(self.s):
                raise _Truncated
            if self.s[self.pos] in ":=":
                self.pos += 1
                out[str(key)] = self.value(depth + 1)
            else:
                self.malformed = True

        self._items("}", depth, item)
        return out

    def string(self) -> str:
        quote = self.s[self.pos]
        closers = {"“": "””", "‘": "’’", "”": "”", "’": "’"}.get(quote, quote)
        self.pos += 1
        buf: list[str] = []
        while self.pos < len(self.s):
            c = self.s[self.pos]
            if c == "\\" and self.pos + 1 < len(self.s):
                nxt = self.s[self.pos + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/"}
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.s[self.pos + 2 : self.pos + 6]):
                    code = int(self.s[self.pos + 2 : self.pos + 6], 16)
                    self.pos += 6
                    if 0xD800 <= code < 0xDC00 and self.s[self.pos : self.pos + 2] == "\\u":
                        low = self.s[self.pos + 2 : self.pos + 6]
                        if re.fullmatch(r"[0-9a-fA-F]{4}", low) and 0xDC00 <= int(low, 16) < 0xE000:
                            code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                            self.pos += 6
                    buf.append(chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")
                    continue
                buf.append(simple.get(nxt, nxt))
                self.pos += 2
                continue
            if c in closers:
                # A quote ends the string only where JSON could go on; otherwise it is part of the
                # text (e.g. the apostrophe in 'Parkinson's disease').
                j = self.pos + 1
                while j < len(self.s) and self.s[j] in " \t\r\n":
                    j += 1
                if j >= len(self.s) or self.s[j] in ",:]}=":
                    self.pos += 1
                    return "".join(buf)
            buf.append(c)
            self.pos += 1
        raise _Truncated

    def bare(self) -> Any:
        m = re.compile(r"[^,:\]\}\[\{\n]*").match(self.s, self.pos)
        word = m.group(0).strip() if m else ""
        self.pos = m.end() if m else self.pos
        if not word:
            return None
        if self.pos >= len(self.s):
            self.truncated = True
        lowered = word.lower()
        if lowered in ("true", "false", "null", "none"):
            return {"true": True, "false": False}.get(lowered)
        try:
            return json.loads(word)
        except ValueError:
            return word


def _read_json(s: str, pos: int) -> tuple[Any, bool, bool]:
    """Read one loose JSON value at ``pos``: ``(value, truncated, malformed)``."""
    reader = _Loose(s, pos)
    try:
        value = reader.value()
    except _Truncated:
        return None, True, True
    except (ValueError, RecursionError):  # nested too deeply: not an answer
        return None, False, True
    return value, reader.truncated, reader.malformed


_TYPE_KEYS = ("type", "label", "entity_type", "category", "tag", "class")


_TEXT_KEYS = ("text", "entity", "span", "name", "value", "mention", "word")


def _pick(item: dict, keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _entities_from_json(value: Any) -> tuple[list[tuple[str, str]], int] | None:
    """``([(type, text), ...], malformed item count)`` from a parsed JSON value, or None when
    the value is not a list of entity objects nor an object keyed by type."""
    bad = 0
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        # {"entities": [...]} wrappers
        for key in ("entities", "entity", "result", "results", "answer", "output", "ner"):
            inner = next((v for k, v in value.items() if str(k).lower() == key), None)
            if isinstance(inner, list | dict) and inner is not value:
                found = _entities_from_json(inner)
                if found is not None:
                    return found
        if value and all(isinstance(v, dict) for v in value.values()) and _pick(
            next(iter(value.values())), _TEXT_KEYS
        ) is not None:
            return _entities_from_json(list(value.values()))
        if {str(k).lower() for k in value} & {"type", "label"} and _pick(value, _TEXT_KEYS) is not None:
            return _entities_from_json([value])
        for key, mentions in value.items():
            if isinstance(mentions, str):
                mentions = [mentions]
            if not isinstance(mentions, list):
                bad += mentions is not None
                continue
            for mention in mentions:
                if isinstance(mention, str | int | float) and not isinstance(mention, bool):
                    out.append((str(key), str(mention)))
                else:
                    bad += 1
        return out, bad
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                kind, text = _pick(item, _TYPE_KEYS), _pick(item, _TEXT_KEYS)
                if isinstance(kind, str) and isinstance(text, str | int | float) and not isinstance(text, bool):
                    out.append((kind, str(text)))
                else:
                    bad += 1
            elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
                out.append((item[1], item[0]))  # [text, type] pairs
            else:
                bad += 1
        if bad and not out:
            return None  # a list, but not of entities (e.g. "[see above]")
        return out, bad
    return None


def parse_json(raw: str, text: str, label_names: Sequence[str],
               tokens: Sequence[tuple[int, int]] | None = None) -> ParseResult:
    """Read a JSON answer in either JSON shape (list of objects, or object keyed by type)."""
    body = _strip_fences(raw)
    starts = [m.start() for m in re.finditer(r"[\[{]", body)][:25]
    best: tuple[list[tuple[str, str]], int, bool] | None = None
    for pos in starts:
        value, truncated, malformed = _read_json(body, pos)
        found = _entities_from_json(value)
        if found is None:
            continue
        entities, bad = found
        if best is None or (len(entities) > len(best[0])):
            best = (entities, bad + int(malformed and not truncated), truncated)
        if entities or not truncated:
            break
    if best is None:
        return ParseResult([], "unparsable", [], [])
    entities, bad, truncated = best
    if truncated and not entities:
        return ParseResult([], "unparsable", [], [])
    return ParseResult.placed(place_all(entities, text, label_names, tokens),
                              "partial" if (truncated or bad) else "ok")


_EOS_RE = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|</s>")


def clean_output(raw: str) -> str:
    """The answer without what a model says after its end-of-sequence marker."""
    return _EOS_RE.split(raw, maxsplit=1)[0]
