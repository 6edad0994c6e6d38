"""The bundled base model: converted once to safetensors, loaded from there, generates on CPU."""

from __future__ import annotations

import time

import pytest

from core import config
from core.errors import ModelError
from core.models import loader


def test_bundled_model_names_resolve(monkeypatch, shared_models_dir):
    assert loader.is_bundled(config.BUNDLED_MODEL)
    assert loader.bundled_gguf_path().name == loader.BUNDLED_GGUF
    with pytest.raises(ModelError, match="not a model folder"):
        loader.resolve(str(shared_models_dir))  # a folder without config.json
    assert loader.resolve("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"


@pytest.mark.slow
def test_bundled_model_loads_from_converted_folder_and_generates(bundled_model_path):
    assert (bundled_model_path / "model.safetensors").is_file()
    assert (bundled_model_path / "tokenizer.json").is_file()
    started = time.perf_counter()
    model, tokenizer = loader.load_model(config.BUNDLED_MODEL)
    load_s = time.perf_counter() - started
    assert str(next(model.parameters()).dtype) == "torch.float32"
    assert tokenizer.chat_template and tokenizer.pad_token == tokenizer.eos_token
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name one chemical element."}],
        add_generation_prompt=True, tokenize=False,
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()
    print(f"loaded from {bundled_model_path} in {load_s:.1f} s; generated {text!r}")
