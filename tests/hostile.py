"""Hostile import files, generated per format: every field a reader takes given every wrong
type, plus nesting, huge numbers, booleans as offsets, NaN, control characters, non-UTF-8 bytes,
BOM, CRLF and empty files.

``shapes()`` yields :class:`Shape` objects (an id, the format to read it as, the bytes, and the
field the error must name when it is refused). The test in ``test_io_hostile.py`` imports every
one and requires records or an ``ImportFormatError`` naming the file, the place and the field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass

DEEP = 100_000  # deeper than any JSON parser's recursion limit


@dataclass(frozen=True)
class Shape:
    id: str
    fmt: str
    data: bytes
    field: str = ""  # the key the message must name if the file is refused


#: Values put in place of every field the readers take.
WRONG = {
    "str": "x",
    "empty": "",
    "nul": "\x00",
    "zwsp": "\u200b",
    "int": 5,
    "neg": -1,
    "huge": 2**70,
    "float": 1.5,
    "nan": float("nan"),
    "inf": float("inf"),
    "true": True,
    "false": False,
    "null": None,
    "list": [1, 2],
    "emptylist": [],
    "dict": {"a": 1},
    "emptydict": {},
    "nested": [[[[[[[[[["x"]]]]]]]]]],
}


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)  # NaN and Infinity written as JSON's extensions


BASES = {
    "jsonl": {
        "text": "Aspirin causes ulcers .",
        "spans": [{"start": 0, "end": 7, "label": "Chemical"}],
        "tokens": [{"start": 0, "end": 7, "text": "Aspirin"}, {"start": 8, "end": 14},
                   {"start": 15, "end": 21}, {"start": 22, "end": 23}],
        "meta": {"split": "train"},
        "split": "dev",
        "split_source": "hand",
        "labelled": True,
        "answer": "accept",
        "annotator": "ann",
        "_annotator_id": "db-ann",
        "created_at": "2024-01-02T03:04:05Z",
        "updated_at": "2024-01-02T03:04:06+00:00",
        "_timestamp": 1700000000,
    },
    "jsonl-meta": {  # the split in meta only, so that a reader has to look inside it
        "text": "Aspirin works .",
        "spans": [{"start": 0, "end": 7, "label": "Chemical"}],
        "meta": {"split": "dev", "source": "pubmed"},
    },
    "doccano": {
        "text": "Lithium toxicity .",
        "label": [[0, 7, "Chemical"]],
        "entities": [{"id": 1, "start_offset": 8, "end_offset": 16, "label": "Disease"}],
        "split": "test",
        "split_source": "random",
        "labelled": True,
        "annotator": "ann",
        "created_at": "2024-01-02T03:04:05Z",
        "updated_at": "2024-01-02T03:04:06Z",
    },
    "labelstudio": {
        "id": 1,
        "data": {"text": "Aspirin causes ulcers .", "split": "dev",
                 "nerlab": {"annotator": "ann", "split_source": "import",
                            "created_at": "2024-01-02T03:04:05Z", "updated_at": "2024-01-02T03:04:05Z"}},
        "annotations": [{
            "id": 7, "completed_by": 3, "ground_truth": True, "was_cancelled": False,
            "created_at": "2024-01-02T03:04:05.123456Z", "updated_at": "2024-01-02T03:04:05Z",
            "result": [{"id": "r1", "from_name": "label", "to_name": "text", "type": "labels",
                        "value": {"start": 0, "end": 7, "text": "Aspirin", "labels": ["Chemical"]}}],
        }],
        "predictions": [{"model_version": "nerlab draft", "result": [
            {"value": {"start": 15, "end": 21, "text": "ulcers", "labels": ["Disease"]}}]}],
    },
    "labelstudio-min": {
        "id": 1, "text": "Aspirin causes ulcers .", "annotator": 1, "annotation_id": 2,
        "created_at": "2024-01-02T03:04:05.123456Z", "updated_at": "2024-01-02T03:04:05Z",
        "lead_time": 3.5, "split": "train",
        "label": [{"start": 0, "end": 7, "text": "Aspirin", "labels": ["Chemical"]}],
    },
    "hf": {
        "tokens": ["Aspirin", "causes", "ulcers", "."],
        "ner_tags": ["B-Chemical", "O", "B-Disease", "O"],
        "text": "Aspirin causes ulcers .",
        "token_offsets": [[0, 7], [8, 14], [15, 21], [22, 23]],
        "spans": [{"start": 0, "end": 7, "label": "Chemical"}, {"start": 15, "end": 21, "label": "Disease"}],
        "labelled": True, "annotator": "ann", "split": "validation", "split_source": "import",
        "created_at": "2024-01-02T03:04:05Z", "updated_at": "2024-01-02T03:04:05Z",
    },
}


def _paths(obj, prefix=()) -> Iterator[tuple]:
    """Every path to a value in a record (keys and list indexes)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    out = copy.deepcopy(obj)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _leaf(path) -> str:
    """The name the message must carry: the last key (or the key above a list index)."""
    keys = [k for k in path if isinstance(k, str)]
    return keys[-1] if keys else ""


