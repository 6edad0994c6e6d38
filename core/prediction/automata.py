"""The two byte automata of a constrained answer: the JSON formats (``json_list``,
``json_dict``) and inline tags. Mixed into :class:`core.prediction.constrain.AnswerConstraint`,
whose sentence tables (the written form ``_form``, byte offsets ``_off``, allowed mention
ends ``_ends_from``) and placement rule (``_allowed``, ``_context``) they use.
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.data.spans import Span
from core.errors import ConstraintError
from core.prediction.vocab import _shortest_word, _trie

FORMATS = ("json_list", "json_dict", "inline_tags")
#: Leading whitespace bytes allowed before the answer (some tokenizers start with a space).
MAX_LEADING_WS = 8
#: Next-best tokens tried (in descending logit order) before a full mask is computed.
TOP_K = 8

_WS = frozenset(b" \t\n\r")
#: Strings after which the answer parser cuts the output (``core.prompts.parse._EOS_RE``).
_EOS_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>")
#: Keys that make the parser read a JSON object as one entity, not as a dict keyed by type
#: (``core.prompts.parse._entities_from_json``); a json_dict answer never holds keys of both kinds.
_TYPE_KEYS = frozenset({"type", "label"})
_TEXT_KEYS = frozenset({"text", "entity", "span", "name", "value", "mention", "word"})
#: What the inline parser accepts as a tag's type (``core.prompts.inline._TAG_OPEN_RE``).
_INLINE_LABEL_RE = re.compile(r"[^\[\]:\n\"{}]{1,40}")

# Phases of the JSON automaton; a state is a tuple whose first item is its phase.
_WS0, _LOPEN, _LIT, _LABEL, _MENT, _AFTER, _DOPEN, _KEY, _DAFTER_M, _DAFTER_K, _END = range(11)
_L_ITEM, _L_TEXT, _L_ITEM_END, _L_NEXT, _L_KEYSEP, _L_MSEP, _L_KSEP = range(7)
_LITERALS = {
    _L_ITEM: b'{"type": "',
    _L_TEXT: b', "text": "',
    _L_ITEM_END: b"}",
    _L_NEXT: b' {"type": "',
    _L_KEYSEP: b': ["',
    _L_MSEP: b' "',
    _L_KSEP: b' "',
}
_QUOTE, _COMMA, _LBRACKET, _RBRACKET, _LBRACE, _RBRACE = (ord(c) for c in '",[]{}')


class _JsonAutomaton:
    """The JSON formats: every state a tuple whose first item is its phase."""

    # -- JSON formats ------------------------------------------------------------------------
    # States: (_WS0, n) | (_LOPEN, E) | (_LIT, literal, i, E, label) | (_LABEL, node, E) |
    # (_MENT, starts, k, E, label) | (_AFTER, E) | (_DOPEN, E) | (_KEY, node, E) |
    # (_DAFTER_M, E, label) | (_DAFTER_K, E) | (_END, E); E = ((label, mention), ...).

    @staticmethod
    def _state_mentions(state: Any) -> tuple[tuple[str, str], ...]:
        phase = state[0]
        if phase == _WS0:
            return ()
        if phase == _LIT:
            return state[3]
        if phase == _MENT:
            return state[3]
        if phase in (_LABEL, _KEY):
            return state[2]
        return state[1]

    def _mention_starts(self, E: tuple) -> tuple[int, ...]:
        """Token starts (chars) at which an allowed mention begins, given mentions E."""
        ctx = self._context(E)
        if ctx.starts is None:
            ctx.starts = tuple(a for a in self._ends_from if self._maxend(ctx, a) >= 0)
        return ctx.starts

    def _mention_start(self, E: tuple, label: Any) -> Any:
        starts = self._mention_starts(E)
        return (_MENT, starts, 0, E, label) if starts else None

    def _key_trie(self, E: tuple) -> dict:
        used = {label for label, _ in E}
        lowered = {u.lower() for u in used}
        available = []
        for name in self.labels:
            if name in used:
                continue
            low = name.lower()
            if (low in _TYPE_KEYS and lowered & _TEXT_KEYS) or (low in _TEXT_KEYS and lowered & _TYPE_KEYS):
                continue
            available.append(name)
        key = frozenset(available)
        trie = self._key_tries.get(key)
        if trie is None:
            trie = self._key_tries[key] = _trie(
                (json.dumps(n, ensure_ascii=False)[1:].encode("utf-8"), n) for n in available
            )
        return trie

    def _after_literal(self, lit: int, E: tuple, label: Any) -> Any:
        if lit in (_L_ITEM, _L_NEXT):
            return (_LABEL, self._label_trie, E) if self._label_trie else None
        if lit in (_L_TEXT, _L_KEYSEP, _L_MSEP):
            return self._mention_start(E, label)
        if lit == _L_ITEM_END:
            return (_AFTER, E)
        if lit == _L_KSEP:
            trie = self._key_trie(E)
            return (_KEY, trie, E) if trie else None
        raise AssertionError(lit)  # pragma: no cover

    def _json_step(self, state: Any, b: int) -> Any:
        phase = state[0]
        if phase == _MENT:
            _, starts, k, E, label = state
            form, off = self._form, self._off
            if b == _QUOTE:
                for a in starts:
                    e = self._end_at_byte.get(off[a] + k)
                    if e is not None and e > a:
                        mention = self.text[a:e]
                        ctx = self._context(E)
                        if self._allowed(ctx, mention):
                            E2 = (*E, (label, mention))
                            if self.format == "json_list":
                                return (_LIT, _L_ITEM_END, 0, E2, None)
                            return (_DAFTER_M, E2, label)
                        break  # every start consumed the same bytes: the same mention
            ctx = None
            keep = []
            for a in starts:
                p = off[a] + k
                if p < len(form) and form[p] == b:
                    if ctx is None:
                        ctx = self._context(E)
                    if self._maxend(ctx, a) > p:
                        keep.append(a)
            return (_MENT, tuple(keep), k + 1, E, label) if keep else None
        if phase == _LIT:
            _, lit, i, E, label = state
            data = _LITERALS[lit]
            if data[i] != b:
                return None
            if i + 1 < len(data):
                return (_LIT, lit, i + 1, E, label)
            return self._after_literal(lit, E, label)
        if phase == _LABEL or phase == _KEY:
            node = state[1].get(b)
            if node is None:
                return None
            E = state[2]
            if -1 in node:  # the closing quote of a label: prefix-free, so a leaf
                if phase == _LABEL:
                    return (_LIT, _L_TEXT, 0, E, node[-1])
                return (_LIT, _L_KEYSEP, 0, E, node[-1])
            return (phase, node, E)
        if phase == _WS0:
            if b in _WS:
                return (_WS0, state[1] + 1) if state[1] < MAX_LEADING_WS else None
            if self.format == "json_list":
                return (_LOPEN, ()) if b == _LBRACKET else None
            return (_DOPEN, ()) if b == _LBRACE else None
        # A new item, key or mention may start only where one can also be finished.
        if phase == _LOPEN:
            if b == _RBRACKET:
                return (_END, ())
            if b == _LBRACE and self._label_trie and self._mention_starts(()):
                return (_LIT, _L_ITEM, 1, (), None)
            return None
        if phase == _AFTER:
            E = state[1]
            if b == _RBRACKET:
                return (_END, E)
            if b == _COMMA and self._label_trie and self._mention_starts(E):
                return (_LIT, _L_NEXT, 0, E, None)
            return None
        if phase == _DOPEN:
            if b == _RBRACE:
                return (_END, ())
            if b == _QUOTE and self._mention_starts(()):
                trie = self._key_trie(())
                return (_KEY, trie, ()) if trie else None
            return None
        if phase == _DAFTER_M:
            E, label = state[1], state[2]
            if b == _RBRACKET:
                return (_DAFTER_K, E)
            if b == _COMMA and self._mention_starts(E):
                return (_LIT, _L_MSEP, 0, E, label)
            return None
        if phase == _DAFTER_K:
            E = state[1]
            if b == _RBRACE:
                return (_END, E)
            if b == _COMMA and self._mention_starts(E) and self._key_trie(E):
                return (_LIT, _L_KSEP, 0, E, None)
            return None
        return None  # _END: nothing but end-of-sequence

    def _shortest_mention(self, state: Any) -> bytes:
        """Bytes that finish the mention of a _MENT state at its nearest allowed end, with the
        closing quote."""
        _, starts, k, E, _ = state
        ctx = self._context(E)
        best: bytes | None = None
        for a in starts:
            p = self._off[a] + k
            for e in self._ends_from.get(a, ()):
                if self._off[e] >= p and self._off[e] > self._off[a] and self._allowed(ctx, self.text[a:e]):
                    tail = self._form[p : self._off[e]]
                    if best is None or len(tail) < len(best):
                        best = tail
                    break
        if best is None:  # pragma: no cover - a live state always has one
            raise ConstraintError("no mention completes this answer")
        return best + b'"'

    def _json_completion(self, state: Any) -> bytes:
        out = bytearray()
        while state[0] != _END:
            phase = state[0]
            if phase == _WS0:
                chunk = b"[" if self.format == "json_list" else b"{"
            elif phase == _LOPEN:
                chunk = b"]"
            elif phase == _DOPEN:
                chunk = b"}"
            elif phase == _LIT:
                chunk = _LITERALS[state[1]][state[2] :]
            elif phase in (_LABEL, _KEY):
                chunk = _shortest_word(state[1])[0]
            elif phase == _MENT:
                chunk = self._shortest_mention(state)
            elif phase == _AFTER or phase == _DAFTER_K:
                chunk = b"]" if phase == _AFTER else b"}"
            elif phase == _DAFTER_M:
                chunk = b"]"
            else:  # pragma: no cover
                raise AssertionError(phase)
            nxt = self._walk(state, chunk)
            if nxt is None:  # pragma: no cover - a bug in the completion
                raise ConstraintError(f"completion {chunk!r} refused in phase {phase}")
            out += chunk
            state = nxt
        return bytes(out)


class _InlineAutomaton:
    """Inline tags: the sentence copied with ``[Type: entity]`` tags."""

    # -- inline tags -------------------------------------------------------------------------
    # A state is a 1-tuple holding a tuple of alternatives (the sentence may itself contain
    # "[" or "]", so a byte can be both a copied character and tag syntax):
    # ("W", n, spans, None): leading whitespace; ("C", p, a, label, spans): copying the sentence
    # at byte p, inside a tag opened at char a (-1: none); ("T", node, p, spans): writing a tag's
    # "Type: " at byte p. ``spans`` is a linked list ((parent, Span) | ()).

    def _inline_step(self, state: Any, b: int) -> Any:
        subs = state[0]
        if len(subs) == 1:
            out = self._inline_sub(subs[0], b)
        else:
            out = [x for sub in subs for x in self._inline_sub(sub, b)]
        if not out:
            return None
        if len(out) > 1:  # drop duplicate alternatives (trie nodes compared by identity)
            seen: set = set()
            unique = []
            for x in out:
                key = (x[0], id(x[1]), *x[2:]) if x[0] == "T" else x
                if key not in seen:
                    seen.add(key)
                    unique.append(x)
            out = unique
        return (tuple(out),)

    def _inline_sub(self, sub: tuple, b: int) -> list[tuple]:
        kind = sub[0]
        form = self._form
        if kind == "W":
            res = []
            if b in _WS and sub[1] < MAX_LEADING_WS and not (form and form[0] in _WS):
                res.append(("W", sub[1] + 1, (), None))
            res.extend(self._inline_sub(("C", 0, -1, None, ()), b))
            return res
        if kind == "T":
            node = sub[1].get(b)
            if node is None:
                return []
            if -1 in node:
                a = self._char_at(sub[2])
                return [("C", sub[2], a, node[-1], sub[3])]
            return [("T", node, sub[2], sub[3])]
        _, p, a, label, spans = sub
        res = []
        if p < len(form) and form[p] == b:
            if a < 0 or self._inline_maxend(a) > p:
                res.append(("C", p + 1, a, label, spans))
        if b == _LBRACKET and a < 0 and self._label_trie:
            start = self._start_at_byte(p)
            if start is not None and start in self._ends_from:
                res.append(("T", self._label_trie, p, spans))
        if b == _RBRACKET and a >= 0:
            e = self._end_at_byte.get(p)
            if e is not None and e in self._ends_from.get(a, ()):
                res.append(("C", p, -1, None, (spans, Span(a, e, label))))
        return res

    def _char_at(self, p: int) -> int:
        return self._byte_to_char[p]

    def _start_at_byte(self, p: int) -> int | None:
        c = self._byte_to_char.get(p)
        return c if c is not None and c in self._ends_from else None

    @property
    def _byte_to_char(self) -> dict[int, int]:
        table = self.__dict__.get("_b2c")
        if table is None:
            table = self.__dict__["_b2c"] = {o: i for i, o in enumerate(self._off)}
        return table

    def _inline_maxend(self, a: int) -> int:
        ends = self._ends_from.get(a)
        return self._off[ends[-1]] if ends else -1

    def _inline_completion(self, sub: tuple) -> bytes:
        form = self._form
        if sub[0] == "W":
            return form
        if sub[0] == "T":
            rest, _ = _shortest_word(sub[1])
            a = self._char_at(sub[2])
            p = sub[2]
        else:
            rest = b""
            p, a = sub[1], sub[2]
        if a < 0:
            return rest + form[p:]
        end = next(self._off[e] for e in self._ends_from[a] if self._off[e] >= p)
        return rest + form[p:end] + b"]" + form[end:]


def _unlink(spans: Any) -> list[Span]:
    out = []
    while spans:
        spans, span = spans
        out.append(span)
    return out


