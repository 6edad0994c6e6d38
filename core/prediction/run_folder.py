"""A run's model folder made self-contained from the database: ``nerlab.json``, ``README.md``
and, for a prompt that shows examples, the examples it draws them from (``examples.jsonl``).

The worker writes them when a run ends (with its scores); ``nerlab predict`` writes them first
for a run from before NERLab did. Afterwards the folder needs no database: copy it (with the
base model, or its name) to another machine and load it with :func:`core.prediction.api.load`.
"""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database

from core import config
from core.data import projects
from core.data.db import now
from core.data.runs import get_run
from core.errors import NerlabError
from core.evaluation import run_scores
from core.models import run_card
from core.prediction import crf, encoder, encoder_folder
from core.prediction.predictors import EXAMPLES_FILE, MODEL_DIRS, kinds, write_examples
from core.prompts.plan import plan_for_run

#: What a score keeps in the manifest (the rest stays in the database).
_SCORE_KEYS = ("n_sentences", "micro", "macro", "per_class", "mode")
#: Kinds whose models answer a prompt.
PROMPTED = ("train", "zero-shot", "few-shot")


def model_folder(run: dict) -> Path:
    """Where a run keeps its model (``runs/ID/adapter`` for a training run, ``runs/ID/encoder``
    for an encoder, ``runs/ID`` for a CRF or a prompt, the folder a registered kind named)."""
    sub = MODEL_DIRS.get(run["kind"], ".")
    folder = config.runs_dir() / str(run["id"])
    return folder if sub == "." else folder / sub


def check_predictable(run: dict) -> Path:
    """The model folder of a run that can predict new sentences, else a NerlabError saying why
    not: a job that is no model, a run still queued or running, a failed run, a missing model."""
    rid, kind, status = run["id"], run["kind"], run["status"]
    if kind not in kinds():
        raise NerlabError(f"Run {rid} is a {kind} job, not a model: give the id of a training "
                          f"run or a baseline ({', '.join(kinds())}); `nerlab runs PROJECT` "
                          "lists them.")
    if status in ("queued", "running"):
        raise NerlabError(f"Run {rid} is still {status}; predict with it when it has finished "
                          f"(or stop it: nerlab stop {rid} keeps what it saved).")
    if status == "failed":
        raise NerlabError(f"Run {rid} failed ({run['error_kind']}: {run['error_message']}); it "
                          "has no model to predict with. Start a new run.")
    folder = model_folder(run)
    missing = {
        "train": [] if (folder / "adapter_config.json").is_file() else ["adapter"],
        "crf": [] if ((folder / crf.CRF_FILE).is_file() or (folder / crf.NATIVE_FILE).is_file())
        else ["CRF model"],
        "encoder": [] if (folder / encoder_folder.META_FILE).is_file() else ["encoder"],
    }.get(kind, [] if kind in PROMPTED or folder.is_dir() else ["model folder"])
    if missing:
        raise NerlabError(f"Run {rid} ({status}) has no saved {missing[0]} in {folder}: "
                          "it stopped before saving one. Start a new run.")
    return folder


def _scores(db: Database, run_id: int) -> dict:
    out = {}
    for split in ("dev", "test"):
        metrics = run_scores.stored_metrics(db, run_id, split)
        if metrics:
            out[split] = {k: metrics[k] for k in _SCORE_KEYS if k in metrics}
    return out


