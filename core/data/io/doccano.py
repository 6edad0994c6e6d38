"""doccano's sequence-labelling JSONL.

``{"text", "label": [[start, end, type], ...]}`` (doccano's import and its classic export), or
the newer export's ``"entities": [{"start_offset", "end_offset", "label"}]``. doccano keeps any
other key as metadata and writes it back on export, so NERLab's own export adds ``split``,
``labelled``, ``annotator`` and times as keys, and reading them back keeps a round trip through
doccano lossless. doccano exports every example, done or not, with a ``label`` list: without a
``labelled`` key a record with a ``label`` or ``entities`` list counts as labelled.
"""

from __future__ import annotations

import json

from core.data.io.common import (
    ExportRow,
    Records,
    annotator,
    fail,
    get,
    get_text,
    json_lines,
    make_span,
    show,
    split_name,
    timestamp,
)
from core.data.records import SPLIT_SOURCES, SentenceRecord


def parse_doccano(text: str, name: str = "file", **_options) -> Records:
    records = Records()
    for lineno, obj in json_lines(text, name):
        where = f"{name}, line {lineno}"
        sentence = get_text(obj, "text", where)
        spans = []
        key = "label" if "label" in obj else "labels"
        raw = get(obj, key, list, where, "a list of [start, end, type]")
        for i, item in enumerate(raw or []):
            if not isinstance(item, list) or len(item) != 3:
                fail(where, f'each label must be [start, end, type], got {show(item)} ("{key}"[{i}]).')
            spans.append(make_span(item[0], item[1], item[2], sentence, where, f'"{key}"[{i}]',
                                   ("[0] (start)", "[1] (end)", "[2] (type)")))
        entities = get(obj, "entities", list, where)
        for i, ent in enumerate(entities or []):
            if not isinstance(ent, dict):
                fail(where, f'"entities"[{i}] must be an object with start_offset, end_offset, label.')
            spans.append(make_span(ent.get("start_offset"), ent.get("end_offset"), ent.get("label"),
                                   sentence, where, f'"entities"[{i}]',
                                   ("start_offset", "end_offset", "label")))
        labelled = get(obj, "labelled", bool, where)
        if labelled is None:
            labelled = raw is not None or entities is not None
        rec = SentenceRecord(
            text=sentence, spans=spans, labelled=labelled, line=lineno,
            split=split_name(obj.get("split"), where),
            annotator=annotator(obj.get("annotator"), where, "annotator"),
            created_at=timestamp(obj.get("created_at"), where, "created_at"),
            updated_at=timestamp(obj.get("updated_at"), where, "updated_at"),
        )
        if obj.get("split_source") in SPLIT_SOURCES:
            rec.split_source = obj["split_source"]
        records.append(rec)
    return records


def to_doccano(rows: list[ExportRow]) -> str:
    """doccano JSONL: ``text`` and ``label`` triples, plus NERLab's fields as metadata keys."""
    out = []
    for row in rows:
        obj = {"text": row.text, "label": [[s.start, s.end, s.label] for s in row.spans],
               "split": row.split, "split_source": row.split_source, "labelled": row.labelled}
        if row.annotator:
            obj["annotator"] = row.annotator
        obj.update(created_at=row.created_at, updated_at=row.updated_at)
        out.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(out) + ("\n" if out else "")
