"""Import into a project and export out of it, in any format of the registry.

An import parses the whole file first and writes nothing unless every record is valid; the
write is one transaction. Any input ends as records or as an :class:`ImportFormatError` that
names the file, the line (task, row) and the field.
"""

from __future__ import annotations

import io as _io
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from core.data import projects
from core.data.db import get_db
from core.data.io import conll, doccano, hf, jsonl, labelstudio, spacy_docbin
from core.data.io.common import Records, decode, export_rows, run_predictions
from core.data.io.detect import detect
from core.data.io.registry import EXPORT_FORMATS, FORMATS, IMPORT_FORMATS
from core.data.records import AddResult
from core.errors import ImportFormatError, NerlabError

PARSERS: dict[str, Callable[..., Records]] = {
    "conll": conll.parse_conll,
    "jsonl": jsonl.parse_jsonl,
    "text": jsonl.parse_text,
    "labelstudio": labelstudio.parse_labelstudio,
    "doccano": doccano.parse_doccano,
}


def parse_bytes(data: bytes, fmt: str | None, name: str = "file", **options) -> tuple[str, Records]:
    """``(format, records)`` of a file's content; ``fmt`` None or ``"auto"`` reads the format
    from the content. Never raises anything but :class:`NerlabError` (ImportFormatError)."""
    if fmt in (None, "auto"):
        fmt = detect(data, name)[0]
    if fmt not in IMPORT_FORMATS:
        raise ImportFormatError(f"Unknown import format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}.")
    try:
        if fmt == "hf":
            records = hf.parse_hf_bytes(data, name, tags=options.get("tags"))
        elif fmt == "spacy":
            records = spacy_docbin.parse_spacy_bytes(data, name)
        else:
            records = PARSERS[fmt](decode(data, name), name, **options)
    except NerlabError:
        raise
    except RecursionError:
        raise ImportFormatError(f"{name}: nested too deeply to read.") from None
    except Exception as exc:  # noqa: BLE001 - the promise: never a traceback for a file
        raise ImportFormatError(
            f"{name}: could not be read as {fmt} ({type(exc).__name__}: {str(exc)[:200]}). This "
            "file found a gap in NERLab's reader: please report it with the file."
        ) from None
    return fmt, records


def import_records(db: Database, project_id: int, records: Records, fmt: str, name: str,
                   split: str | None = None, allow_new_labels: bool | None = None,
                   update: bool = False, as_annotator: str | None = None) -> AddResult:
    """Add parsed records; ``as_annotator``: the file holds that person's annotations (see
    :func:`core.data.projects.add_sentences`)."""
    for rec in records:
        rec.source = name
    try:
        result = projects.add_sentences(db, project_id, records, split=split,
                                        allow_new_labels=allow_new_labels, update=update,
                                        as_annotator=as_annotator)
    except NerlabError as exc:
        msg = str(exc)
        placed = re.match(r"^[\w-]*\s?(line|task|row|doc) \d+: ", msg)
        raise ImportFormatError(f"{name}, {msg}" if placed else f"{name}: {msg}") from None
    result.notes = list(records.notes) + result.notes
    result.format = fmt
    return result


def import_bytes(
    db: Database,
    project_id: int,
    data: bytes,
    fmt: str | None = None,
    name: str = "file",
    split: str | None = None,
    allow_new_labels: bool | None = None,
    update: bool = False,
    as_annotator: str | None = None,
    **options,
) -> AddResult:
    """Parse and add a file's content in one transaction; a bad file writes nothing.

    ``options``: ``text_field`` / ``label_config`` (Label Studio), ``tags`` (Hugging Face tag
    names for numeric ``ner_tags``).
    """
    fmt, records = parse_bytes(data, fmt, name, **options)
    return import_records(db, project_id, records, fmt, name, split, allow_new_labels, update,
                          as_annotator)


def import_file(db: Database, project_id: int, path: str | Path, fmt: str | None = None,
                **kwargs) -> AddResult:
    """Import a file (or a Hugging Face ``save_to_disk`` folder)."""
    path = Path(path)
    if path.is_dir():
        if fmt not in (None, "auto", "hf"):
            raise NerlabError(f"{path.name} is a folder: only a Hugging Face dataset folder (hf) can be "
                              "imported from a folder.")
        records = hf.load_hf(path, path.name, tags=kwargs.pop("tags", None))
        kwargs = {k: v for k, v in kwargs.items() if k in ("split", "allow_new_labels", "update",
                                                           "as_annotator")}
        return import_records(db, project_id, records, "hf", path.name, **kwargs)
    if not path.is_file():
        raise NerlabError(f"No file {str(path)!r}.")
    return import_bytes(db, project_id, path.read_bytes(), fmt, name=path.name, **kwargs)


