"""A merged Llama-family model folder → one GGUF file that llama.cpp and Ollama load.

Written with the ``gguf`` package's ``GGUFWriter`` (the writer llama.cpp itself ships on PyPI),
not llama.cpp's ``convert_hf_to_gguf.py``: that script is not an installable package, follows
llama.cpp's repository version and pulls in its whole model zoo, while NERLab needs one
architecture family, done the way llama.cpp expects it:

- tensor names through ``gguf.TensorNameMap`` (``model.layers.3.self_attn.q_proj.weight`` →
  ``blk.3.attn_q.weight``); a tied ``lm_head`` is left out (llama.cpp reuses ``token_embd``);
- Q and K projections permuted from Hugging Face's rotate-half layout to the interleaved pairs of
  llama.cpp's rotary embedding (K with the number of key/value heads);
- Llama 3.1's ``llama3`` RoPE scaling as the ``rope_freqs`` tensor, linear scaling as keys;
- the byte-level BPE vocabulary with merges, token types, special tokens, whether BOS/EOS are
  added (as the Hugging Face tokenizer does it) and the chat template; the pre-tokenizer is
  identified the way llama.cpp does, by the token ids of a probe text (SmolLM, Llama 3);
- output types ``f32``, ``f16`` (1-D norms stay f32, as llama.cpp's converter writes them) and
  ``q8_0`` (with ``gguf.quants``; rows not a multiple of 32 fall back to f16).

Tensors are read one at a time from the safetensors files and written straight to the file, so
converting an 8B model needs memory for one tensor, not the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

from core.errors import NerlabError

#: Hugging Face architectures written as llama.cpp's ``llama`` architecture.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
OUTTYPES = ("f16", "f32", "q8_0")

#: llama.cpp names a byte-level BPE pre-tokenizer by the sha256 of the token ids its Hugging Face
#: tokenizer gives for this probe text (the text and the hashes are llama.cpp's, see its
#: convert_hf_to_gguf_update.py); both hashes were checked here with the real tokenizers.
PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
}

SUPPORTED_TEXT = (
    "Supported: Llama-family models (LlamaForCausalLM) with the byte-level BPE tokenizer of "
    "SmolLM/SmolLM2 or Llama 3/3.1/3.2 — e.g. the bundled SmolLM2 and Meta-Llama-3-8B-Instruct."
)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise NerlabError(f"{folder} has no config.json: it is not a model folder.")
    return json.loads(path.read_text())


def check_architecture(cfg: dict) -> str:
    """The model's architecture if it is one this exporter writes; otherwise a NerlabError that
    says which are supported."""
    archs = cfg.get("architectures") or [cfg.get("model_type") or "unknown"]
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NerlabError(
            f"GGUF export does not support the {arch} architecture. {SUPPORTED_TEXT} For other "
            "models, convert the merged folder (nerlab merge) with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    return arch


def _rope(cfg: dict) -> tuple[float, dict]:
    """``(rope_theta, scaling)``: transformers 5 keeps both in ``rope_parameters``, older
    configs in ``rope_theta`` and ``rope_scaling``."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    kind = merged.get("rope_type") or merged.get("type") or "default"
    merged["rope_type"] = kind
    return float(theta), merged


def llama_hparams(cfg: dict) -> dict:
    """The numbers llama.cpp's ``llama`` architecture needs, from a Hugging Face config."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    theta, scaling = _rope(cfg)
    if scaling["rope_type"] not in ("default", "linear", "llama3"):
        raise NerlabError(
            f"GGUF export does not support RoPE scaling {scaling['rope_type']!r} (default, linear "
            "and llama3 are supported). Convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    return {
        "context_length": int(cfg.get("max_position_embeddings") or 4096),
        "embedding_length": hidden,
        "block_count": int(cfg["num_hidden_layers"]),
        "feed_forward_length": int(cfg["intermediate_size"]),
        "head_count": heads,
        "head_count_kv": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": head_dim,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rms_norm_eps": float(cfg.get("rms_norm_eps") or 1e-5),
        "vocab_size": int(cfg["vocab_size"]),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict) -> list[float]:
    """Per-frequency divisors of Llama 3.1's ``llama3`` RoPE scaling (llama.cpp reads them from
    the ``rope_freqs`` tensor): 1 for short wavelengths, ``factor`` for long ones, and a smooth
    blend between ``old_context / high_freq_factor`` and ``old_context / low_freq_factor``."""
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def permute_for_rope(weight: Any, n_heads: int) -> Any:
    """Reorder the rows of a Q or K projection (or bias) from Hugging Face's layout, where each
    head's rotary pairs are (i, i + d/2), to llama.cpp's, where they are (2i, 2i + 1)."""
    shape = weight.shape
    return (weight.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_fields(folder: Path, n_vocab: int) -> dict:
    """Everything the GGUF needs of the folder's tokenizer: ``tokens``, ``types``, ``pre``,
    ``add_bos``, ``add_eos``. Refuses tokenizers llama.cpp would split differently."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tj_path = Path(folder) / "tokenizer.json"
    model = json.loads(tj_path.read_text()).get("model", {}) if tj_path.is_file() else {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise NerlabError(
            "GGUF export supports byte-level BPE tokenizers only; this model's tokenizer is "
            f"{'SentencePiece-style' if model.get('byte_fallback') else model.get('type', 'unknown')}. "
            f"{SUPPORTED_TEXT}"
        )
    digest = sha256(str(tok.encode(PRE_TOKENIZER_PROBE)).encode()).hexdigest()
    pre = KNOWN_PRE_TOKENIZERS.get(digest)
    if pre is None:
        raise NerlabError(
            f"GGUF export does not know this tokenizer's pre-tokenizer (probe hash {digest[:12]}…), "
            "so llama.cpp could split text differently than the model was trained with. "
            f"{SUPPORTED_TEXT}"
        )
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise NerlabError(f"The tokenizer has ids up to {max(vocab.values())} but the model only "
                          f"{n_vocab} embeddings.")
    by_id = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    special = {int(i) for i, t in tok.added_tokens_decoder.items() if t.special}
    tokens, types = [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    probe = list(tok("a")["input_ids"])  # what the Hugging Face tokenizer adds around a text
    return {
        "tokens": tokens, "types": types, "pre": pre,
        "add_bos": tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id],
        "add_eos": tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id],
    }


