"""Where NERLab keeps its data, and the few constants the whole app agrees on."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the data directory (database, run artefacts, converted models).
HOME_ENV = "NERLAB_HOME"
#: Optional override for where converted base models live (tests share one converted copy).
MODELS_ENV = "NERLAB_MODELS_DIR"
#: Default data directory, relative to the working directory, when NERLAB_HOME is unset.
DEFAULT_HOME = "nerlab-data"
DB_FILENAME = "nerlab.db"

SPLITS = ("train", "dev", "test")
SPAN_ORIGINS = ("gold", "suggested", "model")
FINAL_STATUSES = ("finished", "failed", "stopped")

#: Name under which the bundled SmolLM2 model is offered as a base model.
BUNDLED_MODEL = "SmolLM2-135M-Instruct (bundled)"
DEMO_PROJECT = "BC5CDR demo"

#: Colours given to new entity types in turn (readable on white, distinct from each other).
LABEL_COLOURS = (
    "#f4a261", "#8ecae6", "#b5e48c", "#ffafcc", "#cdb4db",
    "#ffd166", "#90e0ef", "#e9c46a", "#a8dadc", "#f28482",
)


def home() -> Path:
    """Return the data directory, creating it if needed.

    ``NERLAB_HOME`` wins; otherwise ``./nerlab-data`` under the current working directory.
    """
    path = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    """Path of the SQLite database inside the data directory."""
    return home() / DB_FILENAME


def runs_dir() -> Path:
    """Folder holding one sub-folder of artefacts (adapter, log, predictions) per run."""
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Folder holding converted base models (the bundled GGUF turned into safetensors)."""
    override = os.environ.get(MODELS_ENV)
    path = Path(override).expanduser().resolve() if override else home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root() -> Path:
    """The checkout (or installed package parent) that holds ``assets/``."""
    return Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    """The shipped assets: demo data, the labelling widget's HTML/CSS/JS."""
    return project_root() / "assets"


#: Fewer labelled training sentences than this is an error; fewer than RECOMMENDED_TRAIN a warning.
MIN_TRAIN = 10


RECOMMENDED_TRAIN = 100
