"""Hugging Face ``datasets``: token-classification data with ``tokens`` and ``ner_tags``.

Reads a ``save_to_disk`` folder (a ``DatasetDict`` or one ``Dataset``; also zipped), parquet
files, and JSON or JSON Lines rows. ``ner_tags`` may be tag strings, or numbers named by the
dataset's ``ClassLabel`` feature or by a tag list the user gives. The splits ``train``,
``validation`` (or ``dev``) and ``test`` map to NERLab's train/dev/test.

The export is a ``DatasetDict`` with ``train`` / ``validation`` / ``test``; besides ``tokens``
and ``ner_tags`` (IOB2, a ``ClassLabel``) it keeps ``text``, ``token_offsets`` (character
offsets), ``spans`` (the character-offset truth), ``labelled``, ``annotator``, ``split_source``
and times, which the importer reads back: NERLab → hf → NERLab is lossless.
"""

from __future__ import annotations

import io as _io
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data.io.common import (
    SPLIT_NAMES,
    ExportRow,
    Records,
    annotator,
    check_tokens,
    decode,
    fail,
    get,
    json_lines,
    load_json,
    locate_tokens,
    make_span,
    offset,
    show,
    split_name,
    timestamp,
)
from core.data.records import SPLIT_SOURCES, SentenceRecord
from core.data.spans import bio_to_spans, spans_to_bio, text_from_tokens
from core.errors import ImportFormatError

_TAG = re.compile(r"^(O|[BIESLU][-_]\S+)$")
#: What a zipped dataset may unpack to, at most (a zip bomb stops here).
MAX_UNZIPPED = 1 << 30
EXPORT_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def tag_list(tags: str | Sequence[str] | None) -> list[str] | None:
    """A tag list given by the user: ``"O,B-PER,I-PER"`` or a list; None if not given."""
    if tags is None:
        return None
    names = [t.strip() for t in (tags.split(",") if isinstance(tags, str) else tags)]
    bad = [t for t in names if not _TAG.match(t)]
    if not names or bad:
        raise ImportFormatError(f"The tag list must be tags like O,B-PER,I-PER; {bad[:3] or 'it is empty'} "
                                "are not.")
    return names


def records_from_rows(rows: Sequence[tuple[str, Any]], name: str, tag_names: list[str] | None,
                      split: str | None = None) -> Records:
    """Records from ``(where, row)`` pairs of a split (``split`` None: each row may say)."""
    records = Records()
    for where, row in rows:
        if not isinstance(row, dict):
            fail(where, f"expected an object with tokens and ner_tags, got {show(row)}.")
        records.append(_record(row, where, tag_names, split))
    return records


def _record(row: dict, where: str, tag_names: list[str] | None, split: str | None) -> SentenceRecord:
    words = get(row, "tokens", list, where)
    tags = get(row, "ner_tags", list, where)
    if words is None or tags is None:
        fail(where, 'needs "tokens" and "ner_tags" lists.')
    if not words:
        fail(where, '"tokens" is empty.')
    if len(words) != len(tags):
        fail(where, f'{len(words)} "tokens" but {len(tags)} "ner_tags".')
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w.strip():
            fail(where, f'"tokens"[{i}] must be a non-empty string, got {show(w)}.')
    names = [_tag(t, i, tag_names, where) for i, t in enumerate(tags)]
    text = get(row, "text", str, where)
    offsets = None
    raw_offsets = get(row, "token_offsets", list, where)
    if text is not None and raw_offsets is not None:
        if len(raw_offsets) != len(words):
            fail(where, f'{len(raw_offsets)} "token_offsets" for {len(words)} tokens.')
        offsets = []
        for i, pair in enumerate(raw_offsets):
            if not isinstance(pair, list) or len(pair) != 2:
                fail(where, f'"token_offsets"[{i}] must be [start, end], got {show(pair)}.')
            offsets.append((offset(pair[0], where, f'"token_offsets"[{i}] start'),
                            offset(pair[1], where, f'"token_offsets"[{i}] end')))
        check_tokens(text, offsets, [], where)
        for i, (s, e) in enumerate(offsets):
            if text[s:e] != words[i]:
                fail(where, f'"tokens"[{i}] {words[i][:30]!r} is not the text at {s}-{e}.')
    elif text is not None and text.strip():
        offsets = locate_tokens(text, words)
    if offsets is None:
        text, offsets = text_from_tokens(words)
    raw_spans = get(row, "spans", list, where)
    if raw_spans is not None:
        spans = []
        for i, sp in enumerate(raw_spans):
            if not isinstance(sp, dict):
                fail(where, f'"spans"[{i}] must be an object with start, end and label.')
            spans.append(make_span(sp.get("start"), sp.get("end"), sp.get("label"), text, where,
                                   f'"spans"[{i}]'))
    else:
        spans = bio_to_spans(offsets, names)
    labelled = get(row, "labelled", bool, where)
    rec = SentenceRecord(
        text=text, spans=spans, tokens=offsets, labelled=True if labelled is None else labelled,
        split=split or split_name(row.get("split"), where),
        annotator=annotator(row.get("annotator"), where, "annotator"),
        created_at=timestamp(row.get("created_at"), where, "created_at"),
        updated_at=timestamp(row.get("updated_at"), where, "updated_at"),
    )
    source = row.get("split_source")
    if source in SPLIT_SOURCES:
        rec.split_source = source
    return rec