def build_manifest(db: Database, run: dict) -> dict:
    """``nerlab.json`` for a run, from the database (and, for a training run, what its adapter
    recorded when it was saved: the template and entity types it was trained with win)."""
    kind, cfg = run["kind"], run["config"] or {}
    project = projects.get_project(db, run["project_id"])
    labels = projects.list_labels(db, run["project_id"])
    manifest: dict = {
        "nerlab_format": run_card.FORMAT, "kind": kind, "run_id": run["id"],
        "run_name": run["name"], "project": project["name"], "status": run["status"],
        "finished_at": run["finished_at"], "labels": [r["name"] for r in labels],
        "entity_types": [{"name": r["name"], "description": r["description"] or "",
                          "color": r["color"]} for r in labels],
        "scores": _scores(db, run["id"]),
    }
    if kind in PROMPTED:
        if kind == "train":
            base = cfg.get("base_model") or run["base_model"]
            constrained = bool((cfg.get("train") or {}).get("constrained", True))
        else:
            base = run["base_model"] or cfg.get("base_model") or config.BUNDLED_MODEL
            constrained = bool(cfg.get("constrained", True))
        info = run_card.portable_base(base)
        manifest.update(base_model=info["name"] or base, base_model_info=info,
                        decoding={"constrained": constrained})
    if kind == "encoder":
        manifest.update(encoder_manifest(run))
    if kind == "train":
        try:
            saved = run_card.read_manifest(model_folder(run))
        except NerlabError:
            saved = {}
        keep = {k: saved[k] for k in ("template", "template_version", "entity_types", "labels",
                                      "prompt") if saved.get(k)}
        manifest = {**saved, **manifest, **keep}
    return manifest


def encoder_manifest(run: dict) -> dict:
    """What an encoder run's manifest adds: its base model, settings and tags (from the folder's
    own description when it has one)."""
    cfg = run["config"] or {}
    base = cfg.get("base_model") or run["base_model"] or encoder.BUNDLED_ENCODER
    try:
        saved = encoder_folder.read_meta(model_folder(run))
    except NerlabError:
        saved = {}
    info = ({"name": base, "kind": "bundled", "hub_id": encoder.MINILM_HUB_ID}
            if base == encoder.BUNDLED_ENCODER else run_card.portable_base(base))
    return {"base_model": base, "base_model_info": info,
            "config": saved.get("settings") or encoder.EncoderSettings.from_dict(cfg).to_dict(),
            "tags": saved.get("tags") or [], "training": saved.get("info") or {}}


def write_run_card(db: Database, run_id: int, status: str | None = None) -> Path | None:
    """Write a finished (or stopped) run's ``nerlab.json``, ``README.md`` and examples into its
    model folder; return the folder (None for a run without a model to describe). ``status``:
    the run's outcome when its worker writes the card before recording it."""
    run = get_run(db, run_id)
    if status:
        run["status"] = status
        run["finished_at"] = run["finished_at"] or now()
    try:
        folder = check_predictable(run)
    except NerlabError:
        return None
    manifest = build_manifest(db, run)
    if run["kind"] in PROMPTED:
        shots = selection = None
        if run["kind"] != "train":
            shots = int(run["config"].get("shots", 0) or 0)
            selection = run["config"].get("selection")
        plan = plan_for_run(db, run, shots=shots, selection=selection)
        if not manifest.get("template"):
            manifest["template"] = plan.template.to_dict()
            manifest["template_version"] = plan.template.version
        prompt = manifest.get("prompt") or {"shots": plan.shots, "selection": plan.selection}
        manifest["prompt"] = prompt
        if int(prompt.get("shots") or 0):
            examples = plan.fixed if prompt.get("selection") == "fixed" else plan.train
            write_examples(folder / EXAMPLES_FILE, examples)
    folder.mkdir(parents=True, exist_ok=True)
    run_card.write_card(folder, manifest)
    if run["kind"] == "train":
        run_card.patch_adapter_config(folder, manifest.get("base_model_info") or {})
    return folder


def ensure_card(db: Database, run: dict) -> Path:
    """The model folder of a run that can predict, its manifest written first when it has none
    yet (a run from before NERLab wrote them) or an older one."""
    folder = check_predictable(run)
    try:
        current = run_card.read_manifest(folder)
    except NerlabError:
        current = {}
    if current.get("nerlab_format") != run_card.FORMAT or not current.get("kind"):
        written = write_run_card(db, run["id"])
        folder = written or folder
    return folder


def run_title(run: dict) -> str:
    """``#12 crf-12`` for suggestion records and messages."""
    return f"#{run['id']} {run['name'] or run['kind']}"

