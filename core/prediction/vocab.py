"""A tokenizer's vocabulary as bytes, and byte tries: what constrained decoding walks.

Every token is mapped to the bytes it writes (byte-level BPE: the GPT-2 byte alphabet;
SentencePiece/Metaspace: ``▁`` for a space and ``<0xNN>`` byte fallback), so that an answer can be
checked byte by byte whatever the tokenizer, including tokens that split a UTF-8 character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from core.errors import ConstraintError


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoder_types(tokenizer: Any) -> list[str]:
    """The types of the tokenizer's decoders (``ByteLevel``, ``Metaspace``, ``ByteFallback``...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is None:
        return []
    try:
        state = json.loads(decoder.__getstate__())
    except Exception:  # noqa: BLE001 - an unusual decoder: fall back to the heuristics
        return [type(decoder).__name__]
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node:
                found.append(str(node["type"]))
                if node["type"] == "Replace" and "▁" in json.dumps(node.get("pattern"), ensure_ascii=False):
                    found.append("Metaspace")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(state)
    return found


def token_pieces(tokenizer: Any) -> list[bytes | None]:
    """The bytes each token id writes into the text; None for special tokens (and ids that
    write nothing), which a constraint never allows inside an answer.

    Raises:
        ConstraintError: the tokenizer's token strings cannot be mapped to bytes (checked by
            re-assembling a probe text from its tokens).
    """
    n = len(tokenizer)
    ids = list(range(n))
    strings = tokenizer.convert_ids_to_tokens(ids)
    kinds = _decoder_types(tokenizer)
    sample = [s for s in strings[: min(n, 5000)] if isinstance(s, str)]
    if "ByteLevel" in kinds:
        mode = "bytelevel"
    elif {"Metaspace", "ByteFallback"} & set(kinds):
        mode = "metaspace"
    elif sum("Ġ" in s for s in sample) > sum("▁" in s for s in sample):
        mode = "bytelevel"
    elif any("▁" in s for s in sample):
        mode = "metaspace"
    else:
        mode = "plain"
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces: list[bytes | None] = []
    for i, s in enumerate(strings):
        tok = added.get(i)
        if i in special_ids or (tok is not None and getattr(tok, "special", False)):
            pieces.append(None)
            continue
        if isinstance(s, bytes):  # tiktoken-style tokenizers give the bytes themselves
            pieces.append(s or None)
            continue
        if not isinstance(s, str):
            pieces.append(None)
            continue
        if tok is not None:  # a plain added token: its text as it stands
            piece = str(getattr(tok, "content", s)).encode("utf-8")
        elif mode == "bytelevel":
            try:
                piece = bytes(_BYTE_OF_CHAR[c] for c in s)
            except KeyError:
                piece = s.encode("utf-8")
        elif mode == "metaspace":
            m = _BYTE_FALLBACK_RE.fullmatch(s)
            piece = bytes([int(m.group(1), 16)]) if m else s.replace("▁", " ").encode("utf-8")
        else:
            piece = s.encode("utf-8")
        pieces.append(piece or None)
    _check_pieces(tokenizer, pieces)
    return pieces


_PROBE = 'Naïve [Chemical: L-dopa] {"type": "Disease", "text": "pain\\n"}, 24 h — ünï 中文 😀.'


def _check_pieces(tokenizer: Any, pieces: Sequence[bytes | None]) -> None:
    probe = _PROBE
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:  # no byte fallback: characters it cannot write at all
        probe = _PROBE.encode("ascii", errors="ignore").decode()
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    got = b"".join(pieces[i] or b"" for i in ids if i < len(pieces))
    want = probe.encode("utf-8")
    if got != want and got.lstrip(b" ") != want:
        raise ConstraintError(
            "This tokenizer's tokens could not be mapped to the bytes they write "
            f"(probe came back as {got[:80]!r}); constrained decoding cannot be used with it."
        )


class TokenVocab:
    """A tokenizer's tokens as byte strings, with a trie over them for full masks."""

    def __init__(self, pieces: Sequence[bytes | None], eos_ids: Iterable[int] = ()) -> None:
        self.pieces = list(pieces)
        self.eos = frozenset(int(i) for i in eos_ids)
        self._trie: tuple[dict, list] | None = None
        self._short = {p for p in self.pieces if p and len(p) <= 8}
        self._writable: dict[bytes, bool] = {}

    def writable(self, char: bytes) -> bool:
        """Whether the bytes of one written character can be written by tokens from any point
        inside it (every suffix splits into tokens). Some vocabularies lack single-byte tokens
        (SmolLM2 has none for 0xF1, 0xF2 and a few control bytes), so a character whose bytes
        no tokens can write must not be asked for."""
        ok = self._writable.get(char)
        if ok is None:
            n = len(char)
            reach = [False] * (n + 1)  # reach[i]: char[i:] splits into tokens
            reach[n] = True
            for i in range(n - 1, -1, -1):
                reach[i] = any(reach[j] and char[i:j] in self._short for j in range(i + 1, n + 1))
            ok = self._writable[char] = all(reach)
        return ok

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenVocab:
        """The vocabulary of ``tokenizer`` (cached: about 0.2 s for 50k tokens the first time)."""
        return _vocab_for(tokenizer)

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def trie(self) -> tuple[dict, list]:
        """``(children by byte, token ids ending here)`` nodes; built on first use."""
        if self._trie is None:
            root: tuple[dict, list] = ({}, [])
            for i, piece in enumerate(self.pieces):
                if not piece:
                    continue
                node = root
                for b in piece:
                    child = node[0].get(b)
                    if child is None:
                        child = node[0][b] = ({}, [])
                    node = child
                node[1].append(i)
            self._trie = root
        return self._trie


@lru_cache(maxsize=4)
def _vocab_for(tokenizer: Any) -> TokenVocab:
    eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    return TokenVocab(token_pieces(tokenizer), eos)


# ---------------------------------------------------------------------------------------------
# Byte tries of label names


def _trie(words: Iterable[tuple[bytes, str]]) -> dict:
    """A byte trie; the key -1 of a node holds the value of the word that ends there."""
    root: dict = {}
    for key, value in words:
        node = root
        for b in key:
            node = node.setdefault(b, {})
        node[-1] = value
    return root


def _shortest_word(node: dict) -> tuple[bytes, str]:
    """The shortest word below a trie node: ``(remaining bytes, value)``."""
    frontier: list[tuple[dict, bytes]] = [(node, b"")]
    while frontier:
        nxt = []
        for n, path in frontier:
            if -1 in n:
                return path, n[-1]
            nxt.extend((child, path + bytes([b])) for b, child in n.items() if b != -1)
        frontier = nxt
    raise ConstraintError("empty trie")