# ---------------------------------------------------------------------------------------------
# Tensors


def _weight_files(folder: Path) -> list[Path]:
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [Path(folder) / n for n in names]
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise NerlabError(f"{folder} has no safetensors weights (run nerlab merge first).")
    return files


def _hf_tensors(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in _weight_files(folder):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, path


def _plan_tensors(folder: Path, hp: dict) -> list[tuple[str, str, Path]]:
    """``(gguf name, hf name, file)`` of every tensor to write, in file order."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["block_count"])
    plan = []
    for hf_name, path in _hf_tensors(folder):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and hp["tie_word_embeddings"]:
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise NerlabError(f"GGUF export cannot place the tensor {hf_name!r} in llama.cpp's "
                              f"llama architecture. {SUPPORTED_TEXT}")
        plan.append((target, hf_name, path))
    return plan


def _out_kind(gguf_name: str, shape: tuple[int, ...], outtype: str):
    """The GGML type a tensor is written as."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32" or gguf_name.endswith(".bias"):
        return q.F32
    if outtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return q.Q8_0
    return q.F16


def _nbytes(shape: tuple[int, ...], kind) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    n = math.prod(shape)
    return n // block * size


def _load(path: Path, name: str, hp: dict):
    """One tensor as float32 numpy, Q/K permuted for llama.cpp's RoPE."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        data = fh.get_tensor(name).to(torch.float32)
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        data = permute_for_rope(data, hp["head_count"])
    elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        data = permute_for_rope(data, hp["head_count_kv"])
    return data.contiguous().numpy()


def _encode(array, kind):
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType
    if kind == q.F32:
        return array.astype(np.float32, copy=False)
    if kind == q.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, kind)


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0


def convert_folder(folder: str | Path, out_file: str | Path, outtype: str = "f16", name: str = "",
                   log: Callable[[str], None] = print) -> Path:
    """Write the Hugging Face model in ``folder`` (safetensors, config, tokenizer) as one GGUF
    file of llama.cpp's ``llama`` architecture; return its path. The file appears only when
    complete (written under a temporary name, then renamed)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    if outtype not in OUTTYPES:
        raise NerlabError(f"Unknown GGUF output type {outtype!r}; use one of {', '.join(OUTTYPES)}.")
    started = time.perf_counter()
    folder, out_file = Path(folder), Path(out_file)
    cfg = read_config(folder)
    check_architecture(cfg)
    hp = llama_hparams(cfg)
    vocab = tokenizer_fields(folder, hp["vocab_size"])
    plan = _plan_tensors(folder, hp)

    tmp = out_file.with_name(out_file.name + ".partial")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or cfg.get("_name_or_path") or folder.name)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] != hp["embedding_length"] // hp["head_count"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    scaling = hp["rope_scaling"]
    if scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_add_space_prefix(False)  # byte-level BPE: spaces are part of the tokens
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=hp["vocab_size"])
    special.add_special_token["bos"] = vocab["add_bos"]
    special.add_special_token["eos"] = vocab["add_eos"]
    if special.chat_template is None:
        log("Note: the model has no chat template; the GGUF file has none either.")
    special.add_to_gguf(writer, quiet=True)

    extra: list[tuple[str, Any]] = []
    if scaling["rope_type"] == "llama3":
        factors = llama3_rope_factors(hp["rope_theta"], hp["head_dim"], scaling)
        extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                      np.asarray(factors, dtype=np.float32)))
    kinds = []
    for array_name, array in extra:
        writer.add_tensor_info(array_name, array.shape, np.float32, array.nbytes)
    for gguf_name, hf_name, path in plan:
        with safe_open(str(path), framework="pt") as fh:
            shape = tuple(fh.get_slice(hf_name).get_shape())
        kind = _out_kind(gguf_name, shape, outtype)
        kinds.append(kind)
        if kind == gguf.GGMLQuantizationType.Q8_0:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, kind)
            writer.add_tensor_info(gguf_name, byte_shape, np.uint8, _nbytes(shape, kind), kind)
        else:
            dtype = np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16
            writer.add_tensor_info(gguf_name, shape, dtype, _nbytes(shape, kind))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _array_name, array in extra:
            writer.write_tensor_data(array)
        for (_gguf_name, hf_name, path), kind in zip(plan, kinds, strict=True):
            writer.write_tensor_data(_encode(_load(path, hf_name, hp), kind))
    finally:
        writer.close()
    tmp.replace(out_file)
    log(f"Wrote {out_file} ({outtype}, {len(plan) + len(extra)} tensors, "
        f"{out_file.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s.")
    return out_file
