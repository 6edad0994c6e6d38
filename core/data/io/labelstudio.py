"""Label Studio: its JSON export (tasks with ``data`` and ``annotations``), its JSON-MIN export
(one flat object per annotation), and NERLab's export to Label Studio JSON.

The sentence is the ``data`` field that the labelling config's ``<Text value="$field">`` names
(give the config or the field name), else ``text``; a task without it is an error, never another
field read as the sentence. Of several annotations the one marked ``ground_truth`` is taken, else
the first that was not cancelled, and the report says which annotator's was taken. A labelled
region without character offsets cannot be placed: its task is imported as not done (with the
spans that could be placed as a draft) and the report lists it. Offsets counted in UTF-16 code
units (as a browser counts) are converted when the region's text shows that they are.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from core.data.io.common import (
    ExportRow,
    Records,
    annotator,
    fail,
    get,
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
from core.data.spans import Span

#: The model version under which the export stores a not-done sentence's draft spans.
DRAFT = "nerlab draft"
_MIN_META = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
             "split", "nerlab"}


def config_text_field(label_config: str | None) -> str | None:
    """The data field a labelling config's ``<Text ... value="$field"/>`` reads."""
    if not label_config:
        return None
    m = re.search(r'<Text\b[^>]*?\bvalue\s*=\s*["\']\$([\w.-]+)["\']', label_config)
    return m.group(1) if m else None


def labelstudio_config(labels: list[str]) -> str:
    """A labelling config matching NERLab's export (``label`` regions on ``text``)."""
    items = "".join(f'    <Label value="{html.escape(n, quote=True)}"/>\n' for n in labels)
    return (f'<View>\n  <Labels name="label" toName="text">\n{items}  </Labels>\n'
            '  <Text name="text" value="$text"/>\n</View>\n')


def _tasks(text: str, name: str) -> list:
    body = text.lstrip("\ufeff \t\r\n")
    nonblank = [ln for ln in lines(body) if ln.strip()]
    if body.startswith("{") and len(nonblank) > 1:
        try:
            first = json.loads(nonblank[0])
        except (ValueError, RecursionError):
            first = None
        if isinstance(first, dict):  # tasks one per line
            return [obj for _, obj in json_lines(text, name)]
    tasks = load_json(body, name)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks:
        fail(name, f"expected a JSON list of Label Studio tasks, got {show(tasks)}.")
    return tasks


def parse_labelstudio(text: str, name: str = "file", text_field: str | None = None,
                      label_config: str | None = None, **_options) -> Records:
    """Label Studio JSON or JSON-MIN tasks (told apart by their shape)."""
    field = text_field or config_text_field(label_config)
    tasks = _tasks(text, name)
    for i, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            fail(f"{name}, task {i}", f"expected an object, got {show(task)}.")
    full = any("data" in t or "annotations" in t or "completions" in t for t in tasks)
    records = Records()
    report = _Report()
    if full:
        for i, task in enumerate(tasks, start=1):
            records.append(_full_task(task, i, name, field, report))
    else:
        for i, rows in _groups(tasks):
            records.append(_min_task(rows, i, name, field, report))
    records.notes += report.notes()
    return records


class _Report:
    def __init__(self) -> None:
        self.no_offsets: list[tuple[int, int]] = []  # (task, regions)
        self.taken: list[str] = []

    def notes(self) -> list[str]:
        out = []
        if self.no_offsets:
            tasks = ", ".join(str(t) for t, _ in self.no_offsets[:20])
            out.append(
                f"{sum(n for _, n in self.no_offsets)} labelled region(s) in "
                f"{len(self.no_offsets)} task(s) have no character offsets and were not imported "
                f"(tasks {tasks}{', …' if len(self.no_offsets) > 20 else ''}); those tasks are "
                "imported as not done, with the spans that could be placed, to finish on the "
                "Label page."
            )
        if self.taken:
            out.append(f"{len(self.taken)} task(s) have several annotations and none marked "
                       "ground truth; the first was taken: " + "; ".join(self.taken[:20])
                       + ("; …" if len(self.taken) > 20 else "") + ".")
        return out


def _text(data: dict, field: str | None, where: str) -> str:
    key = field or "text"
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        keys = ", ".join(sorted(str(k) for k in data)[:10]) or "none"
        fail(where, f'no text in the "{key}" field (fields: {keys}); name the field that holds the '
                    "sentence (the labelling config's <Text value=\"$field\">) with --text-field.")
    return value


