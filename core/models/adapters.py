"""A run's adapter on disk: save, find, load, merge."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config
from core.data.runs import get_run
from core.errors import NerlabError
from core.models import loader, merging, run_card
from core.models.loader import set_threads

ADAPTER_DIR = "adapter"


MERGED_DIR = "merged"


META_FILE = run_card.META_FILE


#: Largest safetensors shard a merge writes unless told otherwise (the Hugging Face Hub convention).
DEFAULT_SHARD_SIZE = "5GB"
#: Suffixes of the folders a save writes before it swaps them in (see :func:`save_adapter`).
PARTIAL = ".partial"
OLD = ".old"


@contextlib.contextmanager
def _peft_quietly() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated ``is_gradient_checkpointing`` when it wraps a
    model: a FutureWarning in every run's log that the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def save_adapter(model: Any, tokenizer: Any, folder: Path, meta: dict) -> Path:
    """Save the adapter (PEFT format), the tokenizer, ``nerlab.json`` (config, template
    version, entity types, base model) and a ``README.md`` saying what it is and how to load
    it, atomically: a crash mid-save keeps the previous adapter. ``adapter_config.json`` names
    the base model portably (see :func:`run_card.portable_base`), not the path it was loaded
    from."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + PARTIAL)
    tidy_adapter(folder)  # what a save killed earlier left behind
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    base = meta.get("base_model_info") or run_card.portable_base(
        meta.get("base_model") or (meta.get("config") or {}).get("base_model", ""))
    run_card.patch_adapter_config(tmp, base)
    # nerlab.json last: its presence marks a complete adapter (see _complete).
    (tmp / run_card.README).write_text(run_card.render_readme(meta), encoding="utf-8")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    old = folder.with_name(folder.name + OLD)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _complete(folder: Path) -> bool:
    """A whole saved adapter: ``nerlab.json`` is written last, after the weights."""
    return (folder / META_FILE).is_file() and (folder / "adapter_config.json").is_file()


def tidy_adapter(folder: str | Path) -> Path | None:
    """Remove what a save that was killed left next to the adapter (``adapter.partial``, which
    can hold tens of MB, and ``adapter.old``), keeping the newest complete adapter: a killed save
    that had written everything but the final swap is completed, one that had not is dropped.
    Call it only when no save runs (the run's own worker, or once its process is gone).
    Returns the adapter folder if there is one."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + PARTIAL)
    old = folder.with_name(folder.name + OLD)
    if not _complete(folder):
        for candidate in (partial, old):  # the partial one is the newer
            if candidate.is_dir() and _complete(candidate):
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(candidate, folder)
                break
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    return folder if _complete(folder) else None


def adapter_path(db: Database, run_id: int) -> Path:
    """The saved adapter folder of a run, or a NerlabError saying why there is none."""
    run = get_run(db, run_id)
    if run["kind"] != "train":
        raise NerlabError(f"Run {run_id} is a {run['kind']} run; only training runs have adapters.")
    folder = Path(run["artifact_path"] or config.runs_dir() / str(run_id) / ADAPTER_DIR)
    if not (folder / "adapter_config.json").is_file():
        raise NerlabError(f"Run {run_id} has no saved adapter (status {run['status']}).")
    return folder


def load_adapter(folder: str | Path, device: str | None = None, merge: bool = False,
                 dtype: str | None = None, base_model: str | None = None):
    """Load a saved run's base model with its adapter: ``(model, tokenizer)``.

    The base model is ``base_model`` if given, else the one recorded in ``nerlab.json`` (full
    precision, even for QLoRA runs; ``dtype`` as :func:`loader.load_model` takes it, default
    float32 on CPU, bf16 on a GPU that has it; a run trained in bf16 gets its bf16 base weights,
    computed in float32 on a CPU).
    """
    from peft import PeftModel

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    base = base_model or meta.get("base_model") or meta["config"]["base_model"]
    upcast = False
    if dtype is None and meta.get("dtype") == "bfloat16":
        # The base weights as the run trained on them (bf16); on a CPU computed in float32, as
        # the run predicted its own dev and test sentences (see core.training.fine_tune).
        dtype = "bfloat16"
        upcast = (device or loader.device_info().device) != "cuda"
    model, tokenizer = loader.load_model(base, dtype=dtype, device=device)
    if upcast:
        model.float()
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    with _peft_quietly():
        model = PeftModel.from_pretrained(model, str(folder))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def finished_adapter(db: Database, run_id: int) -> Path:
    """The adapter of a run that may be merged or exported: a training run that finished (or was
    stopped, which keeps the adapter saved last). A queued, running or failed run is refused with
    a NerlabError saying why."""
    run = get_run(db, run_id)
    if run["kind"] == "train" and run["status"] in ("queued", "running"):
        raise NerlabError(f"Run {run_id} is still {run['status']}; merge or export it when it has "
                          f"finished (or stop it: nerlab stop {run_id} keeps its adapter).")
    if run["kind"] == "train" and run["status"] == "failed":
        raise NerlabError(f"Run {run_id} failed ({run['error_kind']}: {run['error_message']}); "
                          "a failed run's adapter is not merged or exported. Start a new run.")
    return adapter_path(db, run_id)


def merge_run(db: Database, run_id: int, out: str | Path | None = None, dtype: str | None = None,
              max_shard_size: str | None = DEFAULT_SHARD_SIZE,
              log: Callable[[str], None] = print) -> Path:
    """Merge a run's adapter into its base model and save the result (with the tokenizer and its
    chat template) to ``runs/<id>/merged`` (or ``out``); return the folder. Loadable with plain
    ``AutoModelForCausalLM.from_pretrained``.

    ``dtype`` is ``bf16``, ``fp16`` or ``fp32``; None follows :func:`merging.default_dtype`.
    The adapted weights are merged in float32 and cast once at the end. ``max_shard_size``
    (e.g. ``"5GB"``) splits the weights into safetensors shards with an index.
    """
    started = time.perf_counter()
    folder = finished_adapter(db, run_id)
    meta = json.loads((folder / META_FILE).read_text())
    base = meta["config"]["base_model"]
    resolved = loader.resolve(base)
    base_dtype = merging.config_dtype(Path(resolved)) or merging.config_dtype(
        merging.local_base_folder(base))
    if dtype:
        target, why = merging.dtype_name(dtype), "asked for"
    else:
        target, why = merging.default_dtype(meta, base_dtype)
    # A half-precision base is exact in its own dtype; merging upcasts one layer at a time.
    load_dtype = base_dtype if base_dtype in ("bfloat16", "float16") else "float32"
    out_dir = Path(out) if out else merging.runs_merged_dir(run_id)
    log(f"Merging run {run_id}'s adapter into {base} ({merging.short_name(target)}: {why}).")
    set_threads()
    model, tokenizer = load_adapter(folder, device="cpu", dtype=load_dtype)
    model = merging.merge_into_base(model, target, log=log)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(tmp), **kwargs)
    tokenizer.save_pretrained(str(tmp))
    merged_meta = {**meta, "merged": {"dtype": target, "max_shard_size": max_shard_size,
                                      "from_adapter": str(folder)}}
    (tmp / META_FILE).write_text(json.dumps(merged_meta, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    info = merging.merged_info(out_dir) or {}
    log(f"Merged run {run_id}'s adapter into its base model in {time.perf_counter() - started:.1f} s: "
        f"{out_dir} ({merging.short_name(target)}, {merging.format_bytes(info.get('bytes', 0))} in "
        f"{info.get('shards', 0)} file(s))")
    return out_dir
