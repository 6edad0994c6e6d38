"""NERLab / spaCy / Prodigy JSONL, and plain text.

One ``{"text", "spans": [{"start", "end", "label"}]}`` object per line. Optional: ``tokens``
(Prodigy's ``[{"start", "end", "text"?}]``: checked against the text, and every span must fall on
token boundaries), ``split`` (or ``meta.split``), ``labelled``, ``annotator`` (else Prodigy's
``_annotator_id``), ``created_at`` / ``updated_at`` (else Prodigy's ``_timestamp``),
``answer`` (Prodigy: ``reject``/``ignore`` lines are skipped and counted in the report).

Lines are split at ``\\n`` only, so a sentence holding U+2028 or U+0085 stays one record.
"""

from __future__ import annotations

import json

from core.data.io.common import (
    ExportRow,
    Records,
    annotator,
    check_tokens,
    fail,
    get,
    get_text,
    json_lines,
    lines,
    load_json,
    make_span,
    offset,
    show,
    split_name,
    timestamp,
)
from core.data.records import SPLIT_SOURCES, SentenceRecord
from core.errors import ImportFormatError


def parse_jsonl(text: str, name: str = "file", **_options) -> Records:
    """Records from NERLab/spaCy/Prodigy JSONL (see the module docstring)."""
    records = Records()
    skipped: list[int] = []
    unit = "line"
    if text.lstrip("\ufeff \t\r\n").startswith("["):  # the same records as one JSON list
        items = load_json(text, name)
        if not isinstance(items, list) or not items:
            fail(name, f"expected a JSON list of records, got {show(items)}.")
        for i, obj in enumerate(items, start=1):
            if not isinstance(obj, dict):
                fail(f"{name}, item {i}", f"expected a JSON object, got {show(obj)}.")
        pairs, unit = list(enumerate(items, start=1)), "item"
    else:
        pairs = json_lines(text, name)
    for lineno, obj in pairs:
        where = f"{name}, {unit} {lineno}"
        answer = get(obj, "answer", str, where)
        if answer in ("reject", "ignore"):
            skipped.append(lineno)
            continue
        records.append(_record(obj, lineno, where, answer))
        records[-1].unit = unit
    if skipped:
        records.notes.append(
            f"{len(skipped)} Prodigy example(s) answered reject or ignore were skipped (lines "
            f"{', '.join(map(str, skipped[:20]))}{', …' if len(skipped) > 20 else ''})."
        )
    if not records and not skipped:
        raise ImportFormatError(f"{name} holds no records.")
    return records


def _record(obj: dict, lineno: int, where: str, answer: str | None) -> SentenceRecord:
    raw_spans = get(obj, "spans", list, where)
    if raw_spans is None:
        _not_another_format(obj, where)
    sentence = get_text(obj, "text", where)
    spans = []
    for i, sp in enumerate(raw_spans or []):
        if not isinstance(sp, dict):
            fail(where, f'"spans"[{i}] must be an object with start, end and label.')
        spans.append(make_span(sp.get("start"), sp.get("end"), sp.get("label"), sentence, where,
                               f'"spans"[{i}]'))
    tokens = None
    raw_tokens = get(obj, "tokens", list, where)
    if raw_tokens:
        tokens = []
        for i, tok in enumerate(raw_tokens):
            if not isinstance(tok, dict):
                fail(where, f'"tokens"[{i}] must be an object with start and end.')
            start = offset(tok.get("start"), where, f'"tokens"[{i}] start')
            end = offset(tok.get("end"), where, f'"tokens"[{i}] end')
            said = tok.get("text")
            if said is not None and (not isinstance(said, str) or
                                     (0 <= start < end <= len(sentence) and sentence[start:end] != said)):
                fail(where, f'"tokens"[{i}] text {str(said)[:30]!r} is not the text at its start-end '
                            f"{start}-{end} ({sentence[max(start, 0):max(end, 0)][:30]!r}).")
            tokens.append((start, end))
        check_tokens(sentence, tokens, spans, where)
    meta = get(obj, "meta", dict, where) or {}
    split = split_name(obj.get("split", meta.get("split")), where)
    labelled = get(obj, "labelled", bool, where)
    if labelled is None:
        labelled = answer == "accept" if answer is not None else raw_spans is not None
    rec = SentenceRecord(
        text=sentence, spans=spans, tokens=tokens, split=split, labelled=labelled, line=lineno,
        annotator=annotator(obj.get("annotator", obj.get("_annotator_id")), where, "annotator"),
        created_at=timestamp(obj.get("created_at"), where, "created_at"),
        updated_at=timestamp(obj.get("updated_at", obj.get("_timestamp")), where, "updated_at"),
    )
    source = get(obj, "split_source", str, where)
    if source in SPLIT_SOURCES:
        rec.split_source = source
    return rec


def _not_another_format(obj: dict, where: str) -> None:
    """A record without ``spans`` that carries another tool's labels would import as a sentence
    with no entities: say which format it is instead."""
    if isinstance(obj.get("label"), list) or isinstance(obj.get("entities"), list):
        fail(where, 'this looks like doccano JSONL (a "label" or "entities" list, no "spans"): '
                    "import it as doccano.")
    if isinstance(obj.get("ner_tags"), list):
        fail(where, 'this looks like Hugging Face rows ("tokens" and "ner_tags"): import it as hf.')
    if isinstance(obj.get("data"), dict):
        fail(where, 'this looks like a Label Studio task (a "data" object): import it as labelstudio.')


def parse_text(text: str, name: str = "file", **_options) -> Records:
    """Plain text, one sentence per line; blank lines ignored; nothing labelled."""
    records = Records(
        SentenceRecord(text=line.strip(), labelled=False, line=lineno)
        for lineno, line in enumerate(lines(text), start=1)
        if line.strip()
    )
    if not records:
        raise ImportFormatError(f"{name} holds no sentences.")
    return records


def to_jsonl(rows: list[ExportRow]) -> str:
    """JSONL in the shape :func:`parse_jsonl` reads: text, spans, tokens (when the sentence has
    its own), split and where it came from, labelled, annotator and times."""
    out = []
    for row in rows:
        obj: dict = {"text": row.text, "spans": [s.to_dict() for s in row.spans]}
        if row.tokens:
            obj["tokens"] = [{"text": row.text[s:e], "start": s, "end": e, "id": i}
                             for i, (s, e) in enumerate(row.tokens)]
        obj.update(split=row.split, split_source=row.split_source, labelled=row.labelled)
        if row.labelled:
            obj["answer"] = "accept"  # what Prodigy's db-in reads as done
        if row.annotator:
            obj["annotator"] = row.annotator
        obj.update(created_at=row.created_at, updated_at=row.updated_at)
        out.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(out) + ("\n" if out else "")