def _full_task(task: dict, i: int, name: str, field: str | None, report: _Report) -> SentenceRecord:
    where = f"{name}, task {i}"
    data = get(task, "data", dict, where)
    if data is None:
        fail(where, 'missing the "data" object.')
    sentence = _text(data, field, where)
    key = "annotations" if "annotations" in task else "completions"
    anns = get(task, key, list, where) or []
    valid = []
    for j, ann in enumerate(anns):
        if not isinstance(ann, dict):
            fail(where, f'"{key}"[{j}] must be an object, got {show(ann)}.')
        if not get(ann, "was_cancelled", bool, f"{where}, annotation {j + 1}"):
            valid.append((j, ann))
    truth = [(j, a) for j, a in valid if get(a, "ground_truth", bool, f"{where}, annotation {j + 1}")]
    pick = truth[0] if truth else valid[0] if valid else None
    rec = SentenceRecord(text=sentence, labelled=pick is not None, line=i, unit="task",
                         split=split_name(data.get("split"), where, "data.split"))
    _nerlab(rec, data, where)
    if pick is not None:
        j, ann = pick
        w = f"{where}, annotation {j + 1}"
        who = annotator(ann.get("completed_by"), w, "completed_by")
        rec.annotator = who or rec.annotator
        if len(valid) > 1 and not truth:
            report.taken.append(f"task {i}: annotation 1 of {len(valid)}"
                                + (f" (annotator {who})" if who else ""))
        rec.spans, missing = _regions(get(ann, "result", list, w) or [], sentence, where,
                                      f"annotation {j + 1}, ")
        rec.created_at = timestamp(ann.get("created_at"), w, "created_at") or rec.created_at
        rec.updated_at = timestamp(ann.get("updated_at"), w, "updated_at") or rec.updated_at
    else:
        missing = 0
        for j, pred in enumerate(get(task, "predictions", list, where) or []):
            if isinstance(pred, dict) and pred.get("model_version") == DRAFT:
                rec.spans, missing = _regions(get(pred, "result", list, where) or [], sentence,
                                              where, f"prediction {j + 1}, ")
    if missing:
        report.no_offsets.append((i, missing))
        rec.labelled = False
    return rec


def _nerlab(rec: SentenceRecord, data: dict, where: str) -> None:
    """What NERLab's own export keeps in ``data.nerlab``: annotator, split source, times."""
    meta = get(data, "nerlab", dict, where) or {}
    rec.annotator = annotator(meta.get("annotator"), where, "nerlab.annotator")
    rec.created_at = timestamp(meta.get("created_at"), where, "nerlab.created_at")
    rec.updated_at = timestamp(meta.get("updated_at"), where, "nerlab.updated_at")
    if meta.get("split_source") in SPLIT_SOURCES:
        rec.split_source = meta["split_source"]


def _regions(results: list, sentence: str, where: str, ctx: str) -> tuple[list[Span], int]:
    """Spans from an annotation's ``result``; also how many labelled regions had no offsets.
    ``ctx`` (e.g. ``annotation 2, ``) says where in the task, after the message."""
    spans, missing = [], 0
    for k, res in enumerate(results):
        what = f'{ctx}"result"[{k}]'
        if not isinstance(res, dict):
            fail(where, f"{what} must be an object, got {show(res)}.")
        value = res.get("value")
        if value is None:
            continue  # a relation
        if not isinstance(value, dict):
            fail(where, f"{what}.value must be an object, got {show(value)}.")
        labels = value.get("labels")
        if labels is None:
            continue  # choices, text areas and other results that are not spans
        placed = _region(value, labels, sentence, where, what)
        if placed is None:
            missing += 1
        else:
            spans += placed
    return spans, missing


def _region(value: dict, labels: Any, sentence: str, where: str, what: str) -> list[Span] | None:
    """The spans of one labelled region; None when it has no character offsets."""
    if not isinstance(labels, list):
        fail(where, f"{what}.value.labels must be a list of entity types, got {show(labels)}.")
    if value.get("start") is None or value.get("end") is None:
        return None
    start = offset(value.get("start"), where, f"{what}.value.start")
    end = offset(value.get("end"), where, f"{what}.value.end")
    said = value.get("text")
    if isinstance(said, str) and sentence[max(start, 0):max(end, 0)] != said:
        fixed = _from_utf16(sentence, start), _from_utf16(sentence, end)
        if None not in fixed and sentence[fixed[0]:fixed[1]] == said:
            start, end = fixed
        else:
            fail(where, f"the region says {said[:30]!r} but the text at {start}-{end} is "
                        f"{sentence[max(start, 0):max(end, 0)][:30]!r}: its start or end is wrong "
                        f"({what}.value).")
    return [make_span(start, end, label, sentence, where, what) for label in labels]