def _file(fmt: str, record) -> bytes:
    if fmt == "labelstudio":
        return _dumps([record]).encode()
    if fmt == "labelstudio-min":
        return _dumps([record]).encode()
    second = {"jsonl": {"text": "Second one .", "spans": []},
              "jsonl-meta": {"text": "Second one .", "spans": []},
              "doccano": {"text": "Second one .", "label": []},
              "hf": {"tokens": ["Second"], "ner_tags": ["O"]}}[fmt]
    return (_dumps(second) + "\n" + _dumps(record) + "\n").encode()


def field_shapes() -> Iterator[Shape]:
    for fmt, base in BASES.items():
        read_as = {"labelstudio-min": "labelstudio", "jsonl-meta": "jsonl"}.get(fmt, fmt)
        for path in _paths(base):
            for name, value in WRONG.items():
                yield Shape(f"{fmt}:{'.'.join(map(str, path))}={name}", read_as,
                            _file(fmt, _set(base, path, value)), _leaf(path))
            if isinstance(path[-1], str):  # the field missing altogether
                cut = copy.deepcopy(base)
                target = cut
                for key in path[:-1]:
                    target = target[key]
                del target[path[-1]]
                yield Shape(f"{fmt}:{'.'.join(map(str, path))}=missing", read_as, _file(fmt, cut),
                            _leaf(path))
        for name, value in WRONG.items():  # the whole record replaced
            if fmt.startswith("labelstudio"):
                yield Shape(f"{fmt}:task={name}", read_as, _dumps([value]).encode())
                yield Shape(f"{fmt}:file={name}", read_as, _dumps(value).encode())
            else:
                yield Shape(f"{fmt}:line={name}", read_as, (_dumps(value) + "\n").encode())


def _deep(open_: str, close: str, n: int = DEEP) -> bytes:
    return (open_ * n + close * n).encode()


