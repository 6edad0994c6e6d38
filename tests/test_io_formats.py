"""Each tool's documented format, from hand-written samples in ``tests/data`` (see its README):
read by content, what is kept, what is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import io, projects
from core.data.spans import Span
from core.errors import ImportFormatError

DATA = Path(__file__).resolve().parent / "data"
CONLL2003_TAGS = "O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC"


def _rows(db, pid):
    return {r.text: r for r in io.export_rows(db, pid, include_unlabelled=True)}


def _import(db, name, **kwargs):
    project = projects.create_project(db, f"p-{name}-{len(projects.list_project_names(db))}")
    result = io.import_file(db, project["id"], DATA / name, **kwargs)
    return project["id"], result


@pytest.mark.parametrize(("name", "fmt"), [
    ("labelstudio_export.json", "labelstudio"), ("labelstudio_min.json", "labelstudio"),
    ("labelstudio_review_field.json", "labelstudio"), ("labelstudio_conll2003.conll", "conll"),
    ("doccano.jsonl", "doccano"), ("doccano_entities.jsonl", "doccano"),
    ("prodigy_db_out.jsonl", "jsonl"), ("hf_conll2003_rows.jsonl", "hf"),
    ("hf_string_tags.json", "hf"), ("crlf_bom.conll", "conll"), ("crlf_bom.jsonl", "jsonl"),
    ("duplicates.jsonl", "jsonl"),
])
def test_formats_are_read_from_the_content(name, fmt):
    assert io.detect_format((DATA / name).read_bytes(), "upload.dat") == fmt


def test_a_conll_file_with_a_bad_line_is_still_read_as_conll():
    """Content first, but a CoNLL name and mostly token lines keep a broken CoNLL file CoNLL, so
    the error names its line instead of importing it as sentences."""
    assert io.detect_format(b"Aspirin B-Chemical\nworks Q\n", "bad.conll") == "conll"
    assert io.detect_format(b"Aspirin B-Chemical\ncauses O\nworks Q\n", "upload") == "conll"
    assert io.detect_format(b"Aspirin helps.\nIt works.\n", "notes.conll.txt") == "text"


def test_doccano_without_a_format_is_doccano_not_jsonl_with_no_spans(db):
    """Before: a doccano .jsonl was read as NERLab JSONL and imported 0 spans without a word."""
    pid, result = _import(db, "doccano.jsonl")
    assert result.format == "doccano" and result.added == 3
    rows = _rows(db, pid)
    assert rows["Aspirin causes gastric ulcers."].spans == [Span(0, 7, "Chemical"), Span(15, 29, "Disease")]
    assert rows["No entities in this one."].labelled
    # Told it is NERLab JSONL, the reader says what it is instead of importing no spans.
    other = projects.create_project(db, "forced")
    with pytest.raises(ImportFormatError, match="line 1: this looks like doccano JSONL"):
        io.import_file(db, other["id"], DATA / "doccano.jsonl", fmt="jsonl")


def test_doccano_entities_export(db):
    pid, result = _import(db, "doccano_entities.jsonl")
    rows = _rows(db, pid)
    assert rows["Heparin may cause bleeding."].spans == [Span(0, 7, "Chemical"), Span(18, 26, "Disease")]
    assert rows["Warfarin overdose."].spans == [Span(0, 8, "Chemical")]


def test_labelstudio_json_prefers_ground_truth_and_says_which_annotator_was_taken(db):
    pid, result = _import(db, "labelstudio_export.json")
    rows = _rows(db, pid)
    first = rows["Aspirin causes gastric ulcers."]
    assert first.spans == [Span(0, 7, "Chemical"), Span(15, 29, "Disease")]  # relation, choices skipped
    assert (first.labelled, first.annotator) == (True, "1")
    assert first.updated_at == "2024-03-01T10:05:00+00:00"
    truth = rows["Lithium toxicity was reported."]  # the ground-truth annotation, not the first
    assert truth.spans == [Span(0, 7, "Chemical"), Span(8, 16, "Disease")]
    assert truth.annotator == "reviewer@example.org"
    assert rows["Heparin may cause bleeding."].spans == [Span(0, 7, "Chemical")]
    assert any("task 3: annotation 1 of 2 (annotator 3)" in n for n in result.notes)
    assert not rows["Not annotated yet."].labelled and rows["Not annotated yet."].spans == []
    assert not rows["Skipped by the annotator."].labelled  # cancelled only
    emoji = rows["😀 Warfarin overdose 😀"]  # UTF-16 offsets from the browser, converted
    assert emoji.text[emoji.spans[0].start:emoji.spans[0].end] == "Warfarin"


def test_labelstudio_json_min_with_two_annotators(db):
    """Before: JSON-MIN was rejected ("expected an object with data")."""
    pid, result = _import(db, "labelstudio_min.json")
    assert result.added == 3
    rows = _rows(db, pid)
    assert rows["Aspirin causes gastric ulcers."].spans == [Span(0, 7, "Chemical"), Span(15, 29, "Disease")]
    assert rows["Lithium toxicity was reported."].spans == [Span(0, 7, "Chemical")]  # the first row
    assert any("task 2: the first of 2 rows (annotator 1)" in n for n in result.notes)
    assert not rows["Nobody has labelled this one."].labelled


def test_labelstudio_text_field_comes_from_the_config_never_from_another_field(db):
    """Before: a task without data.text imported its first string field ("clinic notes, 2024")
    as the sentence."""
    project = projects.create_project(db, "ls")
    with pytest.raises(ImportFormatError, match=r'task 1: no text in the "text" field \(fields: review, source\)'):
        io.import_file(db, project["id"], DATA / "labelstudio_review_field.json")
    assert projects.stats(db, project["id"])["sentences"] == 0
    config = (DATA / "labelstudio_config.xml").read_text()
    result = io.import_file(db, project["id"], DATA / "labelstudio_review_field.json", label_config=config)
    assert result.added == 1
    (row,) = io.export_rows(db, project["id"])
    assert row.text == "Ibuprofen relieved the headache."
    assert row.spans == [Span(0, 9, "Chemical"), Span(23, 31, "Disease")]
    again = projects.create_project(db, "ls2")
    assert io.import_file(db, again["id"], DATA / "labelstudio_review_field.json",
                          text_field="review").added == 1


def test_labelstudio_regions_without_offsets_are_reported_not_dropped(db):
    """Before: the region was dropped and the sentence imported as done (a silent false negative)."""
    pid, result = _import(db, "labelstudio_no_offsets.json")
    (note,) = [n for n in result.notes if "no character offsets" in n]
    assert "1 labelled region(s) in 1 task(s)" in note and "(tasks 1)" in note
    rows = _rows(db, pid)
    first = rows["Cisplatin caused nephrotoxicity."]
    assert not first.labelled and first.spans == [Span(0, 9, "Chemical")]  # a draft to finish
    assert rows["Morphine eased the pain."].labelled


def test_labelstudio_conll2003_export(db):
    pid, result = _import(db, "labelstudio_conll2003.conll")
    rows = _rows(db, pid)
    assert rows["Aspirin causes gastric ulcers ."].spans == [Span(0, 7, "Chemical"), Span(15, 29, "Disease")]
    assert rows["Lithium toxicity"].spans == [Span(0, 7, "Chemical"), Span(8, 16, "Disease")]


def test_prodigy_db_out_keeps_annotators_and_times_and_reports_disagreement(db):
    """Before: _annotator_id and _timestamp were dropped, and the second annotator's copy was
    skipped as a plain duplicate."""
    pid, result = _import(db, "prodigy_db_out.jsonl")
    assert (result.added, result.duplicates) == (2, 1)
    rows = _rows(db, pid)
    first = rows["Aspirin causes gastric ulcers."]
    assert first.annotator == "bc5cdr-alice" and first.updated_at == "2024-03-01T10:00:00+00:00"
    assert first.spans == [Span(0, 7, "Chemical"), Span(15, 29, "Disease")]
    assert rows["Lithium toxicity was reported."].split == "test"  # meta.split
    assert "This one was rejected." not in rows and "This one was ignored." not in rows
    assert any("2 Prodigy example(s) answered reject or ignore were skipped (lines 3, 4)" in n
               for n in result.notes)
    (conflict,) = result.conflicts  # bob's copy differs from alice's, which was kept
    assert (conflict.line, conflict.number, conflict.kept_line) == (2, 1, 1)


def test_hf_rows_with_numeric_tags_need_the_tag_names(db):
    project = projects.create_project(db, "hf")
    with pytest.raises(ImportFormatError, match="line 1: \"ner_tags\" are numbers and the dataset does not name them"):
        io.import_file(db, project["id"], DATA / "hf_conll2003_rows.jsonl")
    io.import_file(db, project["id"], DATA / "hf_conll2003_rows.jsonl", tags=CONLL2003_TAGS)
    rows = _rows(db, project["id"])
    eu = rows["EU rejects German call to boycott British lamb ."]
    assert eu.spans == [Span(0, 2, "ORG"), Span(11, 17, "MISC"), Span(34, 41, "MISC")]
    assert rows["Peter Blackburn"].spans == [Span(0, 15, "PER")]


def test_hf_json_list_with_string_tags_and_splits(db):
    pid, _ = _import(db, "hf_string_tags.json")
    rows = _rows(db, pid)
    assert rows["Aspirin causes gastric ulcers ."].split == "dev"  # validation
    assert rows["Lithium toxicity"].split == "test"


def _conll2003_like(tmp_path):
    import datasets

    names = CONLL2003_TAGS.split(",")
    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
    })
    rows = {
        "train": {"id": ["0"], "tokens": [["EU", "rejects", "German", "call"]], "ner_tags": [[3, 0, 7, 0]]},
        "validation": {"id": ["1"], "tokens": [["Peter", "Blackburn"]], "ner_tags": [[1, 2]]},
        "test": {"id": ["2"], "tokens": [["SOCCER", "-", "JAPAN", "GET"]], "ner_tags": [[0, 0, 5, 0]]},
    }
    return datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in rows.items()})


def test_hf_save_to_disk_folder_with_classlabel_names(db, tmp_path):
    """Before: a Hugging Face dataset could not be imported at all."""
    folder = tmp_path / "conll2003"
    _conll2003_like(tmp_path).save_to_disk(str(folder))
    project = projects.create_project(db, "hf-disk")
    result = io.import_file(db, project["id"], folder)
    assert result.added == 3 and set(result.new_labels) == {"ORG", "MISC", "PER", "LOC"}
    rows = _rows(db, project["id"])
    assert rows["EU rejects German call"].spans == [Span(0, 2, "ORG"), Span(11, 17, "MISC")]
    assert {r.text: r.split for r in rows.values()} == {
        "EU rejects German call": "train", "Peter Blackburn": "dev", "SOCCER - JAPAN GET": "test"}


def test_hf_parquet_files(db, tmp_path):
    dd = _conll2003_like(tmp_path)
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    for split, ds in dd.items():
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    project = projects.create_project(db, "hf-parquet")
    io.import_file(db, project["id"], tmp_path / "parquet")  # a folder of split files
    assert projects.split_counts(db, project["id"]) == {"train": 1, "dev": 1, "test": 1}
    one = projects.create_project(db, "hf-one-parquet")
    data = (folder / "validation-00000-of-00001.parquet").read_bytes()
    result = io.import_bytes(db, one["id"], data, None, name="validation-00000-of-00001.parquet")
    assert result.format == "hf"
    (row,) = io.export_rows(db, one["id"])
    assert (row.text, row.split, row.spans) == ("Peter Blackburn", "dev", [Span(0, 15, "PER")])


def test_crlf_and_bom(db):
    pid, result = _import(db, "crlf_bom.conll")
    rows = _rows(db, pid)
    assert rows["Aspirin causes ulcers"].split == "dev" and rows["Lithium toxicity"].split == "test"
    assert rows["Aspirin causes ulcers"].spans == [Span(0, 7, "Chemical"), Span(15, 21, "Disease")]
    pid, result = _import(db, "crlf_bom.jsonl")
    assert set(_rows(db, pid)) == {"Aspirin causes ulcers.", "Second line."}  # no stray \r


def test_duplicates_that_disagree_are_reported_with_their_lines_and_numbers(db):
    """Before: "3 duplicate(s) skipped" and no word about which copy won or that labels differ."""
    project = projects.create_project(db, "dups")
    projects.add_sentences(db, project["id"], [projects.SentenceRecord("Already here .", labelled=False)])
    result = io.import_file(db, project["id"], DATA / "duplicates.jsonl")
    assert (result.added, result.duplicates) == (2, 4)
    # line 2: same spans on other spacing (not a conflict); line 3: lacks the Disease span;
    # line 5: another type; line 6: not done, carries no labels (not a conflict)
    assert [(c.line, c.number, c.kept_line) for c in result.conflicts] == [(3, 2, 1), (5, 3, 4)]
    assert "2 of them with labels that differ from the copy kept" in result.summary()
    details = "\n".join(result.details())
    assert "(sentence(s) 2-3)" in details and "line 3 differs from sentence 2 (line 1 of this file)" in details


def test_update_applies_corrections_made_in_another_tool(db):
    """Before: re-importing corrected labels gave "0 added; N duplicate(s) skipped"."""
    project = projects.create_project(db, "upd", labels=["Chemical", "Disease"])
    pid = project["id"]
    io.import_bytes(db, pid, (DATA / "doccano.jsonl").read_bytes(), "doccano", name="v1.jsonl")
    first = {r.text: r for r in io.export_rows(db, pid)}["Aspirin causes gastric ulcers."]
    version = projects.get_sentence(db, first.id)["version"]
    corrected = (
        '{"text": "Aspirin  causes gastric ulcers.", "label": [[0, 7, "Chemical"], [16, 23, "Disease"]],'
        ' "annotator": "maria"}\n'
        '{"text": "Lithium toxicity was reported.", "label": [[0, 7, "Chemical"], [8, 16, "Disease"]]}\n'
        '{"text": "A new sentence.", "label": []}\n'
    )
    plain = io.import_bytes(db, pid, corrected.encode(), None, name="v2.jsonl")
    assert (plain.added, plain.duplicates, len(plain.conflicts), plain.updated) == (1, 2, 1, 0)
    result = io.import_bytes(db, pid, corrected.encode(), None, name="v2.jsonl", update=True)
    assert (result.added, result.updated, result.spans_added, result.spans_removed) == (0, 1, 1, 1)
    assert result.updated_numbers == [1]
    assert "1 sentence(s) updated (1 span(s) added, 1 removed)" in result.summary()
    row = {r.text: r for r in io.export_rows(db, pid)}["Aspirin causes gastric ulcers."]
    # The stored text keeps its spacing; the corrected span lands on it ("gastric", 15-22).
    assert row.spans == [Span(0, 7, "Chemical"), Span(15, 22, "Disease")]
    assert row.annotator == "maria"
    assert projects.get_sentence(db, first.id)["version"] == version + 1  # as save_annotation


def test_jsonl_tokens_are_checked_against_the_text_and_the_spans(db):
    """Before: any token offsets were stored, and the CoNLL export wrote an empty token and lost
    the entity."""
    project = projects.create_project(db, "tok")
    bad = [
        ('{"text": "Aspirin works", "spans": [], "tokens": [{"start": -3, "end": 7}]}',
         "line 1: token 0 (-3-7) is empty or outside the text"),
        ('{"text": "Aspirin works", "spans": [], "tokens": [{"start": 0, "end": 40}]}',
         "line 1: token 0 (0-40) is empty or outside the text of 13 characters"),
        ('{"text": "Aspirin works", "spans": [], "tokens": [{"start": 0, "end": 7}, {"start": 5, "end": 13}]}',
         "line 1: token 1 (5-13) overlaps"),
        ('{"text": "Aspirin works", "spans": [{"start": 0, "end": 7, "label": "C"}],'
         ' "tokens": [{"start": 0, "end": 4}, {"start": 4, "end": 13}]}',
         "line 1: span 0-7 (C) ends inside token 1 (4-13 'rin works')"),
        ('{"text": "Aspirin works", "spans": [{"start": 8, "end": 13, "label": "C"}],'
         ' "tokens": [{"start": 0, "end": 7}]}',
         "line 1: span 8-13 (C) starts at character 8, where no token starts"),
        ('{"text": "Aspirin works", "spans": [], "tokens": [{"start": 0, "end": 7, "text": "Aspi"}]}',
         "line 1: \"tokens\"[0] text 'Aspi' is not the text"),
    ]
    for line, message in bad:
        with pytest.raises(ImportFormatError) as err:
            io.import_bytes(db, project["id"], line.encode(), "jsonl", name="t.jsonl")
        assert message in str(err.value)
    assert projects.stats(db, project["id"])["sentences"] == 0


def test_jsonl_spans_off_the_default_tokens_get_tokens_that_agree(db):
    """Before: such a record was stored without tokens, so the span fell inside a token."""
    project = projects.create_project(db, "cut")
    line = '{"text": "Anti-TNF therapy helped.", "spans": [{"start": 5, "end": 8, "label": "Chemical"}]}'
    io.import_bytes(db, project["id"], line.encode(), "jsonl")
    (row,) = io.export_rows(db, project["id"])
    assert row.tokens == [(0, 5), (5, 8), (9, 16), (17, 23), (23, 24)]
    assert "TNF\tB-Chemical" in io.to_conll([row])


@pytest.mark.parametrize("sep", ["\u2028", "\u0085", "\u2029", "\u000b", "\u001c"])
def test_jsonl_with_line_separators_inside_strings_round_trips(db, sep):
    """Before: str.splitlines cut the record at U+2028/U+0085/U+2029 and the import failed."""
    project = projects.create_project(db, "sep")
    text = f"Aspirin{sep}causes ulcers ."
    projects.add_sentences(db, project["id"], [projects.SentenceRecord(
        text, spans=[Span(0, 7, "Chemical")], labelled=True)])
    exported = io.export(db, project["id"], "jsonl")
    if ord(sep) > 0x7F:
        assert sep in exported  # written raw (ensure_ascii=False); JSON escapes control characters
    again = projects.create_project(db, "sep2")
    io.import_bytes(db, again["id"], exported.encode(), None, name="sep.jsonl")
    (row,) = io.export_rows(db, again["id"])
    assert row.text == text and row.spans == [Span(0, 7, "Chemical")]


@pytest.mark.parametrize("label", ["\x00", "\u200b", "A\u200dB", "Chem\x07", "\u202eChem", "\ufeff", "\u0301"])
def test_invisible_entity_type_names_are_refused(db, label):
    """Before: a NUL or zero-width entity type was accepted (and shown as an empty chip)."""
    project = projects.create_project(db, "labels")
    line = json.dumps({"text": "Aspirin works .", "spans": [{"start": 0, "end": 7, "label": label}]})
    with pytest.raises(ImportFormatError, match="line 1: Entity type name .* is not allowed"):
        io.import_bytes(db, project["id"], line.encode(), "jsonl", name="l.jsonl")
    with pytest.raises(projects.NerlabError, match="not allowed"):
        projects.add_label(db, project["id"], label)
    assert projects.list_labels(db, project["id"]) == []


def test_errors_found_after_parsing_name_the_task_or_row(db, tmp_path):
    project = projects.create_project(db, "where")
    tasks = [{"data": {"text": "Fine."}},
             {"data": {"text": "Aspirin works."}, "annotations": [{"result": [
                 {"value": {"start": 0, "end": 7, "text": "Aspirin", "labels": ["A", "B"]}}]}]}]
    with pytest.raises(ImportFormatError, match=r"^ls\.json, task 2: spans overlap"):
        io.import_bytes(db, project["id"], json.dumps(tasks).encode(), None, name="ls.json")
    import datasets

    rows = {"tokens": [["a"], ["b", "c"]], "ner_tags": [["O"], ["B-X", "O"]],
            "text": ["a", "b c"], "spans": [[], [{"start": 0, "end": 3, "label": "X"},
                                                 {"start": 2, "end": 3, "label": "Y"}]]}
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ImportFormatError, match=r"^ds, validation row 2: spans overlap"):
        io.import_file(db, project["id"], tmp_path / "ds")
    assert projects.stats(db, project["id"])["sentences"] == 0


def test_a_json_list_of_span_records_is_read_as_jsonl(db):
    project = projects.create_project(db, "array")
    data = json.dumps([{"text": "Aspirin works.", "spans": [{"start": 0, "end": 7, "label": "C"}]},
                       {"text": "Bad one.", "spans": [{"start": 0, "end": 70, "label": "C"}]}])
    with pytest.raises(ImportFormatError, match=r"^a\.json, item 2: span 0-70"):
        io.import_bytes(db, project["id"], data.encode(), None, name="a.json")
    with pytest.raises(ImportFormatError, match="task 1: this looks like a NERLab / spaCy record"):
        io.import_bytes(db, project["id"], data.encode(), "labelstudio", name="a.json")
    good = json.dumps([{"text": "Aspirin works.", "spans": [{"start": 0, "end": 7, "label": "C"}]}])
    assert io.import_bytes(db, project["id"], good.encode(), None, name="a.json").format == "jsonl"
