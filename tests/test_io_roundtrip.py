"""NERLab → a tool's format → NERLab gives back the same project: text, tokens, spans, splits
(and where they came from), labelled flags, drafts, annotators and times — on the demo data."""

from __future__ import annotations

import io as _io
import json
import zipfile

import pytest

from core.data import io, projects
from core.data.spans import Span

LOSSLESS = ["conll", "jsonl", "labelstudio", "doccano", "hf", "spacy"]


@pytest.fixture
def rich(db, demo):
    """The demo project with what a real one holds besides labels: a draft on a not-done
    sentence, sentences saved by named people, a split set by hand and one drawn at random."""
    pid = demo["id"]
    rows = io.export_rows(db, pid, include_unlabelled=True)
    todo = next(r for r in rows if not r.labelled)
    plasma = todo.text.index("plasma")
    projects.save_annotation(db, todo.id, [Span(plasma, plasma + 6, "Chemical")], "alice",
                             status="unlabelled")
    projects.save_annotation(db, rows[0].id, rows[0].spans, "bob")
    projects.set_split(db, [rows[3].id], "test")
    projects.carve_dev(db, pid, 0.05, seed=1)
    return pid


def snapshot(db, pid):
    return [(r.text, r.token_offsets(), r.spans, r.split, r.split_source, r.labelled, r.annotator,
             r.created_at, r.updated_at) for r in io.export_rows(db, pid, include_unlabelled=True)]


def _round_trip(db, pid, fmt, tmp_path):
    target = projects.create_project(db, f"back-from-{fmt}")
    if fmt == "hf":
        folder = io.export(db, pid, "hf", include_unlabelled=True, path=tmp_path / "hf")
        result = io.import_file(db, target["id"], folder)
    else:
        out = io.export(db, pid, fmt, include_unlabelled=True)
        data = out if isinstance(out, bytes) else out.encode("utf-8")
        result = io.import_bytes(db, target["id"], data, None, name=f"export.{fmt}")
    assert result.format == fmt  # read back by its content
    return target["id"], result


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_own_export_imports_back_as_the_same_project(db, rich, tmp_path, fmt):
    if fmt == "spacy":
        pytest.importorskip("spacy")
    before = snapshot(db, rich)
    assert {s[3] for s in before} == {"train", "dev", "test"}
    assert {s[4] for s in before} >= {"import", "hand", "random"}
    assert any(not s[5] and s[2] for s in before)  # a draft on a sentence not done
    back, result = _round_trip(db, rich, fmt, tmp_path)
    assert result.added == len(before) and not result.conflicts and not result.notes
    assert snapshot(db, back) == before
    assert projects.stats(db, back)["splits"] == projects.stats(db, rich)["splits"]


def test_own_export_imported_with_update_changes_nothing(db, rich):
    data = io.export(db, rich, "jsonl", include_unlabelled=True).encode()
    before = snapshot(db, rich)
    result = io.import_bytes(db, rich, data, None, name="same.jsonl", update=True)
    assert (result.added, result.updated, result.conflicts) == (0, 0, [])
    assert result.duplicates == len(before)
    assert snapshot(db, rich) == before


def test_unlabelled_sentences_come_back_unlabelled(db, demo):
    """Before: export --include-unlabelled then import gave 40 "labelled" sentences without
    entities: silent false negatives."""
    data = io.export(db, demo["id"], "jsonl", include_unlabelled=True).encode()
    other = projects.create_project(db, "copy")
    io.import_bytes(db, other["id"], data, "jsonl", name="all.jsonl")
    assert projects.stats(db, other["id"])["unlabelled"] == 40


def test_conll_keeps_dev_and_test(db, demo):
    """Before: every sentence of a CoNLL export came back in train."""
    text = io.export(db, demo["id"], "conll", include_unlabelled=True)
    assert text.startswith("# split = train\n") and "# split = test\n" in text
    other = projects.create_project(db, "copy")
    io.import_bytes(db, other["id"], text.encode(), "conll", name="all.conll")
    assert projects.split_counts(db, other["id"]) == {"train": 340, "dev": 60, "test": 147}
    assert projects.stats(db, other["id"])["unlabelled"] == 40


def test_conll_without_comments_is_plain_conll(db, demo):
    text = io.export(db, demo["id"], "conll", comments=False)
    assert "#" not in "".join(line[:1] for line in text.splitlines())
    assert text.startswith("Selegiline\tB-Chemical\n")


def test_conll_tokens_with_spaces_are_cut_not_broken(db):
    """A token holding a space (from JSONL tokens) cannot be one CoNLL line: it is cut, and the
    entity keeps its B-/I- tags."""
    project = projects.create_project(db, "ny")
    line = ('{"text": "New York is big", "spans": [{"start": 0, "end": 8, "label": "LOC"}],'
            ' "tokens": [{"start": 0, "end": 8}, {"start": 9, "end": 11}, {"start": 12, "end": 15}]}')
    io.import_bytes(db, project["id"], line.encode(), "jsonl")
    text = io.export(db, project["id"], "conll")
    assert "New\tB-LOC\nYork\tI-LOC\nis\tO\nbig\tO\n" in text
    again = projects.create_project(db, "ny2")
    io.import_bytes(db, again["id"], text.encode(), None)
    assert io.export_rows(db, again["id"])[0].spans == [Span(0, 8, "LOC")]