def _from_utf16(text: str, units: int) -> int | None:
    """The character offset at ``units`` UTF-16 code units into ``text`` (None if inside a pair)."""
    count = 0
    for i, ch in enumerate(text):
        if count == units:
            return i
        count += 2 if ord(ch) > 0xFFFF else 1
        if count > units:
            return None
    return len(text) if count == units else None


def _groups(tasks: list[dict]) -> list[tuple[int, list[dict]]]:
    """JSON-MIN rows grouped by task id (one row per annotation), in file order."""
    groups: dict[Any, tuple[int, list[dict]]] = {}
    for i, row in enumerate(tasks, start=1):
        key = row.get("id")
        if isinstance(key, bool) or not isinstance(key, int | str):
            key = ("row", i)  # no usable id: a task of its own
        groups.setdefault(key, (i, []))[1].append(row)
    return list(groups.values())


def _min_task(rows: list[dict], i: int, name: str, field: str | None, report: _Report) -> SentenceRecord:
    where = f"{name}, task {i}"
    row = rows[0]
    if isinstance(row.get("spans"), list):
        fail(where, 'this looks like a NERLab / spaCy record ("spans"), not a Label Studio task: '
                    "import it as jsonl.")
    sentence = _text(row, field, where)
    spans, missing, found = [], 0, False
    for key, value in row.items():
        if key in _MIN_META or key == (field or "text") or not isinstance(value, list):
            continue
        if not value or not all(isinstance(v, dict) for v in value):
            continue
        if not any("labels" in v for v in value):
            continue
        found = True
        for k, region in enumerate(value):
            if "labels" not in region:
                continue
            placed = _region(region, region["labels"], sentence, where, f'"{key}"[{k}]')
            if placed is None:
                missing += 1
            else:
                spans += placed
    labelled = found or "annotation_id" in row or "annotator" in row
    rec = SentenceRecord(text=sentence, spans=spans, labelled=labelled and not missing, line=i,
                         unit="task",
                         split=split_name(row.get("split"), where))
    _nerlab(rec, row, where)
    rec.annotator = annotator(row.get("annotator"), where, "annotator") or rec.annotator
    rec.created_at = timestamp(row.get("created_at"), where, "created_at") or rec.created_at
    rec.updated_at = timestamp(row.get("updated_at"), where, "updated_at") or rec.updated_at
    if len(rows) > 1:
        report.taken.append(f"task {i}: the first of {len(rows)} rows"
                            + (f" (annotator {rec.annotator})" if rec.annotator else ""))
    if missing:
        report.no_offsets.append((i, missing))
    return rec


def _result(spans: list[Span], text: str, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{k}", "from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": s.start, "end": s.end, "text": text[s.start:s.end], "labels": [s.label]}}
            for k, s in enumerate(spans)]


def to_labelstudio(rows: list[ExportRow], predictions: dict[int, list[Span]] | None = None,
                   model_version: str = "") -> str:
    """Label Studio JSON tasks: a done sentence has one annotation; a run's predictions (when
    given) are pre-annotations; a not-done sentence's draft spans are a prediction named
    ``nerlab draft``. Pair it with :func:`labelstudio_config`."""
    tasks = []
    for row in rows:
        data = {"text": row.text, "split": row.split,
                "nerlab": {"id": row.id, "split_source": row.split_source, "labelled": row.labelled,
                           "annotator": row.annotator, "created_at": row.created_at,
                           "updated_at": row.updated_at}}
        task: dict = {"data": data, "annotations": [], "predictions": []}
        if row.labelled:
            task["annotations"].append({
                "result": _result(row.spans, row.text, f"n{row.id}-"), "ground_truth": False,
                "was_cancelled": False, "created_at": row.created_at, "updated_at": row.updated_at,
            })
        elif row.spans:
            task["predictions"].append({"model_version": DRAFT,
                                        "result": _result(row.spans, row.text, f"d{row.id}-")})
        if predictions is not None and row.id in predictions:
            task["predictions"].append({"model_version": model_version,
                                        "result": _result(predictions[row.id], row.text, f"p{row.id}-")})
        tasks.append(task)
    if not tasks:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in tasks) + "\n]\n"

