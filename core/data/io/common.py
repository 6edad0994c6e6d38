"""What every importer shares: decoding, line splitting, strict field reading, span and token
checks, and the rows an export reads from the store.

Every reader takes whatever a file holds and returns records or raises
:class:`ImportFormatError` naming the file, the line (or task or row) and the field: no value of
the wrong type, nesting, size or encoding reaches code that would trip over it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlite_utils import Database

from core import config
from core.data.spans import Span, tokenize
from core.errors import ImportFormatError, NotFound

#: Split names other tools use, and the NERLab split they mean.
SPLIT_NAMES = {"train": "train", "training": "train", "dev": "dev", "devel": "dev",
               "development": "dev", "validation": "dev", "valid": "dev", "val": "dev",
               "test": "test", "testing": "test"}

#: Offsets larger than this are refused before any arithmetic (no sentence is this long).
MAX_OFFSET = 10_000_000


class Records(list):
    """The records a parser read, with its notes: what it set aside and why (for the report)."""

    def __init__(self, items=(), notes: Sequence[str] = ()):
        super().__init__(items)
        self.notes: list[str] = list(notes)


def fail(where: str, message: str) -> NoReturn:
    raise ImportFormatError(f"{where}: {message}")


def show(value: Any, limit: int = 40) -> str:
    """A short, safe description of a value for an error message (never a huge or deep repr)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, list | dict):
        return f"{kind} of {len(value)} item(s)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return f"{kind} with {len(str(abs(value)))} digits"
    text = repr(value)
    return f"{kind} ({text[:limit]}{'…' if len(text) > limit else ''})"


def decode(data: bytes, name: str = "file") -> str:
    """Decode UTF-8 (with or without BOM) or BOM-marked UTF-16; a clear error names the line of
    a bad byte."""
    if not data.strip():
        raise ImportFormatError(f"{name} is empty.")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ImportFormatError(f"{name}: starts like UTF-16 text but is not.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFormatError(
            f"{name}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}). Save the file as UTF-8 and import it again."
        ) from None
    if not text.strip():
        raise ImportFormatError(f"{name} is empty.")
    return text


def lines(text: str) -> list[str]:
    """The file's lines, split at ``\\n`` (and ``\\r\\n``) only: JSON strings may hold U+2028,
    U+0085 and other characters that :meth:`str.splitlines` would break a line at. A file with
    old Mac line ends (``\\r`` only) is split at those."""
    sep = "\r" if "\n" not in text and "\r" in text else "\n"
    return [raw[:-1] if raw.endswith("\r") else raw for raw in text.split(sep)]


def load_json(text: str, where: str) -> Any:
    """``json.loads`` whose every failure (bad syntax, nesting too deep for the parser, a number
    too long to read) is an :class:`ImportFormatError` at ``where``."""
    try:
        return json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        line = f", line {exc.lineno}" if text.count("\n") else ""
        fail(where + line, f"not valid JSON ({exc.msg}, column {exc.colno}).")
    except RecursionError:
        fail(where, "the JSON is nested too deeply to read.")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        fail(where, f"not readable JSON ({str(exc)[:80]}).")


def json_lines(text: str, name: str) -> list[tuple[int, dict]]:
    """JSON Lines: ``(line number, object)`` for every non-blank line; anything else an error."""
    out = []
    for lineno, raw in enumerate(lines(text), start=1):
        if not raw.strip():
            continue
        obj = load_json(raw, f"{name}, line {lineno}")
        if not isinstance(obj, dict):
            fail(f"{name}, line {lineno}", f"expected a JSON object, got {show(obj)}.")
        out.append((lineno, obj))
    if not out:
        raise ImportFormatError(f"{name} holds no records.")
    return out


