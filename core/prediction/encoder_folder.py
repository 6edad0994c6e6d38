"""The encoder baseline's saved folder (:mod:`core.prediction.encoder`): weights, tokenizer and
NERLab's description of it (``nerlab_encoder.json``: tags, settings, how training went), written
atomically and loaded without the database.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.errors import ModelError
from core.prediction.encoder import (
    BUNDLED_ENCODER,
    MINILM_HUB_ID,
    EncoderBundle,
    EncoderSettings,
    quiet_transformers,
)

#: The model folder inside a run's folder, and the file NERLab adds to it.
ENCODER_DIR = "encoder"
META_FILE = "nerlab_encoder.json"
FORMAT_VERSION = 1


def save_encoder(bundle: EncoderBundle, folder: str | Path) -> Path:
    """Write a self-contained folder (weights, tokenizer, tags, settings) atomically.

    Everything goes to ``FOLDER.partial`` first, which then takes the place of ``folder``; a
    crash leaves the old folder, the new one, or the old one as ``FOLDER.old`` next to a
    complete ``FOLDER.partial`` (which :func:`tidy_encoder` puts right), never half of one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        bundle.model.save_pretrained(str(partial))
        bundle.tokenizer.save_pretrained(str(partial))
        meta = {"format": FORMAT_VERSION, "kind": "encoder", "tags": list(bundle.tags),
                "labels": bundle.labels, "settings": bundle.settings.to_dict(),
                "base_model_hub_id": MINILM_HUB_ID
                if bundle.settings.base_model == BUNDLED_ENCODER else bundle.settings.base_model,
                "info": {k: v for k, v in bundle.info.items() if _jsonable(v)}}
        (partial / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def tidy_encoder(folder: str | Path) -> Path | None:
    """Remove what a killed save left beside the encoder folder (``encoder.partial``,
    ``encoder.old``), keeping the newest complete encoder (its description, written last, tells
    a complete one). Call it only when no save runs. Returns the folder if it holds an encoder."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    if not (folder / META_FILE).is_file():
        for candidate in (partial, old):  # the partial one is the newer
            if (candidate / META_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(candidate, folder)
                break
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    return folder if (folder / META_FILE).is_file() else None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def read_meta(folder: str | Path) -> dict:
    """The encoder folder's own description (tags, settings), or a ModelError."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise ModelError(f"{folder} is not a saved encoder (no {META_FILE}).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} cannot be read: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ModelError(f"The encoder in {folder} has format {meta.get('format')!r}; this "
                         f"NERLab reads format {FORMAT_VERSION}.")
    return meta


def load_encoder(folder: str | Path) -> EncoderBundle:
    """Load a folder written by :func:`save_encoder`."""
    folder = Path(folder)
    meta = read_meta(folder)
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForTokenClassification.from_pretrained(str(folder))
    except OSError as exc:
        raise ModelError(f"The encoder in {folder} cannot be loaded: {exc}") from None
    model.eval()
    return EncoderBundle(model=model, tokenizer=tokenizer, tags=list(meta["tags"]),
                         settings=EncoderSettings.from_dict(meta.get("settings")),
                         info=meta.get("info") or {})
