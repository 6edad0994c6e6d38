"""Which format a file is in, read from its content (the name only breaks ties).

doccano (a ``label`` or ``entities`` list), NERLab/Prodigy JSONL (``spans``, token objects,
Prodigy's hashes and answers), Hugging Face rows (``tokens`` + ``ner_tags``), Label Studio JSON
(tasks with ``data``) and JSON-MIN (flat rows in a JSON list), CoNLL (every line a token and a
tag), plain text (anything else), and the binary ones: a zip or parquet file (a Hugging Face
dataset) and a spaCy ``DocBin``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.data.io.common import decode, lines

_TAG = re.compile(r"^(O|[BIESLU][-_]\S+)$")
_COMMENT = re.compile(r"^#\s*[A-Za-z_][\w.-]*\s*=")


def detect(data: bytes, name: str = "file") -> tuple[str, str]:
    """``(format, why)`` for a file's bytes; raises :class:`ImportFormatError` when it cannot be
    decoded (empty, not UTF-8)."""
    if data[:4] in (b"PK\x03\x04", b"PAR1"):
        return "hf", "a zip or parquet file: a Hugging Face dataset"
    if data[:2] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda") or Path(name).suffix.lower() == ".spacy":
        return "spacy", "compressed binary data: a spaCy DocBin"
    return detect_text(decode(data, name), name)


def detect_format(data: bytes, name: str = "file") -> str:
    return detect(data, name)[0]


def detect_text(text: str, name: str = "file") -> tuple[str, str]:
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("["):
        return _array(body)
    if body.startswith("{"):
        rows = []
        for raw in [ln for ln in lines(body) if ln.strip()][:50]:
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                break
            if not isinstance(obj, dict):
                break
            rows.append(obj)
        if rows:
            return _family(rows)
        try:
            whole = json.loads(body)
        except (ValueError, RecursionError):
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("data"), dict):
            return "labelstudio", "one Label Studio task"
        return "jsonl", "starts like JSON Lines"
    return _conll_or_text(text, name)


def _family(rows: list[dict]) -> tuple[str, str]:
    if any(isinstance(r.get("data"), dict) for r in rows):
        return "labelstudio", 'Label Studio tasks, one per line (a "data" object)'
    if any(isinstance(r.get("ner_tags"), list) and isinstance(r.get("tokens"), list) for r in rows):
        return "hf", 'Hugging Face rows ("tokens" and "ner_tags")'
    prodigy = ("spans", "_input_hash", "_task_hash", "answer", "_annotator_id")
    if any(isinstance(r.get("spans"), list) or any(k in r for k in prodigy[1:]) or
           (isinstance(r.get("tokens"), list) and r["tokens"] and isinstance(r["tokens"][0], dict))
           for r in rows):
        return "jsonl", 'NERLab / spaCy / Prodigy JSONL ("spans")'
    if any(isinstance(r.get(k), list) for r in rows for k in ("label", "labels", "entities")):
        return "doccano", 'doccano JSONL (a "label" or "entities" list)'
    return "jsonl", "JSON Lines with text only (imported as not done)"


def _array(body: str) -> tuple[str, str]:
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return "labelstudio", "a JSON list (Label Studio's export)"
    if not isinstance(items, list):
        return "labelstudio", "a JSON list (Label Studio's export)"
    dicts = [i for i in items[:50] if isinstance(i, dict)]
    if any(isinstance(i.get("ner_tags"), list) and isinstance(i.get("tokens"), list) for i in dicts):
        return "hf", 'a JSON list of Hugging Face rows ("tokens" and "ner_tags")'
    if any("data" in i or "annotations" in i for i in dicts):
        return "labelstudio", 'Label Studio JSON (tasks with "data")'
    if any(isinstance(i.get("spans"), list) for i in dicts):
        return "jsonl", 'a JSON list of NERLab / spaCy / Prodigy records ("spans")'
    return "labelstudio", "Label Studio JSON-MIN (a JSON list of flat rows)"


def _conll_or_text(text: str, name: str) -> tuple[str, str]:
    sample = []
    for raw in lines(text):
        line = raw.strip(" \t\ufeff")
        if not line or line.startswith("-DOCSTART-") or (
                line.startswith("#") and "\t" not in line and _COMMENT.match(line)):
            continue
        sample.append(line)
        if len(sample) >= 200:
            break
    def is_token_line(line: str) -> bool:
        parts = [p for p in (line.split("\t") if "\t" in line else re.split(r"[ \t]+", line)) if p]
        return len(parts) >= 2 and bool(_TAG.match(parts[-1].strip()))

    share = sum(map(is_token_line, sample)) / len(sample) if sample else 0.0
    if share == 1.0:
        return "conll", "CoNLL (a token and a BIO tag on every line)"
    suffix = Path(name).suffix.lower()
    if sample and (share >= 0.5 or suffix in (".conll", ".tsv", ".bio", ".iob")):
        # Mostly token lines, or a CoNLL file name: read as CoNLL so that the reader names the
        # line that is wrong, rather than importing the file as sentences.
        return "conll", f"CoNLL ({share:.0%} of the lines are a token and a tag)"
    return "text", "plain text (one sentence a line)"
