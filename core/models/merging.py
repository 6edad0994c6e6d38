"""Merged weights: which dtype, how big, and merging a PEFT adapter precisely.

The dtype rule (``default_dtype``), applied when ``nerlab merge`` gets no ``--dtype``:

1. a run trained on a GPU in half precision (bf16, also QLoRA's bf16 compute) is merged to that
   dtype, the one it was trained and evaluated in;
2. otherwise the base model's own dtype when that is half precision (``config.json`` says
   ``bfloat16`` or ``float16``: an 8B model is then ~16 GB, as downloaded);
3. otherwise float32 (the bundled SmolLM2 is stored in float32 and trained in float32 on CPU).

Whatever the output dtype, each adapted weight is merged in float32 (``W + scale * B @ A``, or
DoRA's rescaled weight) and cast once at the end, so a LoRA delta smaller than a bf16 rounding step
of ``W`` is not lost. A half-precision base is loaded in its own dtype (exact when upcast) and only
the layer being merged is upcast, so an 8B bf16 model merges in ~16 GB of RAM, not ~32 GB.

Nothing here imports torch at module level: the size estimate reads safetensors headers only and
is cheap enough for the Train page.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import config
from core.errors import NerlabError
from core.models import loader

#: Names accepted by ``--dtype`` → torch dtype names.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: Bytes per parameter of each torch dtype name.
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_SHORT = {v: k for k, v in DTYPES.items()}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2,
                      "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def dtype_name(short_or_torch: str) -> str:
    """``bf16`` / ``bfloat16`` → ``bfloat16`` (a ConfigError-like NerlabError for anything else)."""
    name = (short_or_torch or "").strip().lower()
    if name in DTYPES:
        return DTYPES[name]
    if name in BYTES:
        return name
    raise NerlabError(f"Unknown dtype {short_or_torch!r}; use one of {', '.join(DTYPES)}.")


def short_name(torch_name: str) -> str:
    """``bfloat16`` → ``bf16``."""
    return _SHORT.get(torch_name, torch_name)


def local_base_folder(base_model: str) -> Path | None:
    """The folder holding a base model's files, if it is on this machine already, found without
    converting or downloading anything: the converted bundled model, a local folder, or a
    Hugging Face id's snapshot in the local cache."""
    name = (base_model or "").strip()
    if not name:
        return None
    if loader.is_bundled(name):
        folder = loader.bundled_model_dir()
        return folder if (folder / "config.json").is_file() else None
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    try:  # a Hub id trained on this machine: its files are in the Hugging Face cache
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, no cache: unknown
        return None
    return Path(found).parent if isinstance(found, str) else None


def config_dtype(folder: Path | None) -> str | None:
    """The dtype a model folder's ``config.json`` declares (``dtype`` or the older
    ``torch_dtype``), as a torch dtype name, or None."""
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    cfg = json.loads((Path(folder) / "config.json").read_text())
    value = cfg.get("dtype") or cfg.get("torch_dtype")
    if value is None and isinstance(cfg.get("text_config"), dict):
        value = cfg["text_config"].get("dtype") or cfg["text_config"].get("torch_dtype")
    return str(value).replace("torch.", "") if value else None


def default_dtype(meta: dict, base_dtype: str | None) -> tuple[str, str]:
    """The dtype a merge writes when none is asked for, and why (see the module's rule)."""
    trained = meta.get("dtype")
    if meta.get("device") == "cuda" and trained in ("bfloat16", "float16"):
        return trained, f"the run trained in {short_name(trained)} on a GPU"
    if base_dtype in ("bfloat16", "float16"):
        return base_dtype, f"the base model is stored in {short_name(base_dtype)}"
    return "float32", ("the run trained in float32 and the base model is stored in "
                       f"{short_name(base_dtype) if base_dtype else 'float32'}")


def safetensors_params(folder: Path) -> int | None:
    """Parameters stored in a folder's ``*.safetensors`` files (read from their headers only)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= int(d)
            total += n
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files in a folder (safetensors shards)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def format_bytes(n: float) -> str:
    """``538 MB``, ``16.1 GB``."""
    if n >= 10**9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


def expected_size(base_model: str, dtype: str) -> int | None:
    """Bytes a merged model of this base takes in ``dtype`` (parameters × bytes each), or None
    when the base model's files are not on this machine."""
    folder = local_base_folder(base_model)
    params = safetensors_params(folder) if folder else None
    return params * BYTES[dtype_name(dtype)] if params else None


def merge_into_base(peft_model: Any, dtype: str, log: Callable[[str], None] = print) -> Any:
    """Merge every LoRA/DoRA layer of ``peft_model`` in float32, cast each merged weight to
    ``dtype`` straight away (only one layer is float32 at a time), unload the adapter and cast
    the rest of the model; return the plain transformers model."""
    import torch
    from peft.tuners.lora import LoraLayer

    target = getattr(torch, dtype)
    merged = 0
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or module.merged:
            continue
        base = module.get_base_layer()
        base.weight.data = base.weight.data.to(torch.float32)
        for name, param in module.named_parameters():  # A, B (and DoRA's magnitude) in float32
            if "base_layer" not in name:
                param.data = param.data.to(torch.float32)
        module.merge()
        base.weight.data = base.weight.data.to(target)
        merged += 1
    if not merged:
        raise NerlabError("The adapter has no LoRA layers to merge.")
    model = peft_model.unload()
    model.to(target)
    model.config.dtype = target
    log(f"Merged {merged} adapted layers in float32, saved as {short_name(dtype)}.")
    return model


def runs_merged_dir(run_id: int) -> Path:
    """Where ``nerlab merge RUN`` writes by default."""
    return config.runs_dir() / str(run_id) / "merged"


def merged_info(folder: Path) -> dict | None:
    """``{"dtype", "bytes", "shards"}`` of a complete merged folder, else None."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    return {
        "dtype": config_dtype(folder) or "float32",
        "bytes": folder_bytes(folder),
        "shards": len(list(folder.glob("*.safetensors"))),
    }


def merge_options(meta: dict, base_model: str) -> list[tuple[str | None, str]]:
    """What the Train page offers for a merge: ``(--dtype value or None for the default, label
    with the expected size)``, the default first."""
    folder = local_base_folder(base_model)
    params = safetensors_params(folder) if folder else None
    default, why = default_dtype(meta, config_dtype(folder))

    def size(dtype: str) -> str:
        return f" · ~{format_bytes(params * BYTES[dtype])}" if params else ""

    options: list[tuple[str | None, str]] = [
        (None, f"Default: {short_name(default)} ({why}){size(default)}")]
    options += [(short, f"{short}{size(torch_name)}") for short, torch_name in DTYPES.items()]
    return options
