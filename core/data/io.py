"""Import and export of labelled sentences.

Importers parse the whole file first and write nothing unless every line is valid; errors name
the line and the problem. Formats in: CoNLL/BIO (IOB1, IOB2, IOBES), JSONL with character spans
(the spaCy/Prodigy shape), plain text, Label Studio JSON, doccano JSONL. Formats out: CoNLL (IOB2),
JSONL, and a Hugging Face ``datasets`` folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from core.data import io, projects
from core.data.db import get_db
from core.data.projects import AddResult, SentenceRecord
from core.data.spans import Example, Span, bio_to_spans, spans_to_bio, text_from_tokens
from core.errors import ImportFormatError, NerlabError

IMPORT_FORMATS = ("conll", "jsonl", "text", "labelstudio", "doccano")


EXPORT_FORMATS = ("conll", "jsonl", "hf")


def decode(data: bytes, name: str = "file") -> str:
    """Decode UTF-8 (with or without BOM); a clear error names the line of a bad byte."""
    if not data.strip():
        raise ImportFormatError(f"{name} is empty.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFormatError(
            f"{name}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}). Save the file as UTF-8 and import it again."
        ) from None


def parse_conll(text: str, name: str = "file") -> list[SentenceRecord]:
    """CoNLL/BIO: a token and its tag per line (tag in the last column, tab or space separated),
    a blank line between sentences, ``-DOCSTART-`` lines ignored."""
    records: list[SentenceRecord] = []
    words: list[str] = []
    tags: list[str] = []
    first_line = 0

    def flush() -> None:
        if not words:
            return
        sentence, offsets = text_from_tokens(words)
        try:
            spans = bio_to_spans(offsets, tags)
        except ValueError as exc:  # pragma: no cover - tags are checked line by line below
            raise ImportFormatError(f"{name}, line {first_line}: {exc}") from None
        records.append(
            SentenceRecord(text=sentence, spans=spans, tokens=offsets, labelled=True, line=first_line)
        )
        words.clear()
        tags.clear()

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p for p in (q.strip() for q in parts) if p]
        if len(parts) < 2:
            raise ImportFormatError(
                f"{name}, line {lineno}: expected a token and a tag separated by a tab or space, "
                f"got {raw!r}."
            )
        token, tag = parts[0], parts[-1]
        if " " in token:
            raise ImportFormatError(f"{name}, line {lineno}: token {token!r} contains a space.")
        if tag != "O":
            if len(tag) < 3 or tag[0] not in "BIESLU" or tag[1] not in "-_":
                raise ImportFormatError(
                    f"{name}, line {lineno}: unknown tag {tag!r} (expected O, or B-/I-/E-/S- "
                    "followed by an entity type)."
                )
        if not words:
            first_line = lineno
        words.append(token)
        tags.append(tag)
    flush()
    if not records:
        raise ImportFormatError(f"{name} holds no sentences.")
    return records


def _json_lines(text: str, name: str) -> list[tuple[int, dict]]:
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"{name}, line {lineno}: not valid JSON ({exc.msg}).") from None
        if not isinstance(obj, dict):
            raise ImportFormatError(f"{name}, line {lineno}: expected a JSON object, got {type(obj).__name__}.")
        out.append((lineno, obj))
    if not out:
        raise ImportFormatError(f"{name} holds no records.")
    return out


def _text_field(obj: dict, lineno: int, name: str) -> str:
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ImportFormatError(f"{name}, line {lineno}: missing or empty \"text\".")
    return text


def _span(start, end, label, text: str, where: str) -> Span:
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
        raise ImportFormatError(f"{where}: span offsets must be integers, got {start!r}, {end!r}.")
    if not isinstance(label, str) or not label.strip():
        raise ImportFormatError(f"{where}: span {start}-{end} has no label.")
    if start < 0 or end > len(text) or end <= start:
        raise ImportFormatError(
            f"{where}: span {start}-{end} ({label}) is out of range for a text of {len(text)} characters."
        )
    return Span(start, end, label.strip())


def parse_jsonl(text: str, name: str = "file") -> list[SentenceRecord]:
    """JSONL, one ``{"text", "spans": [{"start", "end", "label"}]}`` per line (spaCy/Prodigy).

    Optional: ``"tokens"`` (Prodigy's ``[{"start", "end"}]``), ``"split"`` (or ``meta.split``),
    ``"answer"`` (Prodigy; ``reject``/``ignore`` lines are skipped).
    """
    records = []
    for lineno, obj in _json_lines(text, name):
        if obj.get("answer") in ("reject", "ignore"):
            continue
        sentence = _text_field(obj, lineno, name)
        where = f"{name}, line {lineno}"
        raw_spans = obj.get("spans")
        if raw_spans is not None and not isinstance(raw_spans, list):
            raise ImportFormatError(f"{where}: \"spans\" must be a list.")
        spans = []
        for sp in raw_spans or []:
            if not isinstance(sp, dict):
                raise ImportFormatError(f"{where}: each span must be an object with start, end, label.")
            spans.append(_span(sp.get("start"), sp.get("end"), sp.get("label"), sentence, where))
        tokens = None
        if isinstance(obj.get("tokens"), list) and obj["tokens"]:
            try:
                tokens = [(int(t["start"]), int(t["end"])) for t in obj["tokens"]]
            except (KeyError, TypeError, ValueError):
                raise ImportFormatError(f"{where}: \"tokens\" must be objects with start and end.") from None
        split = obj.get("split") or (obj.get("meta") or {}).get("split")
        labelled = obj.get("labelled")
        if labelled is None:
            labelled = raw_spans is not None
        records.append(
            SentenceRecord(text=sentence, spans=spans, tokens=tokens, split=split,
                           labelled=bool(labelled), line=lineno)
        )
    return records


def parse_text(text: str, name: str = "file") -> list[SentenceRecord]:
    """Plain text, one sentence per line; blank lines ignored; nothing labelled."""
    records = [
        SentenceRecord(text=line.strip(), labelled=False, line=lineno)
        for lineno, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not records:
        raise ImportFormatError(f"{name} holds no sentences.")
    return records


def parse_labelstudio(text: str, name: str = "file") -> list[SentenceRecord]:
    """Label Studio's JSON export: a list of tasks with ``data.text`` and ``annotations[].result``.

    The first annotation that is not cancelled is used; tasks without one are imported unlabelled.
    """
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{name}, line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks:
        raise ImportFormatError(f"{name}: expected a JSON list of Label Studio tasks.")
    records = []
    for i, task in enumerate(tasks, start=1):
        where = f"{name}, task {i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ImportFormatError(f"{where}: expected an object with \"data\".")
        data = task["data"]
        sentence = data.get("text")
        if not isinstance(sentence, str):
            sentence = next((v for v in data.values() if isinstance(v, str) and v.strip()), None)
        if not sentence or not sentence.strip():
            raise ImportFormatError(f"{where}: no text in \"data\".")
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        spans = []
        if annotations:
            for res in annotations[0].get("result") or []:
                value = res.get("value") or {}
                if "start" not in value or "labels" not in value:
                    continue  # relations, choices and other non-span results
                for label in value["labels"]:
                    spans.append(_span(value.get("start"), value.get("end"), label, sentence, where))
        records.append(
            SentenceRecord(text=sentence, spans=spans, labelled=bool(annotations), line=i)
        )
    return records


def parse_doccano(text: str, name: str = "file") -> list[SentenceRecord]:
    """doccano's sequence-labelling JSONL: ``{"text", "label": [[start, end, type], ...]}``,
    or the newer ``"entities": [{"start_offset", "end_offset", "label"}]``."""
    records = []
    for lineno, obj in _json_lines(text, name):
        sentence = _text_field(obj, lineno, name)
        where = f"{name}, line {lineno}"
        spans = []
        raw = obj.get("label", obj.get("labels"))
        if raw is not None:
            if not isinstance(raw, list):
                raise ImportFormatError(f"{where}: \"label\" must be a list of [start, end, type].")
            for item in raw:
                if not isinstance(item, list) or len(item) != 3:
                    raise ImportFormatError(f"{where}: each label must be [start, end, type], got {item!r}.")
                spans.append(_span(item[0], item[1], item[2], sentence, where))
        for ent in obj.get("entities") or []:
            spans.append(
                _span(ent.get("start_offset"), ent.get("end_offset"), ent.get("label"), sentence, where)
            )
        labelled = raw is not None or "entities" in obj
        records.append(SentenceRecord(text=sentence, spans=spans, labelled=labelled, line=lineno))
    return records


PARSERS: dict[str, Callable[[str, str], list[SentenceRecord]]] = {
    "conll": parse_conll,
    "jsonl": parse_jsonl,
    "text": parse_text,
    "labelstudio": parse_labelstudio,
    "doccano": parse_doccano,
}


def guess_format(filename: str) -> str | None:
    """A format from the file name, when it is unambiguous."""
    suffix = Path(filename).suffix.lower()
    return {".conll": "conll", ".tsv": "conll", ".bio": "conll", ".iob": "conll",
            ".txt": "text", ".jsonl": "jsonl", ".json": "labelstudio"}.get(suffix)


def import_bytes(
    db: Database,
    project_id: int,
    data: bytes,
    fmt: str,
    name: str = "file",
    split: str | None = None,
    allow_new_labels: bool | None = None,
) -> AddResult:
    """Parse and add a file's content in one transaction; a bad file writes nothing."""
    if fmt not in PARSERS:
        raise ImportFormatError(f"Unknown import format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}.")
    records = PARSERS[fmt](decode(data, name), name)
    for rec in records:
        rec.source = name
    try:
        return projects.add_sentences(db, project_id, records, split=split,
                                      allow_new_labels=allow_new_labels)
    except NerlabError as exc:
        raise ImportFormatError(f"{name}, {exc}" if str(exc).startswith("line ") else f"{name}: {exc}") from None


def import_file(db: Database, project_id: int, path: str | Path, fmt: str | None = None, **kwargs) -> AddResult:
    path = Path(path)
    if not path.is_file():
        raise NerlabError(f"No file {str(path)!r}.")
    fmt = fmt or guess_format(path.name)
    if fmt is None:
        raise NerlabError(f"Cannot tell the format of {path.name!r}; give it with --format.")
    return import_bytes(db, project_id, path.read_bytes(), fmt, name=path.name, **kwargs)


def _token_texts(ex: Example) -> tuple[list[str], list[str]]:
    offsets = ex.token_offsets()
    return [ex.text[s:e] for s, e in offsets], spans_to_bio(offsets, ex.spans)


def to_conll(examples: list[Example]) -> str:
    """CoNLL with IOB2 tags: ``token<TAB>tag`` lines, a blank line after each sentence."""
    blocks = []
    for ex in examples:
        words, tags = _token_texts(ex)
        blocks.append("".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)) + "\n")
    return "".join(blocks)


