"""Hostile input: every generated shape (see ``tests/hostile.py``) ends as records or as an
``ImportFormatError`` naming the file, the place and the field; a refused file writes nothing."""

from __future__ import annotations

import re

import pytest

from core.data import io, projects
from core.data.db import get_db
from core.errors import ImportFormatError
from tests import hostile

SHAPES = hostile.shapes()
BY_ID = {s.id: s for s in SHAPES}
#: The reader's last resort: if a message says this, a shape reached code that tripped over it.
GAP = "found a gap"
PLACE = re.compile(r"(line|task|row|doc) \d+|is empty|holds no|not UTF-8|UTF-16|nested too deeply"
                   r"|expected a JSON|not valid JSON|not readable JSON"
                   # a binary file is refused whole: there is no line to name
                   r"|not a readable Hugging Face dataset|the zip |not a spaCy DocBin|needs spaCy")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = get_db(tmp_path_factory.mktemp("hostile") / "nerlab.db")
    project = projects.create_project(db, "hostile", labels=["Chemical", "Disease"])
    return db, project["id"]


def _rows(db) -> int:
    return sum(db[t].count for t in ("projects", "labels", "sentences", "spans"))


def _check(store, shape: hostile.Shape, fmt: str | None) -> None:
    db, pid = store
    name = f"hostile-{shape.fmt}.dat"
    before = _rows(db)
    try:
        result = io.import_bytes(db, pid, shape.data, fmt, name=name)
    except ImportFormatError as exc:
        msg = str(exc)
        assert GAP not in msg, msg
        assert name in msg or msg.startswith("Unknown"), msg
        assert PLACE.search(msg), f"no line/task/row in: {msg}"
        if shape.field:  # refused because of the field we broke: the message names it
            assert _names(shape.field, msg), f"{shape.field!r} not named in: {msg}"
        assert _rows(db) == before, "a refused file wrote rows"
    else:
        assert result.added + result.duplicates >= 0


#: Fields whose refusal may be worded by what they mean rather than by their key.
SYNONYMS = {"label": ("entity type",), "labels": ("entity type",), "text": ("sentence",),
            "ner_tags": ("tag",), "tokens": ("token",), "token_offsets": ("token",),
            "data": ('"text" field',),
            # An offset moved onto another span's ground is refused as the overlap it makes.
            "start": ("overlap",), "end": ("overlap",), "start_offset": ("overlap",),
            "end_offset": ("overlap",)}


def _names(field: str, msg: str) -> bool:
    low = msg.lower()
    return field.lower() in low or any(w in low for w in SYNONYMS.get(field, ()))


@pytest.mark.parametrize("shape_id", hostile.CRASHED_BEFORE)
def test_shapes_that_crashed_before_give_a_message(store, shape_id):
    _check(store, BY_ID[shape_id], BY_ID[shape_id].fmt)


@pytest.mark.parametrize("fmt_family", sorted({s.id.split(":")[0] for s in SHAPES}))
def test_every_generated_shape_gives_records_or_a_message(store, fmt_family):
    shapes = [s for s in SHAPES if s.id.split(":")[0] == fmt_family]
    assert shapes
    failures = []
    for shape in shapes:
        for fmt in (shape.fmt, None):  # as the format it is, and read from its content
            try:
                _check(store, shape, fmt)
            except AssertionError as exc:
                failures.append(f"{shape.id} as {fmt or 'auto'}: {str(exc)[:300]}")
            except Exception as exc:  # noqa: BLE001 - a crash is what this test looks for
                failures.append(f"{shape.id} as {fmt or 'auto'}: CRASH {type(exc).__name__}: {exc!s:.200}")
    assert failures == [], "\n".join(failures[:40])


def test_there_are_many_shapes():
    assert len(SHAPES) > 1000
    assert len(hostile.CRASHED_BEFORE) >= 82 and set(hostile.CRASHED_BEFORE) <= set(BY_ID)