def test_hf_export_names_validation_and_keeps_text_and_offsets(db, rich):
    """Before: the dev split was called "dev", and text and character offsets were dropped."""
    import datasets

    data, name, mime = io.export_file(db, rich, "hf", None, True)
    assert name == "BC5CDR_demo-hf.zip" and mime == "application/zip"
    with zipfile.ZipFile(_io.BytesIO(data)) as zf, pytest.MonkeyPatch.context():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            zf.extractall(tmp)
            dd = datasets.load_from_disk(f"{tmp}/BC5CDR_demo")
    assert list(dd) == ["train", "validation", "test"]
    row = dd["validation"][0]
    assert {"text", "tokens", "ner_tags", "token_offsets", "spans", "labelled", "annotator"} <= set(row)
    assert [row["text"][s:e] for s, e in row["token_offsets"]] == row["tokens"]
    # ... and the zip a browser downloads imports back as it is.
    other = projects.create_project(db, "from-zip")
    result = io.import_bytes(db, other["id"], data, None, name=name)
    assert result.format == "hf" and snapshot(db, other["id"]) == snapshot(db, rich)


def test_labelstudio_export_with_a_runs_predictions(db, rich):
    run_id = db["runs"].insert({"project_id": rich, "name": "loraplus-7", "kind": "train",
                                "created_at": "t"}).last_pk
    rows = io.export_rows(db, rich, include_unlabelled=True)
    db["predictions"].insert({"run_id": run_id, "sentence_id": rows[0].id, "split": rows[0].split,
                              "spans": json.dumps([{"start": 0, "end": 10, "label": "Chemical"}]),
                              "created_at": "t"})
    tasks = json.loads(io.export(db, rich, "labelstudio", include_unlabelled=True, run_id=run_id))
    assert len(tasks) == len(rows)
    first = tasks[0]
    assert first["data"]["text"] == rows[0].text and first["data"]["split"] == rows[0].split
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == "loraplus-7"
    assert prediction["result"][0]["value"] == {"start": 0, "end": 10, "text": rows[0].text[:10],
                                                "labels": ["Chemical"]}
    (annotation,) = first["annotations"]
    assert [r["value"]["labels"][0] for r in annotation["result"]] == [s.label for s in rows[0].spans]
    draft = next(t for t, r in zip(tasks, rows, strict=True) if not r.labelled and r.spans)
    assert draft["annotations"] == [] and draft["predictions"][0]["model_version"] == "nerlab draft"
    config = io.labelstudio_config(["Chemical", "Disease"])
    assert '<Labels name="label" toName="text">' in config and '<Text name="text" value="$text"/>' in config
    with pytest.raises(projects.NerlabError, match="only to Label Studio"):
        io.export(db, rich, "jsonl", run_id=run_id)


def test_doccano_export_is_what_doccano_imports(db, demo):
    line = io.export(db, demo["id"], "doccano").splitlines()[0]
    obj = json.loads(line)
    assert obj["text"].startswith("Selegiline") and obj["label"][0] == [0, 10, "Chemical"]
    assert {"split", "labelled"} <= set(obj)  # kept by doccano as metadata


def test_spacy_docbin_export(db, demo):
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import DocBin

    data = io.export(db, demo["id"], "spacy", split="dev")
    docs = list(DocBin().from_bytes(data).get_docs(spacy.blank("xx").vocab))
    rows = io.export_rows(db, demo["id"], split="dev")
    assert len(docs) == len(rows) == 60
    assert [d.text for d in docs] == [r.text for r in rows]
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs] == \
        [[(s.start, s.end, s.label) for s in r.spans] for r in rows]


def test_spacy_export_says_how_to_install_spacy(db, demo, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy" or name.startswith("spacy."):
            raise ImportError("No module named 'spacy'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    with pytest.raises(projects.NerlabError, match=r"pip install 'nerlab\[spacy\]'"):
        io.export(db, demo["id"], "spacy")


@pytest.mark.parametrize("fmt", ["conll", "jsonl", "labelstudio", "doccano"])
def test_sentences_no_split_was_named_for_stay_movable(db, fmt):
    """A sentence that landed in train because nothing named a split comes back as such, so a
    later random split may still draw it into dev."""
    p = projects.create_project(db, "plain")
    projects.add_sentences(db, p["id"], [projects.SentenceRecord("Just text .", labelled=True)])
    out = io.export(db, p["id"], fmt)
    back = projects.create_project(db, "back")
    io.import_bytes(db, back["id"], out.encode(), None, name=f"x.{fmt}")
    (row,) = io.export_rows(db, back["id"])
    assert (row.split, row.split_source) == ("train", "default")