def _tag(value: Any, i: int, tag_names: list[str] | None, where: str) -> str:
    if isinstance(value, str):
        tag = value
    elif isinstance(value, int) and not isinstance(value, bool):
        if tag_names is None:
            fail(where, '"ner_tags" are numbers and the dataset does not name them: give the tag '
                        "list (e.g. --tags O,B-PER,I-PER).")
        if not 0 <= value < len(tag_names):
            fail(where, f'"ner_tags"[{i}] is {value}, but there are {len(tag_names)} tags.')
        tag = tag_names[value]
    else:
        fail(where, f'"ner_tags"[{i}] must be a tag or a tag number, got {show(value)}.')
    if not _TAG.match(tag):
        fail(where, f'"ner_tags"[{i}] {tag[:30]!r} is not a BIO tag (O, B-TYPE, I-TYPE...).')
    return tag


def parse_hf_json(text: str, name: str = "file", tags: Any = None, **_options) -> Records:
    """JSON Lines rows, or a JSON list of rows, with ``tokens`` and ``ner_tags``."""
    names = tag_list(tags)
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("["):
        data = load_json(body, name)
        if not isinstance(data, list):
            fail(name, f"expected a list of rows, got {show(data)}.")
        rows = [(f"{name}, row {i}", r) for i, r in enumerate(data, start=1)]
    else:
        rows = [(f"{name}, line {n}", r) for n, r in json_lines(text, name)]
    records = records_from_rows(rows, name, names)
    for rec, (where, _) in zip(records, rows, strict=True):
        rec.unit, number = where.rsplit(", ", 1)[1].split(" ")
        rec.line = int(number)
    return records


# --------------------------------------------------------------------------- datasets and files


def _split_of(path: Path) -> str | None:
    """``validation-00000-of-00001.parquet`` → dev; None when the name says no split."""
    stem = path.name.split(".")[0].lower()
    for word in re.split(r"[-_.]", stem):
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return None


def _class_names(features: Any) -> list[str] | None:
    feature = features.get("ner_tags") if features is not None else None
    inner = getattr(feature, "feature", None)
    return list(inner.names) if getattr(inner, "names", None) else None


def _from_dataset(ds: Any, split: str | None, name: str, tag_names: list[str] | None,
                  key: str = "") -> Records:
    names = tag_names or _class_names(ds.features)
    unit = f"{key} row" if key else "row"
    rows = [(f"{name}, {unit} {i}", r) for i, r in enumerate(ds.to_list(), start=1)]
    records = records_from_rows(rows, name, names, split)
    for i, rec in enumerate(records, start=1):
        rec.line, rec.unit = i, unit
    return records


def _from_parquet(source: Any, split: str | None, name: str, tag_names: list[str] | None) -> Records:
    import datasets
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    names = tag_names or _class_names(datasets.Features.from_arrow_schema(table.schema))
    rows = [(f"{name}, row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]
    records = records_from_rows(rows, name, names, split)
    for i, rec in enumerate(records, start=1):
        rec.line, rec.unit = i, "row"
    return records


def load_hf(path: Path, name: str, tags: Any = None, split: str | None = None) -> Records:
    """Records from a ``save_to_disk`` folder, a folder of split files, a parquet or JSON(L) file,
    or a zip of any of these; every failure is an :class:`ImportFormatError`."""
    tag_names = tag_list(tags)
    try:
        return _load(Path(path), name, tag_names, split)
    except ImportFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zipfile.BadZipFile, RecursionError) as exc:
        raise ImportFormatError(f"{name}: not a readable Hugging Face dataset "
                                f"({type(exc).__name__}: {str(exc)[:200]}).") from None


def _load(path: Path, name: str, tag_names: list[str] | None, split: str | None) -> Records:
    if path.is_dir():
        return _load_dir(path, name, tag_names, split)
    suffix = path.suffix.lower()
    if suffix == ".zip" or zipfile.is_zipfile(path):
        return load_zip(path.read_bytes(), name, tag_names, split)
    if suffix == ".parquet" or path.read_bytes()[:4] == b"PAR1":
        return _from_parquet(str(path), split or _split_of(path), name, tag_names)
    records = parse_hf_json(decode(path.read_bytes(), name), name, tag_names)
    for rec in records:
        rec.split = rec.split or split or _split_of(path)
    return records


def _load_dir(path: Path, name: str, tag_names: list[str] | None, split: str | None) -> Records:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            out, ids = Records(), []
            for key, ds in loaded.items():
                if key.lower() not in SPLIT_NAMES:
                    fail(name, f"split {key!r} is not train, validation (dev) or test.")
                out += _from_dataset(ds, SPLIT_NAMES[key.lower()], name, tag_names, key)
                ids += ds["id"] if "id" in ds.column_names else [None] * len(ds)
            if all(isinstance(i, int) for i in ids):  # NERLab's export: back in project order
                out = Records((r for _, r in sorted(zip(ids, out, strict=True), key=lambda p: p[0])),
                              out.notes)
            return out
        return _from_dataset(loaded, split, name, tag_names)
    inner = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                   (".parquet", ".jsonl", ".json") and not p.name.startswith(".")
                   and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))
    if not files and len(inner) == 1:
        return _load_dir(inner[0], name, tag_names, split)
    if not files:
        fail(name, "holds no save_to_disk dataset, parquet or JSON files.")
    out = Records()
    for file in files:
        part = _load(file, f"{name}/{file.relative_to(path)}", tag_names, split or _split_of(file))
        out += part
        out.notes += part.notes
    return out


