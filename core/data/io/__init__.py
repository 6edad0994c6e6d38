"""Import and export of labelled sentences, one module per format family.

Importers parse the whole file first and write nothing unless every record is valid; errors name
the file, the line (task, row) and the field. In: CoNLL/BIO (IOB1, IOB2, IOBES; Label Studio's
CoNLL export), JSONL with character spans (NERLab, spaCy, Prodigy ``db-out``), plain text, Label
Studio JSON and JSON-MIN, doccano JSONL, Hugging Face datasets (``save_to_disk`` folder or zip,
parquet, JSON), spaCy ``DocBin``. Out: CoNLL (IOB2, with ``# split = ...`` comments), JSONL,
Label Studio JSON (with a run's predictions as pre-annotations), doccano JSONL, a Hugging Face
``DatasetDict`` and a spaCy ``DocBin``. The format of a file is read from its content.
"""

from core.data.io.api import (
    PARSERS,
    deferred_export,
    export,
    export_file,
    export_filename,
    import_bytes,
    import_file,
    import_records,
    parse_bytes,
    read_stdin,
)
from core.data.io.common import ExportRow, Records, decode, export_rows, lines
from core.data.io.conll import parse_conll, to_conll
from core.data.io.detect import detect, detect_format
from core.data.io.doccano import parse_doccano, to_doccano
from core.data.io.hf import load_hf, parse_hf_json, to_hf
from core.data.io.jsonl import parse_jsonl, parse_text, to_jsonl
from core.data.io.labelstudio import labelstudio_config, parse_labelstudio, to_labelstudio
from core.data.io.registry import EXPORT_FORMATS, FORMATS, IMPORT_FORMATS, guess_format
from core.data.io.spacy_docbin import available as spacy_available
from core.data.io.spacy_docbin import to_spacy

__all__ = [
    "EXPORT_FORMATS", "FORMATS", "IMPORT_FORMATS", "PARSERS", "ExportRow", "Records", "decode",
    "deferred_export", "detect", "detect_format", "export", "export_file", "export_filename",
    "export_rows", "guess_format", "import_bytes", "import_file", "import_records",
    "labelstudio_config", "lines", "load_hf", "parse_bytes", "parse_conll", "parse_doccano",
    "parse_hf_json", "parse_jsonl", "parse_labelstudio", "parse_text", "read_stdin",
    "spacy_available", "to_conll", "to_doccano", "to_hf", "to_jsonl", "to_labelstudio",
    "to_spacy",
]
