"""The formats NERLab reads and writes: names, titles, file names and media types."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str
    title: str
    reads: bool
    writes: bool
    suffix: str  # of an exported file
    mime: str
    binary: bool = False


FORMATS = {f.name: f for f in (
    Format("conll", "CoNLL / BIO (IOB2 out; IOB1, IOB2, IOBES in)", True, True, ".conll", "text/plain"),
    Format("jsonl", "JSONL with character spans (NERLab, spaCy, Prodigy)", True, True, ".jsonl",
           "application/jsonl"),
    Format("text", "Plain text, one sentence a line", True, False, ".txt", "text/plain"),
    Format("labelstudio", "Label Studio JSON / JSON-MIN", True, True, "-labelstudio.json",
           "application/json"),
    Format("doccano", "doccano JSONL", True, True, "-doccano.jsonl", "application/jsonl"),
    Format("hf", "Hugging Face datasets (folder, zip, parquet, JSON)", True, True, "-hf.zip",
           "application/zip", binary=True),
    Format("spacy", "spaCy DocBin (.spacy)", True, True, ".spacy", "application/octet-stream",
           binary=True),
)}

IMPORT_FORMATS = tuple(n for n, f in FORMATS.items() if f.reads)
EXPORT_FORMATS = tuple(n for n, f in FORMATS.items() if f.writes)

_SUFFIXES = {".conll": "conll", ".tsv": "conll", ".bio": "conll", ".iob": "conll", ".txt": "text",
             ".jsonl": "jsonl", ".json": "labelstudio", ".parquet": "hf", ".zip": "hf",
             ".spacy": "spacy"}


def guess_format(filename: str) -> str | None:
    """A format from the file name alone (the importer reads the content: see ``detect``)."""
    return _SUFFIXES.get(Path(filename).suffix.lower())
