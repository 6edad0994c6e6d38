"""spaCy's binary training format, a ``DocBin`` (``.spacy``), out and back in.

Needs spaCy (the optional extra ``nerlab[spacy]``); without it both directions say how to
install it. Each sentence is one ``Doc`` whose text is the sentence exactly (extra whitespace
becomes whitespace tokens, as spaCy does) and whose entities are the gold spans; the split,
labelled flag, annotator and times ride in ``doc.user_data``, which ``DocBin`` stores, so that
NERLab → spaCy → NERLab keeps them. ``spacy train`` wants one file per split: export each split.
"""

from __future__ import annotations

from core.data.io.common import (
    ExportRow,
    Records,
    annotator,
    fail,
    make_span,
    split_name,
    timestamp,
)
from core.data.records import SPLIT_SOURCES, SentenceRecord
from core.data.spans import Span
from core.errors import NerlabError

INSTALL = "The spaCy format needs spaCy, which is not installed: pip install 'nerlab[spacy]'."


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("spacy") is not None


def _spacy():
    try:
        import spacy
        from spacy.tokens import Doc, DocBin
    except ImportError:
        raise NerlabError(INSTALL) from None
    return spacy, Doc, DocBin


def _words(row: ExportRow) -> tuple[list[str], list[bool]]:
    """spaCy words and trailing-space flags that spell the text exactly."""
    words: list[str] = []
    spaces: list[bool] = []
    text = row.text
    tokens = row.token_offsets()
    if tokens and tokens[0][0] > 0:
        words.append(text[: tokens[0][0]])
        spaces.append(False)
    for k, (start, end) in enumerate(tokens):
        words.append(text[start:end])
        gap = text[end: tokens[k + 1][0] if k + 1 < len(tokens) else len(text)]
        spaces.append(gap[:1] == " ")
        rest = gap[1:] if gap[:1] == " " else gap
        if rest:
            words.append(rest)
            spaces.append(False)
    return words, spaces


def to_spacy(rows: list[ExportRow]) -> tuple[bytes, list[str]]:
    """A ``DocBin`` of the sentences, and notes on spans spaCy could not place on tokens."""
    spacy, Doc, DocBin = _spacy()
    nlp = spacy.blank("xx")
    docbin = DocBin(store_user_data=True)
    notes = []
    for row in rows:
        words, spaces = _words(row)
        doc = Doc(nlp.vocab, words=words, spaces=spaces)
        ents = []
        for span in row.spans:
            ent = doc.char_span(span.start, span.end, label=span.label, alignment_mode="expand")
            if ent is None or (ent.start_char, ent.end_char) != (span.start, span.end):
                notes.append(f"sentence {row.number}: span {span.start}-{span.end} ({span.label}) "
                             "does not fall on tokens; spaCy widens it to whole tokens.")
            if ent is not None:
                ents.append(ent)
        doc.ents = spacy.util.filter_spans(ents)
        doc.user_data.update({"split": row.split, "split_source": row.split_source,
                              "labelled": row.labelled, "annotator": row.annotator,
                              "created_at": row.created_at, "updated_at": row.updated_at,
                              "spans": [[s.start, s.end, s.label] for s in row.spans]})
        docbin.add(doc)
    return docbin.to_bytes(), notes


def parse_spacy_bytes(data: bytes, name: str = "file", **_options) -> Records:
    """Records from a ``DocBin``: each Doc's text and entities (and NERLab's user data)."""
    try:
        spacy, _Doc, DocBin = _spacy()
    except NerlabError as exc:
        fail(name, str(exc))
    try:
        docs = list(DocBin().from_bytes(data).get_docs(spacy.blank("xx").vocab))
    except Exception as exc:  # noqa: BLE001 - msgpack/zlib/spaCy errors of a broken file
        fail(name, f"not a spaCy DocBin ({type(exc).__name__}).")
    records = Records()
    for i, doc in enumerate(docs, start=1):
        where = f"{name}, doc {i}"
        if not doc.text.strip():
            fail(where, "the doc has no text.")
        data = doc.user_data if isinstance(doc.user_data, dict) else {}
        spans = [Span(e.start_char, e.end_char, e.label_) for e in doc.ents]
        kept = data.get("spans")
        if isinstance(kept, list) and all(isinstance(s, list) and len(s) == 3 for s in kept):
            spans = [make_span(s[0], s[1], s[2], doc.text, where, "user_data span") for s in kept]
        tokens = [(t.idx, t.idx + len(t.text)) for t in doc if not t.is_space]
        labelled = data.get("labelled")
        rec = SentenceRecord(
            text=doc.text, spans=spans, tokens=tokens, line=i, unit="doc",
            labelled=labelled if isinstance(labelled, bool) else True,
            split=split_name(data.get("split"), where),
            annotator=annotator(data.get("annotator"), where, "annotator"),
            created_at=timestamp(data.get("created_at"), where, "created_at"),
            updated_at=timestamp(data.get("updated_at"), where, "updated_at"),
        )
        if data.get("split_source") in SPLIT_SOURCES:
            rec.split_source = data["split_source"]
        records.append(rec)
    if not records:
        fail(name, "holds no docs.")
    return records