def get(obj: dict, key: str, kind: type | tuple[type, ...], where: str, what: str = "") -> Any:
    """``obj[key]`` if present and of ``kind`` (None if absent or null); else an error."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        names = {str: "a string", list: "a list", dict: "an object", bool: "true or false",
                 int: "an integer"}
        want = what or " or ".join(names.get(k, k.__name__) for k in _kinds(kind))
        fail(where, f'"{key}" must be {want}, got {show(value)}.')
    return value


def _kinds(kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def get_text(obj: dict, key: str, where: str) -> str:
    """The sentence: a non-blank string."""
    text = get(obj, key, str, where)
    if text is None or not text.strip():
        fail(where, f'missing or empty "{key}".')
    return text


def offset(value: Any, where: str, what: str) -> int:
    """An offset: an integer (not a boolean, not a float, not NaN) within a sane range."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"{what} must be an integer offset, got {show(value)}.")
    if not -MAX_OFFSET <= value <= MAX_OFFSET:
        fail(where, f"{what} is out of range ({show(value)}).")
    return value


def label_name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        fail(where, f"{what} must be a non-empty entity type name, got {show(value)}.")
    return value.strip()


def make_span(start: Any, end: Any, label: Any, text: str, where: str, what: str = "span",
              keys: tuple[str, str, str] = ("start", "end", "label")) -> Span:
    """A span from a file's values, each checked: integer offsets inside the text, a label.
    ``what`` names the field (e.g. ``"spans"[2]``) and ``keys`` its parts in the message."""
    start = offset(start, where, f"{what}.{keys[0]}")
    end = offset(end, where, f"{what}.{keys[1]}")
    label = label_name(label, where, f"{what}.{keys[2]}")
    if start < 0 or end > len(text) or end <= start:
        bad = keys[0] if start < 0 or start >= len(text) else keys[1]
        fail(where, f"span {start}-{end} ({label}) is out of range for a text of {len(text)} "
                    f"characters ({what}.{bad}).")
    return Span(start, end, label)


def split_name(value: Any, where: str, key: str = "split") -> str | None:
    """A split name (``validation`` and friends mean dev), or None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in SPLIT_NAMES:
        fail(where, f'"{key}" must be one of {", ".join(config.SPLITS)} (or validation), '
                    f"got {show(value)}.")
    return SPLIT_NAMES[value.strip().lower()]


def timestamp(value: Any, where: str, key: str) -> str | None:
    """An ISO 8601 string, or seconds since 1970 (Prodigy's ``_timestamp``), as stored: ISO
    8601 UTC with seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value < 32_503_680_000:
            fail(where, f'"{key}" is not a time, got {show(value)}.')
        moment = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            moment = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            fail(where, f'"{key}" is not an ISO 8601 time, got {show(value)}.')
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.timezone.utc)
    else:
        fail(where, f'"{key}" must be an ISO 8601 time or seconds since 1970, got {show(value)}.')
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")


