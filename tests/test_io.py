"""Import/export on real files: BC5CDR round-trips exactly; broken files write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import io, projects
from core.data.spans import Span
from core.errors import ImportFormatError

ROOT = Path(__file__).resolve().parent.parent
#: /work/shared in a checkout at /work/main, one level further up in a worktree under /work/wt.
BC5CDR = next((p / "shared" / "data" / "bc5cdr" for p in (ROOT.parent, ROOT.parent.parent)
               if (p / "shared" / "data" / "bc5cdr").is_dir()), ROOT.parent / "shared" / "data" / "bc5cdr")


def _sentences(text: str) -> list[list[tuple[str, str]]]:
    out, block = [], []
    for line in text.splitlines():
        if line.startswith("# "):
            continue  # NERLab's comment lines (split, status, text)
        if line.strip():
            token, tag = line.split("\t") if "\t" in line else line.split()
            block.append((token, tag))
        elif block:
            out.append(block)
            block = []
    if block:
        out.append(block)
    return out


def _unique(blocks):
    seen, out = set(), []
    for b in blocks:
        key = " ".join(t for t, _ in b)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def _row_count(db) -> int:
    return sum(db[t].count for t in ("projects", "labels", "sentences", "spans"))


@pytest.mark.parametrize("name", ["train.tsv", "devel.tsv", "test.tsv"])
def test_bc5cdr_round_trips_exactly(db, tmp_path, name):
    src = BC5CDR / name
    if not src.exists():
        pytest.skip(f"{src} not present")
    project = projects.create_project(db, "bc5cdr")
    result = io.import_file(db, project["id"], src, fmt="conll")
    original = _unique(_sentences(src.read_text(encoding="utf-8")))
    assert result.added == len(original)
    assert set(result.new_labels) == {"Chemical", "Disease"}

    exported = io.export(db, project["id"], "conll")
    assert _sentences(exported) == original  # same tokens, same tags, same order

    # ... and JSONL → a second project → CoNLL again is still identical.
    jsonl = io.export(db, project["id"], "jsonl")
    other = projects.create_project(db, "again")
    io.import_bytes(db, other["id"], jsonl.encode(), "jsonl", name="again.jsonl")
    assert _sentences(io.export(db, other["id"], "conll")) == original


def test_hf_export_has_tokens_and_tags(db, tmp_path):
    import datasets

    project = projects.create_project(db, "p")
    io.import_file(db, project["id"], ROOT / "assets/demo/dev.conll", fmt="conll", split="dev")
    io.import_file(db, project["id"], ROOT / "assets/demo/test.conll", fmt="conll", split="test")
    folder = io.export(db, project["id"], "hf", path=tmp_path / "hf")
    dd = datasets.load_from_disk(str(folder))
    assert set(dd) == {"validation", "test"}  # the Hugging Face name of the dev split
    names = dd["validation"].features["ner_tags"].feature.names
    assert names == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    original = _unique(_sentences((ROOT / "assets/demo/dev.conll").read_text()))
    first = dd["validation"][0]
    assert list(zip(first["tokens"], [names[i] for i in first["ner_tags"]], strict=True)) == original[0]


def test_conll_iob1_and_iobes_become_the_same_spans(db):
    iob1 = "John I-PER\nSmith I-PER\nvisited O\nParis I-LOC\n\n"
    iobes = "John B-PER\nSmith E-PER\nvisited O\nParis S-LOC\n\n"
    expected = [Span(0, 10, "PER"), Span(19, 24, "LOC")]
    for i, text in enumerate((iob1, iobes)):
        recs = io.parse_conll(text)
        assert recs[0].text == "John Smith visited Paris"
        assert recs[0].spans == expected, i


def test_docstart_and_space_separated_columns():
    text = "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\nGerman JJ B-MISC\n"
    recs = io.parse_conll(text)
    assert [r.text for r in recs] == ["EU rejects", "German"]
    assert recs[0].spans == [Span(0, 2, "ORG")]


BROKEN = [
    ("conll", b"Aspirin B-Chemical\nworks X-Foo\n", "line 2: unknown tag 'X-Foo'"),
    ("conll", b"Aspirin\n", "line 1: expected a token and a tag"),
    ("conll", b"\n\n  \n", "is empty"),
    ("conll", b"Aspirin\tB-Chemical\n\xff\xfe works\tO\n", "line 2: not UTF-8"),
    ("jsonl", b'{"text": "Aspirin works", "spans": [{"start": 0, "end": 7, "label": "Chemical"}]}\n{"text": "x"\n', "line 2: not valid JSON"),
    ("jsonl", b'{"text": "Aspirin", "spans": [{"start": 0, "end": 70, "label": "Chemical"}]}\n', "line 1: span 0-70 (Chemical) is out of range"),
    ("jsonl", b'{"text": "Aspirin works", "spans": [{"start": 0, "end": 7, "label": "A"}, {"start": 3, "end": 9, "label": "B"}]}\n', "line 1: spans overlap"),
    ("jsonl", b'{"spans": []}\n', 'line 1: missing or empty "text"'),
    ("text", b"", "is empty"),
    ("labelstudio", b'[{"data": {"text": "Aspirin"}, "annotations": [{"result": [{"value": {"start": 0, "end": 99, "labels": ["Chemical"]}}]}]}]', "task 1: span 0-99"),
    ("labelstudio", b'{"not": "tasks"', "not valid JSON"),
    ("doccano", b'{"text": "Aspirin works", "label": [[0, 7]]}\n', "line 1: each label must be [start, end, type]"),
]


@pytest.mark.parametrize(("fmt", "data", "message"), BROKEN)
def test_broken_files_write_nothing_and_say_where(db, fmt, data, message):
    project = projects.create_project(db, "p", labels=["Chemical"])
    projects.add_sentences(db, project["id"], [projects.SentenceRecord("Already here.")])
    before = _row_count(db)
    with pytest.raises(ImportFormatError) as err:
        io.import_bytes(db, project["id"], data, fmt, name="bad." + fmt)
    assert message in str(err.value)
    assert "bad." + fmt in str(err.value)
    assert _row_count(db) == before


def test_failure_late_in_a_file_rolls_back_everything(db):
    project = projects.create_project(db, "p", labels=["Chemical"], fixed_labels=True)
    good = "".join(f"word{i}\tB-Chemical\n\n" for i in range(50))
    bad = good + "Evil\tB-Person\n"
    before = _row_count(db)
    with pytest.raises(ImportFormatError, match="line 101: entity type 'Person' is not in this project's fixed label set"):
        io.import_bytes(db, project["id"], bad.encode(), "conll", name="late.conll")
    assert _row_count(db) == before


def test_new_types_are_added_unless_fixed(db):
    project = projects.create_project(db, "p", labels=["Chemical"])
    res = io.import_bytes(db, project["id"], b"Aspirin\tB-Drug\n", "conll")
    assert res.new_labels == ["Drug"]
    assert [r["name"] for r in projects.list_labels(db, project["id"])] == ["Chemical", "Drug"]
    with pytest.raises(ImportFormatError, match="fixed label set"):
        io.import_bytes(db, project["id"], b"Ibuprofen\tB-Other\n", "conll", allow_new_labels=False)


def test_duplicates_are_skipped(db):
    project = projects.create_project(db, "p")
    res = io.import_bytes(db, project["id"], b"One sentence.\nOne  sentence.\nAnother.\n", "text")
    assert (res.added, res.duplicates) == (2, 1)
    res = io.import_bytes(db, project["id"], b"Another.\n", "text")
    assert (res.added, res.duplicates) == (0, 1)


def test_labelstudio_doccano_and_jsonl_shapes(db):
    project = projects.create_project(db, "p")
    ls = [
        {
            "data": {"text": "Aspirin causes ulcers."},
            "annotations": [
                {"was_cancelled": True, "result": []},
                {"result": [
                    {"value": {"start": 0, "end": 7, "text": "Aspirin", "labels": ["Chemical"]}, "type": "labels"},
                    {"value": {"start": 15, "end": 21, "labels": ["Disease"]}, "type": "labels"},
                ]},
            ],
        },
        {"data": {"text": "Not labelled yet."}},
    ]
    io.import_bytes(db, project["id"], json.dumps(ls).encode(), "labelstudio")
    doccano = (
        '{"text": "Lithium toxicity.", "label": [[0, 7, "Chemical"], [8, 16, "Disease"]]}\n'
        '{"text": "Heparin helps.", "entities": [{"id": 1, "label": "Chemical", "start_offset": 0, "end_offset": 7}]}\n'
    )
    io.import_bytes(db, project["id"], doccano.encode(), "doccano")
    prodigy = '{"text": "Rejected one.", "spans": [], "answer": "reject"}\n{"text": "Kept.", "spans": [], "answer": "accept"}\n'
    io.import_bytes(db, project["id"], prodigy.encode(), "jsonl")
    exs = {e.text: e for e in projects.examples(db, project["id"], labelled_only=False)}
    assert exs["Aspirin causes ulcers."].spans == (Span(0, 7, "Chemical"), Span(15, 21, "Disease"))
    assert exs["Lithium toxicity."].spans == (Span(0, 7, "Chemical"), Span(8, 16, "Disease"))
    assert exs["Heparin helps."].spans == (Span(0, 7, "Chemical"),)
    assert "Rejected one." not in exs and "Kept." in exs
    labelled = {e.text for e in projects.examples(db, project["id"])}
    assert "Not labelled yet." not in labelled and "Kept." in labelled
