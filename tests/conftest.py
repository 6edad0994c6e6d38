"""Shared fixtures: a temporary data directory, a migrated database, the demo project.

Converted base models are shared by the whole session (and kept between local runs) in
``.pytest_cache/nerlab-models``, so the bundled model is converted once, not per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import config
from core.models import loader

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def shared_models_dir():
    path = Path(os.environ.get("NERLAB_TEST_MODELS_DIR") or ROOT / ".pytest_cache" / "nerlab-models")
    path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get(config.MODELS_ENV)
    os.environ[config.MODELS_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(config.MODELS_ENV, None)
    else:
        os.environ[config.MODELS_ENV] = old


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh NERLAB_HOME for one test (database and run artefacts)."""
    monkeypatch.setenv(config.HOME_ENV, str(tmp_path))
    # The "try a sentence" process a test starts ends soon after its last request.
    monkeypatch.setenv("NERLAB_TRY_IDLE_S", "20")
    # No automatic CRF in the background of tests that do not ask for suggestions (a project's
    # own choice still wins).
    monkeypatch.setenv("NERLAB_SUGGEST_DEFAULT", "off")
    return tmp_path


@pytest.fixture
def db(home):
    """The migrated database inside the temporary data directory."""
    from core.data.db import get_db

    return get_db()


@pytest.fixture
def demo(db):
    """The BC5CDR demo project (300 labelled + 40 unlabelled train, 60 dev, 147 test)."""
    from core.data.demo import ensure_demo_project

    return ensure_demo_project(db)


@pytest.fixture(scope="session")
def bundled_model_path(shared_models_dir):
    """The bundled SmolLM2, converted to safetensors once per session (about 30 s)."""

    return loader.ensure_bundled_model()