def load_zip(data: bytes, name: str, tag_names: list[str] | None = None,
             split: str | None = None) -> Records:
    """A zipped dataset (what NERLab's Hugging Face download is), unpacked with size limits."""
    with zipfile.ZipFile(_io.BytesIO(data)) as zf, tempfile.TemporaryDirectory() as tmp:
        members = zf.infolist()
        if len(members) > 10_000 or sum(m.file_size for m in members) > MAX_UNZIPPED:
            fail(name, "the zip unpacks to too many files or more than 1 GiB.")
        for m in members:
            target = (Path(tmp) / m.filename).resolve()
            if not str(target).startswith(str(Path(tmp).resolve())):
                fail(name, f"the zip holds a path outside its folder ({m.filename[:60]!r}).")
        zf.extractall(tmp)
        return _load_dir(Path(tmp), name, tag_names, split)


def parse_hf_bytes(data: bytes, name: str, tags: Any = None, split: str | None = None) -> Records:
    """An uploaded dataset: a zip, a parquet file, or JSON(L) text."""
    try:
        if data[:4] == b"PK\x03\x04":
            return load_zip(data, name, tag_list(tags), split)
        if data[:4] == b"PAR1":
            import pyarrow as pa

            return _from_parquet(pa.BufferReader(data), split or _split_of(Path(name)), name,
                                 tag_list(tags))
    except ImportFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zipfile.BadZipFile, RecursionError) as exc:
        raise ImportFormatError(f"{name}: not a readable Hugging Face dataset "
                                f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    records = parse_hf_json(decode(data, name), name, tags)
    for rec in records:
        rec.split = rec.split or split or _split_of(Path(name))
    return records


# --------------------------------------------------------------------------------------- export


def to_hf(rows: list[ExportRow], label_names: list[str], folder: str | Path) -> Path:
    """Save a ``DatasetDict`` (``train`` / ``validation`` / ``test``, those that have rows)."""
    import datasets  # heavy: imported only when exporting

    datasets.disable_progress_bars()
    seq = getattr(datasets, "List", None) or datasets.Sequence
    tag_names = ["O"] + [f"{p}-{n}" for n in label_names for p in ("B", "I")]
    for row in rows:
        for span in row.spans:
            if f"B-{span.label}" not in tag_names:
                tag_names += [f"B-{span.label}", f"I-{span.label}"]
    features = datasets.Features({
        "id": datasets.Value("int64"),
        "text": datasets.Value("string"),
        "tokens": seq(datasets.Value("string")),
        "ner_tags": seq(datasets.ClassLabel(names=tag_names)),
        "token_offsets": seq(seq(datasets.Value("int64"))),
        "spans": seq({"start": datasets.Value("int64"), "end": datasets.Value("int64"),
                      "label": datasets.Value("string")}),
        "labelled": datasets.Value("bool"),
        "annotator": datasets.Value("string"),
        "split_source": datasets.Value("string"),
        "created_at": datasets.Value("string"),
        "updated_at": datasets.Value("string"),
    })
    by_split: dict[str, dict[str, list]] = {}
    for row in rows:
        offsets = row.token_offsets()
        cols = by_split.setdefault(EXPORT_SPLITS[row.split], {k: [] for k in features})
        cols["id"].append(row.id)
        cols["text"].append(row.text)
        cols["tokens"].append([row.text[s:e] for s, e in offsets])
        cols["ner_tags"].append([tag_names.index(t) for t in spans_to_bio(offsets, row.spans)])
        cols["token_offsets"].append([[s, e] for s, e in offsets])
        cols["spans"].append([s.to_dict() for s in row.spans])
        cols["labelled"].append(row.labelled)
        cols["annotator"].append(row.annotator)
        cols["split_source"].append(row.split_source)
        cols["created_at"].append(row.created_at)
        cols["updated_at"].append(row.updated_at)
    order = [s for s in EXPORT_SPLITS.values() if s in by_split]
    dd = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(by_split[split], features=features) for split in order}
    )
    folder = Path(folder)
    dd.save_to_disk(str(folder))
    return folder
