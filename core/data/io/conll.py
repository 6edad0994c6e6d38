"""CoNLL / BIO: a token and its tag per line, a blank line between sentences.

Reads IOB1, IOB2, IOBES (and BILOU's ``L-``/``U-``), tab- or space-separated columns with the tag
in the last one, ``-DOCSTART-`` lines (Label Studio's CoNLL 2003 export included). Comment lines
``# key = value`` before a sentence carry what the project knows about it: ``split``,
``status`` (``labelled``/``unlabelled``), ``annotator``, ``created_at``, ``updated_at`` and
``text`` (the sentence as written, so that its spacing survives). A line is such a comment only
when it starts with ``#``, holds no tab and reads ``key = value``; ``#<TAB>O`` is a token.
"""

from __future__ import annotations

import re

from core.data.io.common import (
    ExportRow,
    Records,
    annotator,
    fail,
    lines,
    locate_tokens,
    safe_comment,
    split_name,
    timestamp,
)
from core.data.records import SPLIT_SOURCES, SentenceRecord
from core.data.spans import bio_to_spans, spans_to_bio, text_from_tokens
from core.errors import ImportFormatError

_COMMENT = re.compile(r"^#\s*([A-Za-z_][\w.-]*)\s*=\s?(.*)$")
_TAG = re.compile(r"^(O|[BIESLU][-_]\S+)$")
_ASCII_WS = " \t\f\v"


def parse_conll(text: str, name: str = "file", **_options) -> Records:
    """CoNLL/BIO records; ``# key = value`` comments set a sentence's split, status and so on."""
    records = Records()
    words: list[str] = []
    tags: list[str] = []
    meta: dict[str, tuple[int, str]] = {}
    first_line = 0
    mismatched: list[int] = []

    def flush() -> None:
        if not words:
            if meta:
                meta.clear()  # comments with no sentence after them (e.g. a file header)
            return
        rec = _record(words, tags, meta, name, first_line, mismatched)
        records.append(rec)
        words.clear()
        tags.clear()
        meta.clear()

    for lineno, raw in enumerate(lines(text), start=1):
        line = raw.strip(_ASCII_WS + "\ufeff")
        if not line:
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        if line.startswith("#") and "\t" not in line and (m := _COMMENT.match(line)):
            meta[m.group(1).lower()] = (lineno, m.group(2).strip(_ASCII_WS))
            continue
        parts = line.split("\t") if "\t" in line else re.split(r"[ \t]+", line)
        parts = [p for p in (q.strip(_ASCII_WS) for q in parts) if p]
        if len(parts) < 2:
            fail(f"{name}, line {lineno}",
                 f"expected a token and a tag separated by a tab or space, got {raw[:60]!r}.")
        token, tag = parts[0], parts[-1]
        if " " in token:
            fail(f"{name}, line {lineno}", f"token {token[:40]!r} contains a space.")
        if not _TAG.match(tag):
            fail(f"{name}, line {lineno}", f"unknown tag {tag[:40]!r} (expected O, or B-/I-/E-/S- "
                                           "followed by an entity type).")
        if not words:
            first_line = lineno
        words.append(token)
        tags.append(tag)
    flush()
    if not records:
        raise ImportFormatError(f"{name} holds no sentences.")
    if mismatched:
        records.notes.append(
            f"{len(mismatched)} sentence(s) whose '# text' comment does not match their tokens "
            f"were rebuilt from the tokens (lines {', '.join(map(str, mismatched[:20]))}"
            f"{', …' if len(mismatched) > 20 else ''})."
        )
    return records


def _record(words: list[str], tags: list[str], meta: dict[str, tuple[int, str]], name: str,
            first_line: int, mismatched: list[int]) -> SentenceRecord:
    sentence, offsets = text_from_tokens(words)
    if "text" in meta:
        line, written = meta["text"]
        found = locate_tokens(written, words)
        if found is None:
            mismatched.append(line)
        else:
            sentence, offsets = written, found
    try:
        spans = bio_to_spans(offsets, tags)
    except ValueError as exc:  # pragma: no cover - tags are checked line by line
        fail(f"{name}, line {first_line}", str(exc))
    rec = SentenceRecord(text=sentence, spans=spans, tokens=offsets, labelled=True, line=first_line)
    for key, (line, value) in meta.items():
        where = f"{name}, line {line}"
        if key == "split":
            rec.split = split_name(value, where, "# split")
        elif key == "status":
            if value not in ("labelled", "unlabelled"):
                fail(where, f"'# status' must be labelled or unlabelled, got {value[:40]!r}.")
            rec.labelled = value == "labelled"
        elif key == "annotator":
            rec.annotator = annotator(value, where, "# annotator")
        elif key in ("created_at", "updated_at"):
            setattr(rec, key, timestamp(value, where, f"# {key}"))
        elif key == "split_source" and value in SPLIT_SOURCES:
            rec.split_source = value
    return rec


def _pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """A token cut at whitespace (a CoNLL token cannot hold a space), whitespace dropped."""
    return [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]


def to_conll(rows: list[ExportRow], comments: bool = True) -> str:
    """CoNLL with IOB2 tags: ``token<TAB>tag`` lines, a blank line after each sentence; with
    ``comments`` each sentence starts with ``# split``, ``# status``, ``# annotator``, times
    and ``# text`` lines (plain CoNLL readers may want ``comments=False``)."""
    blocks = []
    for row in rows:
        offsets = [p for s, e in row.token_offsets() for p in _pieces(row.text, s, e)]
        tags = spans_to_bio(offsets, row.spans)
        head = ""
        if comments:
            fields = {"split": row.split, "split_source": row.split_source,
                      "status": "labelled" if row.labelled else "unlabelled",
                      "annotator": row.annotator, "created_at": row.created_at,
                      "updated_at": row.updated_at, "text": row.text}
            head = "".join(f"# {k} = {v}\n" for k, v in fields.items()
                           if v and safe_comment(str(v)))
        body = "".join(f"{row.text[s:e]}\t{t}\n" for (s, e), t in zip(offsets, tags, strict=True))
        blocks.append(head + body + "\n")
    return "".join(blocks)
