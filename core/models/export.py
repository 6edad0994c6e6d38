"""``nerlab export-model``: a trained run as files a serving engine loads directly.

``gguf``: one GGUF file of the merged model (llama.cpp, Ollama, LM Studio) and an Ollama
``Modelfile`` holding the run's prompt, in ``runs/<id>/export`` unless told otherwise.

The GGUF is converted from the run's merged folder (``nerlab merge``) when there is one precise
enough for the output type (fp32; fp16 for f16 and q8_0); otherwise the adapter is merged in
float32 into a temporary folder first, which is removed afterwards (a float32 copy of an 8B model
would take 32 GB of disk).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database

from core import config
from core.data.runs import get_run
from core.errors import NerlabError
from core.models import gguf_export, merging, modelfile
from core.models.adapters import finished_adapter, merge_run

FORMATS = ("gguf",)
EXPORT_DIR = "export"
MODELFILE = "Modelfile"


def export_dir(run_id: int) -> Path:
    return config.runs_dir() / str(run_id) / EXPORT_DIR


def model_name(run: dict) -> str:
    """A name for ``ollama create``: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"nerlab-{run['name']}".lower()).strip("-")
    return slug if str(run["id"]) in slug else f"{slug}-{run['id']}"


def _precise_enough(merged_dtype: str, outtype: str) -> bool:
    """Whether a merged folder in ``merged_dtype`` holds every bit an ``outtype`` GGUF keeps: fp32
    always; fp16 for f16 (the same values) and q8_0 (far coarser); bf16 never (8 significant
    bits where f16 keeps 11)."""
    return merged_dtype == "float32" or (merged_dtype == "float16" and outtype in ("f16", "q8_0"))


def export_run(db: Database, run_id: int, fmt: str = "gguf", out: str | Path | None = None,
               outtype: str = "f16", log: Callable[[str], None] = print) -> dict:
    """Export a finished run; return ``{"gguf", "modelfile", "name", "seconds"}`` (paths)."""
    if fmt not in FORMATS:
        raise NerlabError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if outtype not in gguf_export.OUTTYPES:
        raise NerlabError(f"Unknown GGUF output type {outtype!r}; use one of "
                          f"{', '.join(gguf_export.OUTTYPES)}.")
    started = time.perf_counter()
    adapter = finished_adapter(db, run_id)
    run = get_run(db, run_id)
    base_cfg = merging.local_base_folder(run["base_model"] or "")
    if base_cfg is not None:  # refuse early, before minutes of merging
        gguf_export.check_architecture(gguf_export.read_config(base_cfg))
    out_dir = Path(out) if out else export_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = model_name(run)
    merged = merging.runs_merged_dir(run_id)
    temporary = None
    info = merging.merged_info(merged)
    if info and _precise_enough(info["dtype"], outtype):
        log(f"Converting the merged model in {merged} ({merging.short_name(info['dtype'])}).")
    else:
        temporary = out_dir / ".merged-fp32.partial"
        log(("No merged model yet" if not info else
             f"The merged model in {merged} is {merging.short_name(info['dtype'])}, less precise "
             f"than {outtype}") + ": merging the adapter in float32 for the conversion.")
        merged = merge_run(db, run_id, out=temporary, dtype="fp32", log=log)
    try:
        gguf_file = gguf_export.convert_folder(merged, out_dir / f"{name}-{outtype}.gguf",
                                               outtype=outtype, name=f"{name} ({run['base_model']})",
                                               log=log)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter))
        text = modelfile.render_modelfile(db, run_id, tokenizer, gguf_file.name, name)
        (out_dir / MODELFILE).write_text(text, encoding="utf-8")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    seconds = time.perf_counter() - started
    log(f"Exported run {run_id} in {seconds:.1f} s: {gguf_file} "
        f"({merging.format_bytes(gguf_file.stat().st_size)}) and {out_dir / MODELFILE}.")
    return {"gguf": gguf_file, "modelfile": out_dir / MODELFILE, "name": name, "seconds": seconds}