def to_jsonl(examples: list[Example]) -> str:
    """JSONL in the shape :func:`parse_jsonl` reads, tokens and split included."""
    lines = []
    for ex in examples:
        obj = {
            "text": ex.text,
            "spans": [s.to_dict() for s in ex.spans],
            "split": ex.split,
        }
        if ex.tokens:
            obj["tokens"] = [
                {"text": ex.text[s:e], "start": s, "end": e, "id": i} for i, (s, e) in enumerate(ex.tokens)
            ]
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(lines) + ("\n" if lines else "")


def to_hf(examples: list[Example], label_names: list[str], folder: str | Path) -> Path:
    """Save a ``datasets.DatasetDict`` (one dataset per split) with ``tokens`` and ``ner_tags``."""
    import datasets  # heavy: imported only when exporting

    tag_names = ["O"] + [f"{p}-{n}" for n in label_names for p in ("B", "I")]
    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=tag_names)),
        }
    )
    by_split: dict[str, dict[str, list]] = {}
    for ex in examples:
        words, tags = _token_texts(ex)
        cols = by_split.setdefault(ex.split, {"id": [], "tokens": [], "ner_tags": []})
        cols["id"].append(ex.id)
        cols["tokens"].append(words)
        cols["ner_tags"].append([tag_names.index(t) for t in tags])
    dd = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(cols, features=features) for split, cols in by_split.items()}
    )
    folder = Path(folder)
    dd.save_to_disk(str(folder))
    return folder