def file_shapes() -> Iterator[Shape]:
    """Whole-file shapes, for every text format."""
    good = {
        "conll": "Aspirin\tB-Chemical\ncauses\tO\n\nUlcers\tB-Disease\n",
        "jsonl": _dumps(BASES["jsonl"]) + "\n",
        "text": "Aspirin causes ulcers .\nSecond line .\n",
        "labelstudio": _dumps([BASES["labelstudio"]]),
        "doccano": _dumps(BASES["doccano"]) + "\n",
        "hf": _dumps(BASES["hf"]) + "\n",
    }
    for fmt, text in good.items():
        raw = text.encode()
        variants = {
            "good": raw,
            "bom": b"\xef\xbb\xbf" + raw,
            "crlf": raw.replace(b"\n", b"\r\n"),
            "cr-only": raw.replace(b"\n", b"\r"),
            "utf16": text.encode("utf-16"),
            "latin1": raw + "\nCaf\u00e9\tO\n".encode("latin-1"),
            "empty": b"",
            "blank": b"  \n\t\n",
            "bom-only": b"\xef\xbb\xbf",
            "nul-bytes": raw.replace(b"A", b"\x00"),
            "truncated": raw[: len(raw) // 2],
            "deep-list": _deep("[", "]"),
            "deep-dict": ('{"a":' * DEEP + "1" + "}" * DEEP).encode(),
            "deep-in-field": (_dumps({"text": "x", "spans": "@"}).replace('"@"', "[" * 5000 + "]" * 5000)
                              + "\n").encode(),
            "huge-int": ("[" + "9" * 5000 + "]").encode(),
            "huge-int-field": ('{"text": "Aspirin", "spans": [{"start": 0, "end": ' + "9" * 5000
                               + ', "label": "A"}]}\n').encode(),
            "nan": b"NaN\n",
            "scalar": b"42\n",
            "u2028": raw.replace(b"Aspirin", "Asp\u2028ir\u0085in".encode()),
            "binary": bytes(range(256)) * 4,
            "long-line": b"x" * 200_000 + b"\tO\n",
        }
        for name, data in variants.items():
            yield Shape(f"{fmt}:file:{name}", fmt, data)


def conll_shapes() -> Iterator[Shape]:
    lines = {
        "bad-tag": "Aspirin\tX-Foo\n",
        "one-column": "Aspirin\n",
        "space-in-token": "As pirin\tO\tB-Chemical\n",
        "bad-split": "# split = holdout\nAspirin\tB-Chemical\n",
        "bad-status": "# status = maybe\nAspirin\tB-Chemical\n",
        "bad-time": "# updated_at = yesterday\nAspirin\tB-Chemical\n",
        "bad-annotator": "# annotator = a\x01b\nAspirin\tB-Chemical\n",
        "nul-label": "Aspirin\tB-\x00\n",
        "zw-label": "Aspirin\tB-\u200b\n",
        "control-label": "Aspirin\tB-Che\x07mical\n",
        "text-mismatch": "# text = something else\nAspirin\tB-Chemical\n",
        "comment-only": "# split = dev\n",
        "docstart-only": "-DOCSTART- -X- O O\n\n",
        "hash-token": "#\tO\nAspirin\tB-Chemical\n",
        "stray-I": "Aspirin\tI-Chemical\nworks\tE-Chemical\n",
        "u2028-token": "Asp\u2028irin\tB-Chemical\n",
    }
    for name, text in lines.items():
        yield Shape(f"conll:{name}", "conll", text.encode())


def binary_shapes() -> Iterator[Shape]:
    """Files that start like a zip, a parquet file or a spaCy DocBin and are not."""
    import io as _io
    import zipfile

    def zipped(files: dict[str, bytes]) -> bytes:
        buffer = _io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buffer.getvalue()

    shapes = {
        "zip-truncated": zipped({"d/dataset_dict.json": b'{"splits": ["train"]}'})[:40],
        "zip-junk": b"PK\x03\x04" + bytes(range(200)),
        "zip-empty": zipped({}),
        "zip-fake-dataset": zipped({"d/dataset_dict.json": b'{"splits": ["train"]}',
                                    "d/train/state.json": b"not json", "d/train/dataset_info.json": b"{}"}),
        "zip-bad-rows": zipped({"train.jsonl": b'{"tokens": "x", "ner_tags": 5}\n'}),
        "zip-slip": zipped({"../../evil.jsonl": b'{"tokens": ["a"], "ner_tags": ["O"]}\n'}),
        "parquet-junk": b"PAR1" + bytes(range(256)) + b"PAR1",
        "docbin-junk": b"\x78\x9c" + bytes(range(100)),
    }
    for name, data in shapes.items():
        yield Shape(f"binary:{name}", "spacy" if name.startswith("docbin") else "hf", data)


def label_shapes() -> Iterator[Shape]:
    """Entity-type names no project should accept (NUL, zero-width, control, format characters)."""
    for name, label in {"nul": "\x00", "zwsp": "\u200b", "zwj": "A\u200dB", "bell": "Chem\x07",
                        "rtl": "\u202eChem", "bom": "\ufeff", "ls": "A\u2028B", "tab": "A\tB",
                        "combining": "\u0301"}.items():
        record = {"text": "Aspirin works .", "spans": [{"start": 0, "end": 7, "label": label}]}
        yield Shape(f"jsonl:label-name:{name}", "jsonl", (_dumps(record) + "\n").encode(), "")


def shapes() -> list[Shape]:
    return [*field_shapes(), *file_shapes(), *conll_shapes(), *binary_shapes(), *label_shapes()]


#: The 134 shapes that crashed the importers before this change (AttributeError, TypeError,
#: RecursionError, ValueError, OverflowError instead of a message): the kinds of the user report
#: ("meta": "x", "entities": "x" or 5, "annotations": "x", deep nesting) and more. Found by
#: running ``shapes()`` against commit 20abe8d; each is now a message or records.
CRASHED_BEFORE = [
    "jsonl:tokens.0.start=inf",
    "jsonl:tokens.0.end=inf",
    "jsonl:tokens.1.start=inf",
    "jsonl:tokens.1.end=inf",
    "jsonl-meta:meta=str",
    "jsonl-meta:meta=nul",
    "jsonl-meta:meta=zwsp",
    "jsonl-meta:meta=int",
    "jsonl-meta:meta=neg",
    "jsonl-meta:meta=huge",
    "jsonl-meta:meta=float",
    "jsonl-meta:meta=nan",
    "jsonl-meta:meta=inf",
    "jsonl-meta:meta=true",
    "jsonl-meta:meta=list",
    "jsonl-meta:meta=nested",
    "doccano:entities=str",
    "doccano:entities=nul",
    "doccano:entities=zwsp",
    "doccano:entities=int",
    "doccano:entities=neg",
    "doccano:entities=huge",
    "doccano:entities=float",
    "doccano:entities=nan",
    "doccano:entities=inf",
    "doccano:entities=true",
    "doccano:entities=list",
    "doccano:entities=dict",
    "doccano:entities=nested",
    "doccano:entities.0=str",
    "doccano:entities.0=empty",
    "doccano:entities.0=nul",
    "doccano:entities.0=zwsp",
    "doccano:entities.0=int",
    "doccano:entities.0=neg",
    "doccano:entities.0=huge",
    "doccano:entities.0=float",
    "doccano:entities.0=nan",
    "doccano:entities.0=inf",
    "doccano:entities.0=true",
    "doccano:entities.0=false",
    "doccano:entities.0=null",
    "doccano:entities.0=list",
    "doccano:entities.0=emptylist",
    "doccano:entities.0=nested",
    "labelstudio:annotations=str",
    "labelstudio:annotations=nul",
    "labelstudio:annotations=zwsp",
    "labelstudio:annotations=int",
    "labelstudio:annotations=neg",
    "labelstudio:annotations=huge",
    "labelstudio:annotations=float",
    "labelstudio:annotations=nan",
    "labelstudio:annotations=inf",
    "labelstudio:annotations=true",
    "labelstudio:annotations=list",
    "labelstudio:annotations=dict",
    "labelstudio:annotations=nested",
    "labelstudio:annotations.0=str",
    "labelstudio:annotations.0=empty",
    "labelstudio:annotations.0=nul",
    "labelstudio:annotations.0=zwsp",
    "labelstudio:annotations.0=int",
    "labelstudio:annotations.0=neg",
    "labelstudio:annotations.0=huge",
    "labelstudio:annotations.0=float",
    "labelstudio:annotations.0=nan",
    "labelstudio:annotations.0=inf",
    "labelstudio:annotations.0=true",
    "labelstudio:annotations.0=false",
    "labelstudio:annotations.0=null",
    "labelstudio:annotations.0=list",
    "labelstudio:annotations.0=emptylist",
    "labelstudio:annotations.0=nested",
    "labelstudio:annotations.0.result=str",
    "labelstudio:annotations.0.result=nul",
    "labelstudio:annotations.0.result=zwsp",
    "labelstudio:annotations.0.result=int",
    "labelstudio:annotations.0.result=neg",
    "labelstudio:annotations.0.result=huge",
    "labelstudio:annotations.0.result=float",
    "labelstudio:annotations.0.result=nan",
    "labelstudio:annotations.0.result=inf",
    "labelstudio:annotations.0.result=true",
    "labelstudio:annotations.0.result=list",
    "labelstudio:annotations.0.result=dict",
    "labelstudio:annotations.0.result=nested",
    "labelstudio:annotations.0.result.0=str",
    "labelstudio:annotations.0.result.0=empty",
    "labelstudio:annotations.0.result.0=nul",
    "labelstudio:annotations.0.result.0=zwsp",
    "labelstudio:annotations.0.result.0=int",
    "labelstudio:annotations.0.result.0=neg",
    "labelstudio:annotations.0.result.0=huge",
    "labelstudio:annotations.0.result.0=float",
    "labelstudio:annotations.0.result.0=nan",
    "labelstudio:annotations.0.result.0=inf",
    "labelstudio:annotations.0.result.0=true",
    "labelstudio:annotations.0.result.0=false",
    "labelstudio:annotations.0.result.0=null",
    "labelstudio:annotations.0.result.0=list",
    "labelstudio:annotations.0.result.0=emptylist",
    "labelstudio:annotations.0.result.0=nested",
    "labelstudio:annotations.0.result.0.value=int",
    "labelstudio:annotations.0.result.0.value=neg",
    "labelstudio:annotations.0.result.0.value=huge",
    "labelstudio:annotations.0.result.0.value=float",
    "labelstudio:annotations.0.result.0.value=nan",
    "labelstudio:annotations.0.result.0.value=inf",
    "labelstudio:annotations.0.result.0.value=true",
    "labelstudio:annotations.0.result.0.value.labels=int",
    "labelstudio:annotations.0.result.0.value.labels=neg",
    "labelstudio:annotations.0.result.0.value.labels=huge",
    "labelstudio:annotations.0.result.0.value.labels=float",
    "labelstudio:annotations.0.result.0.value.labels=nan",
    "labelstudio:annotations.0.result.0.value.labels=inf",
    "labelstudio:annotations.0.result.0.value.labels=true",
    "labelstudio:annotations.0.result.0.value.labels=false",
    "labelstudio:annotations.0.result.0.value.labels=null",
    "jsonl:file:deep-list",
    "jsonl:file:deep-dict",
    "jsonl:file:deep-in-field",
    "jsonl:file:huge-int",
    "jsonl:file:huge-int-field",
    "labelstudio:file:deep-list",
    "labelstudio:file:deep-dict",
    "labelstudio:file:deep-in-field",
    "labelstudio:file:huge-int",
    "labelstudio:file:huge-int-field",
    "doccano:file:deep-list",
    "doccano:file:deep-dict",
    "doccano:file:deep-in-field",
    "doccano:file:huge-int",
    "doccano:file:huge-int-field",
]