# --------------------------------------------------------------------------------------- export


def export(
    db: Database,
    project_id: int,
    fmt: str,
    split: str | None = None,
    include_unlabelled: bool = False,
    path: str | Path | None = None,
    run_id: int | None = None,
    comments: bool = True,
    notes: list[str] | None = None,
) -> str | bytes | Path:
    """Export a project's sentences. Text formats return text, spaCy returns bytes (both also
    written to ``path`` if given); ``hf`` writes a ``save_to_disk`` folder at ``path``.

    ``run_id`` (Label Studio): the run's predictions become pre-annotations. ``comments``
    (CoNLL): the ``# split = ...`` lines. ``notes`` collects what a format could not keep.
    """
    if fmt not in EXPORT_FORMATS:
        raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    if run_id is not None and fmt != "labelstudio":
        raise NerlabError("A run's predictions can be exported only to Label Studio (as pre-annotations).")
    rows = export_rows(db, project_id, split=split, include_unlabelled=include_unlabelled)
    out: str | bytes
    if fmt == "hf":
        if path is None:
            raise NerlabError("The Hugging Face export needs a folder to write to.")
        names = [row["name"] for row in projects.list_labels(db, project_id)]
        return hf.to_hf(rows, names, path)
    if fmt == "conll":
        out = conll.to_conll(rows, comments=comments)
    elif fmt == "jsonl":
        out = jsonl.to_jsonl(rows)
    elif fmt == "doccano":
        out = doccano.to_doccano(rows)
    elif fmt == "labelstudio":
        predictions, version = None, ""
        if run_id is not None:
            run = db.execute("SELECT id, name, project_id FROM runs WHERE id = ?", [run_id]).fetchone()
            if run is None or run[2] != project_id:
                raise NerlabError(f"No run {run_id} in this project.")
            predictions = run_predictions(db, run_id, [r.id for r in rows])
            version = run[1] or f"run {run_id}"
        out = labelstudio.to_labelstudio(rows, predictions, version)
    else:
        out, spacy_notes = spacy_docbin.to_spacy(rows)
        if notes is not None:
            notes += spacy_notes
    if path is not None:
        if isinstance(out, bytes):
            Path(path).write_bytes(out)
        else:
            Path(path).write_text(out, encoding="utf-8")
    return out


def export_filename(project_name: str, fmt: str, split: str | None) -> str:
    """A safe download name, e.g. ``BC5CDR_demo-test.conll`` or ``BC5CDR_demo-hf.zip``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", project_name).strip("_") or "project"
    stem += f"-{split}" if split else ""
    suffix = FORMATS[fmt].suffix if fmt in FORMATS else f".{fmt}"
    return stem + suffix


def export_file(
    db: Database, project_id: int, fmt: str, split: str | None, include_unlabelled: bool,
    run_id: int | None = None,
) -> tuple[bytes, str, str]:
    """A project's export as ``(content, file name, MIME type)`` for a browser download; the
    Hugging Face ``datasets`` folder is zipped."""
    if fmt not in EXPORT_FORMATS:
        raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    file_name = export_filename(projects.get_project(db, project_id)["name"], fmt, split)
    mime = FORMATS[fmt].mime
    if fmt != "hf":
        out = export(db, project_id, fmt, split=split, include_unlabelled=include_unlabelled,
                     run_id=run_id)
        return (out if isinstance(out, bytes) else str(out).encode("utf-8")), file_name, mime
    stem = file_name.removesuffix("-hf.zip")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / stem
        export(db, project_id, "hf", split=split, include_unlabelled=include_unlabelled, path=folder)
        buffer = _io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    zf.write(file, file.relative_to(Path(tmp)))
        return buffer.getvalue(), file_name, mime


def deferred_export(
    project_id: int, fmt: str, split: str | None, include_unlabelled: bool,
    run_id: int | None = None,
) -> Callable[[], bytes]:
    """A no-argument function building the export when called (Streamlit's lazy download).

    It opens its own connection: the download runs in another thread than the page.
    """
    def build() -> bytes:
        return export_file(get_db(), project_id, fmt, split, include_unlabelled, run_id)[0]

    return build


def read_stdin() -> bytes:
    """All of standard input, as bytes (``-`` as the file to import)."""
    return sys.stdin.buffer.read()
