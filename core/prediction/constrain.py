"""Constrained decoding: every answer well-formed, every entity a token-aligned span of its sentence.

One :class:`AnswerConstraint` per generated row. It is a byte-level automaton for one sentence,
one label set and one output format (``json_list``, ``json_dict`` or ``inline_tags``, written
exactly as :func:`core.prompts.formats.render_answer` writes them), walked jointly with the bytes of
the tokenizer's tokens (:class:`TokenVocab`):

- the answer follows the format's syntax exactly (optional leading whitespace before it);
- each type is exactly one of the project's label names;
- each entity text is a span of the sentence that starts at a token start and ends at a token
  end (``Example.token_offsets()``: the imported tokenisation, else :func:`core.data.spans.tokenize`),
  JSON-escaped as ``json.dumps(..., ensure_ascii=False)`` writes it in the JSON formats;
- each entity is used no more often than it occurs: the mentions written so far are placed on
  the sentence by the answer parser's own rule (:mod:`core.prompts.place`: longest mention
  first, then the leftmost free whole-token occurrence), and a mention is allowed only if that
  placement still puts every mention on its own exact whole-token occurrence. This also ends the
  loops a small model falls into;
- in ``json_dict`` a type is a key at most once (a repeated key would overwrite the first);
- after the answer is closed only end-of-sequence is allowed (the generation loop stops there).

:meth:`AnswerConstraint.spans` returns the spans the parser will read from the answer, with
character offsets. When a row runs out of tokens, :meth:`AnswerConstraint.finish` appends the
shortest valid completion as text, so an answer is never malformed.

Greedy decoding is fast because the argmax token is checked first (its bytes walked through the
automaton, microseconds); only when it is refused are the next best tokens tried, and only when
those fail too is the full mask computed by walking the vocabulary trie along the branches the
automaton accepts.

Works on bytes, so byte-level BPE (GPT-2, SmolLM2, Llama-3, Qwen) and SentencePiece-style
(``▁`` for spaces, ``<0xNN>`` byte fallback) tokenizers alike, including tokens that split a
UTF-8 character. torch is imported lazily, only by :meth:`AnswerConstraint.choose`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from core.data.spans import Span, tokenize
from core.errors import ConstraintError
from core.prediction.automata import (
    _END,
    _EOS_MARKERS,
    _INLINE_LABEL_RE,
    _WS0,
    FORMATS,
    TOP_K,
    _InlineAutomaton,
    _JsonAutomaton,
    _unlink,
)
from core.prediction.vocab import TokenVocab, _trie


class _Context:
    """What depends on the mentions written so far: which further mentions are allowed."""

    __slots__ = ("mentions", "allowed", "maxend", "starts")

    def __init__(self, entities: tuple[tuple[str, str], ...]) -> None:
        self.mentions = tuple(m for _, m in entities)
        self.allowed: dict[str, bool] = {}
        self.maxend: dict[int, int] = {}  # token start (char) -> byte offset of its farthest allowed end
        self.starts: tuple[int, ...] | None = None  # token starts of allowed mentions


class AnswerConstraint(_JsonAutomaton, _InlineAutomaton):
    """The constraint on one generated answer (see the module docstring).

    Args:
        vocab: the tokenizer's :class:`TokenVocab`.
        text: the sentence.
        labels: the project's label names.
        output_format: one of :data:`FORMATS`.
        tokens: the sentence's token offsets (``Example.token_offsets()``); default
            :func:`core.data.spans.tokenize`.
        max_entity_tokens: longest entity in sentence tokens (None: no limit).
    """

    def __init__(
        self,
        vocab: TokenVocab,
        text: str,
        labels: Sequence[str],
        output_format: str = "json_list",
        tokens: Sequence[tuple[int, int]] | None = None,
        max_entity_tokens: int | None = None,
    ) -> None:
        if output_format not in FORMATS:
            raise ConstraintError(f"Output format {output_format!r} is not one of {', '.join(FORMATS)}.")
        self.vocab = vocab
        self.text = text
        self.format = output_format
        self.inline = output_format == "inline_tags"
        offsets = [(int(s), int(e)) for s, e in (tokens if tokens is not None else tokenize(text))]
        offsets = sorted({(s, e) for s, e in offsets if 0 <= s < e <= len(text)})
        self._starts = sorted({s for s, _ in offsets})
        self._ends = sorted({e for _, e in offsets})
        self._start_set, self._end_set = set(self._starts), set(self._ends)
        start_index = {s: k for k, s in enumerate(self._starts)}
        end_index = {e: k for k, e in enumerate(self._ends)}
        # Byte offset of each character in the written form of the sentence (JSON-escaped for
        # the JSON formats, raw UTF-8 for inline tags), and that form.
        pieces = []
        off = [0]
        bad_chars = set()
        for i, ch in enumerate(text):
            if 0xD800 <= ord(ch) < 0xE000:
                bad_chars.add(i)
                b = b"?"
            else:
                b = (ch if self.inline else json.dumps(ch, ensure_ascii=False)[1:-1]).encode("utf-8")
                if not vocab.writable(b):
                    bad_chars.add(i)  # no entity may contain it (an inline copy can get stuck)
            pieces.append(b)
            off.append(off[-1] + len(b))
        self._form = b"".join(pieces)
        self._off = off
        self._end_at_byte = {off[e]: e for e in self._ends}
        # Static validity of a candidate span (a, e): non-empty, no surrounding whitespace, no
        # character no token writes, no string the parser cuts at, not too long; inline: not
        # ending with "]" unless it is one ("[T: x]]" reads as the entity "x" and a "]").
        # O(tokens²) comparisons, no slicing: long sentences stay cheap.
        bad_prefix = [0]
        for i in range(len(text)):
            bad_prefix.append(bad_prefix[-1] + (i in bad_chars))
        cuts = [(m.start(), m.end()) for marker in _EOS_MARKERS for m in re.finditer(re.escape(marker), text)]
        self._ends_from: dict[int, list[int]] = {}
        for a in self._starts:
            if text[a].isspace():
                continue
            ends = []
            for e in self._ends:
                if e <= a or text[e - 1].isspace() or bad_prefix[e] != bad_prefix[a]:
                    continue
                if max_entity_tokens is not None and end_index[e] - start_index[a] + 1 > max_entity_tokens:
                    continue  # (counted in token starts/ends: exact for non-overlapping tokens)
                if cuts and any(a <= cs and ce <= e for cs, ce in cuts):
                    continue
                if self.inline and e - a > 1 and text[e - 1] == "]":
                    continue
                ends.append(e)
            if ends:
                self._ends_from[a] = ends
        self._aligned_spans = {(a, e) for a, ends in self._ends_from.items() for e in ends}
        self._occ_cache: dict[str, list[tuple[int, int]]] = {}
        self._contexts: dict[tuple, _Context] = {}
        self._key_tries: dict[frozenset, dict] = {}
        # Labels the format can carry and the parser read back as themselves.
        names = [n for n in dict.fromkeys(str(x) for x in labels) if self._label_writable(n)]
        if self.inline:
            usable = [n for n in names if n == n.strip() and _INLINE_LABEL_RE.fullmatch(n)]
            self._label_trie = _trie(((n + ": ").encode("utf-8"), n) for n in usable)
        else:
            usable = [n for n in names if n and n == n.strip()]
            self._label_trie = _trie((json.dumps(n, ensure_ascii=False)[1:].encode("utf-8"), n) for n in usable)
        self.labels = usable
        self.reset()

    def _label_writable(self, name: str) -> bool:
        if any(0xD800 <= ord(ch) < 0xE000 for ch in name) or any(m in name for m in _EOS_MARKERS):
            return False
        return all(
            self.vocab.writable((ch if self.inline else json.dumps(ch, ensure_ascii=False)[1:-1]).encode("utf-8"))
            for ch in name
        )

    # -- public API ------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start (nothing written)."""
        self._state: Any = ((("W", 0, (), None),),) if self.inline else (_WS0, 0)
        self._written = bytearray()
        self._pending: tuple[int, Any] | None = None
        self.completed = False  # finish() had to append a completion

    @property
    def closed(self) -> bool:
        """Whether the answer is complete: only end-of-sequence may follow."""
        return self._is_closed(self._state)

    def allows(self, token_id: int) -> bool:
        """Whether ``token_id`` may come next (end-of-sequence only once the answer is closed)."""
        token_id = int(token_id)
        if self._pending is not None and self._pending[0] == token_id:
            return self._pending[1] is not None
        if token_id in self.vocab.eos:
            ok = self.closed
            self._pending = (token_id, self._state if ok else None)
            return ok
        piece = self.vocab.pieces[token_id] if 0 <= token_id < len(self.vocab.pieces) else None
        state = self._walk(self._state, piece) if piece else None
        self._pending = (token_id, state)
        return state is not None

    def advance(self, token_id: int) -> None:
        """Take ``token_id`` as the next token.

        Raises:
            ConstraintError: the token is not allowed here.
        """
        token_id = int(token_id)
        if not self.allows(token_id):
            raise ConstraintError(f"Token {token_id} is not allowed here.")
        assert self._pending is not None
        state = self._pending[1]
        self._pending = None
        if token_id not in self.vocab.eos:
            self._written += self.vocab.pieces[token_id]
        self._state = state

    def allowed_tokens(self) -> list[int]:
        """Every token id allowed next (the full mask), by walking the vocabulary trie along the
        bytes the automaton accepts."""
        if self.closed:
            return sorted(self.vocab.eos)
        out: list[int] = []
        step = self._step
        stack = [(self.vocab.trie, self._state)]
        while stack:
            (children, _), state = stack.pop()
            for b, child in children.items():
                nxt = step(state, b)
                if nxt is not None:
                    if child[1]:
                        out.extend(child[1])
                    if child[0]:
                        stack.append((child, nxt))
        return sorted(out)

    def choose(self, logits: Any, top_k: int = TOP_K) -> int | None:
        """The highest-scoring allowed token of one row of logits (a 1-D tensor): the argmax if
        allowed, else the next best tokens in order, else the best of the full mask. None when
        nothing is allowed (it cannot happen on a live automaton)."""
        import torch

        if self.closed:
            eos = sorted(self.vocab.eos)
            return eos[0] if eos else None
        k = min(int(top_k), logits.shape[-1])
        for t in torch.topk(logits, k).indices.tolist():
            if self.allows(t):
                return int(t)
        allowed = [t for t in self.allowed_tokens() if t < logits.shape[-1]]
        if not allowed:
            return None
        index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        return int(allowed[int(torch.argmax(logits[index]).item())])

    def answer(self) -> str:
        """The answer written so far, leading whitespace removed."""
        return bytes(self._written).decode("utf-8", errors="replace").lstrip()

    def completion(self) -> bytes:
        """The shortest bytes that close the answer from here (b"" when it is closed)."""
        if self.inline:
            best = None
            for sub in self._state[0]:
                tail = self._inline_completion(sub)
                if best is None or len(tail) < len(best):
                    best = tail
            return best or b""
        return self._json_completion(self._state)

    def finish(self) -> str:
        """Close the answer (appending :meth:`completion` if needed) and return it."""
        if not self.closed:
            tail = self.completion()
            state = self._walk(self._state, tail)
            if state is None or not self._is_closed(state):  # pragma: no cover - a bug
                raise ConstraintError("The completion does not close the answer.")
            self._state = state
            self._written += tail
            self._pending = None
            self.completed = True
        return self.answer()

    def spans(self) -> list[Span]:
        """The spans of the entities written so far (closed mentions), with character offsets:
        those :func:`core.prompts.formats.parse_output` reads from the answer."""
        if self.inline:
            subs = self._state[0]
            done = [s for s in subs if s[0] == "C" and s[1] == len(self._form) and s[2] < 0]
            sub = (done or list(subs))[0]
            spans = sub[4] if sub[0] == "C" else sub[3]
            return sorted(_unlink(spans))
        mentions = self._state_mentions(self._state)
        places = self._placement(tuple(m for _, m in mentions))
        if places is None:  # pragma: no cover - never reached: every step keeps it placeable
            return []
        return sorted(Span(s, e, label) for (label, _), (s, e) in zip(mentions, places, strict=True))

    # -- shared machinery ------------------------------------------------------------------

    def _walk(self, state: Any, data: bytes) -> Any:
        step = self._step
        for b in data:
            state = step(state, b)
            if state is None:
                return None
        return state

    def _step(self, state: Any, b: int) -> Any:
        return self._inline_step(state, b) if self.inline else self._json_step(state, b)

    def _is_closed(self, state: Any) -> bool:
        if self.inline:
            n = len(self._form)
            return any(s[0] == "C" and s[1] == n and s[2] < 0 for s in state[0])
        return state[0] == _END

    # -- placement: the parser's rule (core.prompts.place) ---------------------------------

    def _occurrences(self, mention: str) -> list[tuple[int, int]]:
        """Exact whole-token occurrences from the left: the parser's order
        (:class:`core.prompts.place.Placer`)."""
        found = self._occ_cache.get(mention)
        if found is None:
            found, i = [], self.text.find(mention)
            while i != -1:
                if i in self._start_set and i + len(mention) in self._end_set:
                    found.append((i, i + len(mention)))
                i = self.text.find(mention, i + 1)
            self._occ_cache[mention] = found
        return found

    def _placement(self, mentions: tuple[str, ...]) -> list[tuple[int, int]] | None:
        """Where the parser puts each mention (longest first, then the first free occurrence in
        its order); None when one finds no free exact occurrence or lands off the tokens."""
        places: list[tuple[int, int] | None] = [None] * len(mentions)
        taken: list[tuple[int, int]] = []
        for i in sorted(range(len(mentions)), key=lambda i: -len(mentions[i])):
            for s, e in self._occurrences(mentions[i]):
                if all(e <= ts or s >= te for ts, te in taken):
                    if (s, e) not in self._aligned_spans:
                        return None
                    taken.append((s, e))
                    places[i] = (s, e)
                    break
            else:
                return None
        return places  # type: ignore[return-value]

    def _context(self, entities: tuple[tuple[str, str], ...]) -> _Context:
        """The context after the ``(label, mention)`` pairs written so far (cached)."""
        ctx = self._contexts.get(entities)
        if ctx is None:
            ctx = self._contexts[entities] = _Context(entities)
        return ctx

    def _allowed(self, ctx: _Context, mention: str) -> bool:
        ok = ctx.allowed.get(mention)
        if ok is None:
            ok = ctx.allowed[mention] = self._placement((*ctx.mentions, mention)) is not None
        return ok

    def _maxend(self, ctx: _Context, a: int) -> int:
        """Byte offset of the farthest end of an allowed mention starting at char ``a`` (-1: none)."""
        found = ctx.maxend.get(a)
        if found is None:
            found = -1
            for e in reversed(self._ends_from.get(a, ())):
                if self.inline or self._allowed(ctx, self.text[a:e]):
                    found = self._off[e]
                    break
            ctx.maxend[a] = found
        return found


# ---------------------------------------------------------------------------------------------
# Factory


def constraints_for(
    tokenizer: Any,
    examples: Sequence[Any],
    labels: Sequence[Any],
    output_format: str,
    max_entity_tokens: int | None = None,
) -> list[AnswerConstraint]:
    """One constraint per sentence.

    Args:
        tokenizer: the model's tokenizer (any Hugging Face tokenizer).
        examples: :class:`core.data.spans.Example` objects (their ``token_offsets()`` are used) or
            plain strings (tokenized with :func:`core.data.spans.tokenize`).
        labels: label names, or label rows with a ``name``.
        output_format: the template's output format.
        max_entity_tokens: longest entity in sentence tokens (None: no limit).
    """
    vocab = TokenVocab.from_tokenizer(tokenizer)
    names = [x if isinstance(x, str) else x["name"] for x in labels]
    out = []
    for ex in examples:
        if isinstance(ex, str):
            text, tokens = ex, None
        else:
            text, tokens = ex.text, ex.token_offsets()
        out.append(AnswerConstraint(vocab, text, names, output_format, tokens, max_entity_tokens))
    return out