def annotator(value: Any, where: str, key: str) -> str | None:
    """A person's name or id as a short string (ids may be numbers; objects give their email)."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("email") or value.get("username") or value.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        value = str(value)
    if not isinstance(value, str) or len(value) > 200:
        fail(where, f'"{key}" must name an annotator (a string or an id), got {show(value)}.')
    value = value.strip()
    if any(ord(ch) < 32 for ch in value):
        fail(where, f'"{key}" contains a control character.')
    return value or None


def check_tokens(text: str, tokens: list[tuple[int, int]], spans: Sequence[Span], where: str) -> None:
    """Tokens inside the text, in order, not overlapping; every span starts where a token starts
    and ends where one ends (else say which span and token disagree)."""
    previous = 0
    for i, (start, end) in enumerate(tokens):
        if start < 0 or end > len(text) or end <= start:
            bad = "start" if start < 0 or start >= len(text) else "end"
            fail(where, f"token {i} ({start}-{end}) is empty or outside the text of "
                        f"{len(text)} characters (its {bad}).")
        if start < previous:
            fail(where, f"token {i} ({start}-{end}) overlaps or comes before the token before it "
                        "(its start).")
        previous = end
    starts = {s for s, _ in tokens}
    ends = {e for _, e in tokens}
    for span in spans:
        for edge, ok, verb in ((span.start, starts, "starts"), (span.end, ends, "ends")):
            if edge in ok:
                continue
            inside = next(((i, s, e) for i, (s, e) in enumerate(tokens) if s < edge < e), None)
            what = (f"inside token {inside[0]} ({inside[1]}-{inside[2]} {text[inside[1]:inside[2]]!r})"
                    if inside else f"at character {edge}, where no token {verb[:-1]}s")
            fail(where, f"span {span.start}-{span.end} ({span.label}) {verb} {what}: spans must "
                        "fall on token boundaries.")


def locate_tokens(text: str, words: Sequence[str]) -> list[tuple[int, int]] | None:
    """Offsets of ``words`` found in order in ``text`` with only whitespace around them, or
    None when they do not spell it."""
    pos, out = 0, []
    for word in words:
        at = text.find(word, pos)
        if at < 0 or text[pos:at].strip():
            return None
        out.append((at, at + len(word)))
        pos = at + len(word)
    return out if not text[pos:].strip() else None


# --------------------------------------------------------------------------------------- export


@dataclass
class ExportRow:
    """A sentence as an export writes it: everything the project knows about it."""

    id: int
    number: int
    text: str
    tokens: list[tuple[int, int]] | None
    split: str
    split_source: str
    labelled: bool
    annotator: str | None
    created_at: str
    updated_at: str
    source: str = ""
    spans: list[Span] = field(default_factory=list)

    def token_offsets(self) -> list[tuple[int, int]]:
        return list(self.tokens) if self.tokens else tokenize(self.text)


def export_rows(db: Database, project_id: int, split: str | None = None,
                include_unlabelled: bool = False) -> list[ExportRow]:
    """The project's sentences (labelled only, unless asked) with their gold spans, in order."""
    where, params = ["s.project_id = ?"], [project_id]
    if split:
        where.append("s.split = ?")
        params.append(split)
    if not include_unlabelled:
        where.append("s.status = 'labelled'")
    cond = " AND ".join(where)
    rows: dict[int, ExportRow] = {}
    numbers = {r["id"]: i for i, r in enumerate(db.query(
        "SELECT id FROM sentences WHERE project_id = ? ORDER BY position", [project_id]), start=1)}
    for r in db.query(f"SELECT s.* FROM sentences s WHERE {cond} ORDER BY s.position", params):
        rows[r["id"]] = ExportRow(
            id=r["id"], number=numbers[r["id"]], text=r["text"],
            tokens=[tuple(t) for t in json.loads(r["tokens"])] if r["tokens"] else None,
            split=r["split"], split_source=r.get("split_source") or "default",
            labelled=r["status"] == "labelled", annotator=r["annotator"],
            created_at=r["created_at"], updated_at=r["updated_at"], source=r["source"],
        )
    for r in db.query(
        'SELECT sp.sentence_id, sp.start, sp."end", l.name FROM spans sp JOIN labels l'
        " ON l.id = sp.label_id JOIN sentences s ON s.id = sp.sentence_id"
        f" WHERE sp.origin = 'gold' AND {cond} ORDER BY sp.start", params,
    ):
        rows[r["sentence_id"]].spans.append(Span(r["start"], r["end"], r["name"]))
    return list(rows.values())


def run_predictions(db: Database, run_id: int, sentence_ids: Sequence[int]) -> dict[int, list[Span]]:
    """A run's predicted spans for the given sentences (what it parsed from its answers)."""
    run = db.execute("SELECT id FROM runs WHERE id = ?", [run_id]).fetchone()
    if run is None:
        raise NotFound(f"No run {run_id}.")
    wanted = set(sentence_ids)
    out: dict[int, list[Span]] = {}
    for r in db.query("SELECT sentence_id, spans FROM predictions WHERE run_id = ?", [run_id]):
        if r["sentence_id"] not in wanted:
            continue
        try:
            items = json.loads(r["spans"] or "[]")
            out[r["sentence_id"]] = [Span(int(s["start"]), int(s["end"]), str(s["label"]))
                                     for s in items]
        except (TypeError, ValueError, KeyError):
            out[r["sentence_id"]] = []
    return out


def safe_comment(value: str) -> bool:
    """Whether a value can stand on one ``# key = value`` line of a CoNLL file."""
    return not re.search(r"[\n\r\t]", value)
