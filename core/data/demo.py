"""The demo project: a slice of BC5CDR (CC-BY 4.0) shipped in ``assets/demo``."""

from __future__ import annotations

from sqlite_utils import Database

from core import config
from core.data import io, projects
from core.errors import NotFound

GUIDELINES = {
    "Chemical": "Drugs and chemical substances, including brand names and abbreviations (e.g. 'lithium', 'L-dopa').",
    "Disease": "Diseases, disorders, symptoms and adverse effects (e.g. 'hypotension', 'Parkinson's disease').",
}


DESCRIPTION = (
    "PubMed sentences labelled for chemicals and diseases: a slice of BC5CDR "
    "(Li et al., 2016; IOB form by Crichton et al., 2017), CC-BY 4.0."
)


def ensure_demo_project(db: Database, name: str = config.DEMO_PROJECT) -> dict:
    """Create the demo project from ``assets/demo`` unless a project of that name exists."""
    try:
        return projects.get_project(db, name)
    except NotFound:
        pass
    folder = config.assets_dir() / "demo"
    with db.atomic():
        project = projects.create_project(db, name, labels=list(GUIDELINES), description=DESCRIPTION)
        for row in projects.list_labels(db, project["id"]):
            projects.update_label(db, row["id"], description=GUIDELINES[row["name"]])
        for fname, fmt, split in (
            ("train.conll", "conll", "train"),
            ("unlabelled.txt", "text", "train"),
            ("dev.conll", "conll", "dev"),
            ("test.conll", "conll", "test"),
        ):
            io.import_file(db, project["id"], folder / fname, fmt=fmt, split=split)
    return project