def export(
    db: Database,
    project_id: int,
    fmt: str,
    split: str | None = None,
    include_unlabelled: bool = False,
    path: str | Path | None = None,
) -> str | Path:
    """Export a project's sentences; CoNLL/JSONL return text (and write it to ``path`` if given),
    ``hf`` writes a ``save_to_disk`` folder at ``path``."""
    exs = projects.examples(db, project_id, split=split, labelled_only=not include_unlabelled)
    if fmt == "conll":
        out = to_conll(exs)
    elif fmt == "jsonl":
        out = to_jsonl(exs)
    elif fmt == "hf":
        if path is None:
            raise NerlabError("The Hugging Face export needs a folder to write to.")
        names = [row["name"] for row in projects.list_labels(db, project_id)]
        return to_hf(exs, names, path)
    else:
        raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    if path is not None:
        Path(path).write_text(out, encoding="utf-8")
    return out


def export_filename(project_name: str, fmt: str, split: str | None) -> str:
    """A safe download name, e.g. ``BC5CDR_demo-test.conll`` or ``BC5CDR_demo-hf.zip``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", project_name).strip("_") or "project"
    stem += f"-{split}" if split else ""
    return stem + ("-hf.zip" if fmt == "hf" else f".{fmt}")


def export_file(
    db: Database, project_id: int, fmt: str, split: str | None, include_unlabelled: bool
) -> tuple[bytes, str, str]:
    """A project's export as ``(content, file name, MIME type)`` for a browser download.

    CoNLL and JSONL are text files; the Hugging Face ``datasets`` folder is zipped.
    """
    import io as _io
    import tempfile
    import zipfile
    from pathlib import Path

    file_name = export_filename(projects.get_project(db, project_id)["name"], fmt, split)
    if fmt in ("conll", "jsonl"):
        text = io.export(db, project_id, fmt, split=split, include_unlabelled=include_unlabelled)
        mime = "text/plain" if fmt == "conll" else "application/jsonl"
        return str(text).encode("utf-8"), file_name, mime
    if fmt == "hf":
        stem = file_name.removesuffix("-hf.zip")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / stem
            io.export(db, project_id, "hf", split=split, include_unlabelled=include_unlabelled, path=folder)
            buffer = _io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for file in sorted(folder.rglob("*")):
                    if file.is_file():
                        zf.write(file, file.relative_to(Path(tmp)))
            return buffer.getvalue(), file_name, "application/zip"
    raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(io.EXPORT_FORMATS)}.")


def deferred_export(
    project_id: int, fmt: str, split: str | None, include_unlabelled: bool
) -> Callable[[], bytes]:
    """A no-argument function building the export when called (Streamlit's lazy download).

    It opens its own connection: the download runs in another thread than the page.
    """
    def build() -> bytes:
        return export_file(get_db(), project_id, fmt, split, include_unlabelled)[0]

    return build
