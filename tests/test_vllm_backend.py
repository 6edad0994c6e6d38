"""The vLLM prediction backend, checked without vLLM: the pre-flight choice and its reasons, and,
with a stand-in ``vllm`` package in ``sys.modules`` (vLLM itself needs a CUDA GPU), what NERLab
asks of it — the engine's settings, the adapter's LoRARequest, one greedy SamplingParams per
sentence with the answer format's structured output — and how its answers are read back (the
built-in path's parser). scripts/gpu_check.py runs the real vLLM where it is installed."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from dataclasses import dataclass, field

import pytest

from core.data.spans import Example, Span
from core.prediction import predictors, vllm_backend
from core.prediction.decoding import token_budget
from core.prediction.vllm_backend import BUILTIN, VLLM, backend_for
from core.prompts.formats import render_answer
from core.prompts.template import default_template

LABELS = ["Chemical", "Disease"]


def test_the_pre_flight_choice_says_why(monkeypatch):
    monkeypatch.delenv(vllm_backend.BACKEND_ENV, raising=False)
    ok = backend_for("train", installed=True, cuda=True)
    assert ok.backend == VLLM and ok.line.startswith("Prediction backend: vLLM")
    cases = {
        "not installed": (backend_for("train", installed=False, cuda=True), "not installed"),
        "no GPU": (backend_for("zero-shot", installed=True, cuda=False), "needs a CUDA GPU"),
        "dora": (backend_for("train", "dora", installed=True, cuda=True), "DoRA"),
        "processes": (backend_for("train", processes=2, installed=True, cuda=True),
                      "2 processes share"),
        "crf": (backend_for("crf", installed=True, cuda=True), "does not generate text"),
    }
    for name, (choice, reason) in cases.items():
        assert choice.backend == BUILTIN and reason in choice.reason, name
        assert choice.line.startswith("Prediction backend: built-in batched generation: "), name
    monkeypatch.setenv(vllm_backend.BACKEND_ENV, "builtin")
    assert backend_for("train", installed=True, cuda=True).backend == BUILTIN


@pytest.mark.skipif(vllm_backend.vllm_installed(), reason="vLLM is installed here")
def test_on_this_machine_the_built_in_path_runs_because_vllm_is_missing(monkeypatch):
    monkeypatch.delenv(vllm_backend.BACKEND_ENV, raising=False)
    choice = backend_for("train")  # no torch import needed to know
    assert choice.backend == BUILTIN and "vLLM is not installed" in choice.reason


def test_the_answer_formats_constraints_accept_the_gold_answers():
    text = "Aspirin caused acute renal failure ."
    spans = [Span(0, 7, "Chemical"), Span(15, 34, "Disease")]
    tpl = default_template("inline_tags")
    pattern = vllm_backend.inline_regex(text, LABELS)
    assert re.fullmatch(pattern, render_answer(tpl, text, spans))
    assert re.fullmatch(pattern, text)  # no entities: the sentence itself
    assert not re.fullmatch(pattern, "[Drug: Aspirin] caused acute renal failure .")
    listed = vllm_backend.answer_schema("json_list", LABELS, text)
    assert listed["items"]["properties"]["type"]["enum"] == LABELS
    assert listed["items"]["required"] == ["type", "text"]
    keyed = vllm_backend.answer_schema("json_dict", LABELS, text)
    assert set(keyed["properties"]) == set(LABELS) and not keyed["additionalProperties"]
    assert vllm_backend.answer_schema("inline_tags", LABELS, text) is None


# -- a stand-in vllm package ---------------------------------------------------------------------


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    logprobs: list[dict]
    finish_reason: str = "stop"


@dataclass
class _Output:
    outputs: list[_Completion]


@dataclass
class _Fake:
    """What NERLab asked the stand-in vLLM for."""

    llm: dict = field(default_factory=dict)
    generate: list = field(default_factory=list)
    answers: dict = field(default_factory=dict)  # sentence → answer text


def _fake_vllm(monkeypatch, answers: dict, old_api: bool = False) -> _Fake:
    fake = _Fake(answers=answers)

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class Structured:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.args = (name, int_id, path)

    class LLM:
        def __init__(self, **kwargs):
            fake.llm = kwargs

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            fake.generate.append((prompts, params, lora_request))
            out = []
            for p in params:
                answer = fake.answers[p.kwargs["sentence"]] if "sentence" in p.kwargs else None
                out.append(_Output([_Completion(answer, [7, 8], [{7: _Logprob(-0.1)},
                                                                {8: _Logprob(-0.5)}])]))
            return out

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.SamplingParams = SamplingParams
    setattr(sampling, "GuidedDecodingParams" if old_api else "StructuredOutputsParams", Structured)
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = LoRARequest
    for name, module in (("vllm", vllm), ("vllm.sampling_params", sampling),
                         ("vllm.lora", lora), ("vllm.lora.request", lora_request)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_backend, "_cuda", lambda: True)
    monkeypatch.delenv(vllm_backend.BACKEND_ENV, raising=False)
    return fake


def _adapter_folder(tmp_path, tokenizer, output_format: str = "json_list"):
    folder = tmp_path / "adapter"
    folder.mkdir()
    tokenizer.save_pretrained(str(folder))
    manifest = {
        "nerlab_format": 1, "kind": "train", "run_id": 12,
        "base_model": "SmolLM2-135M-Instruct (bundled)",
        "config": {"method": "loraplus", "lora": {"rank": 4}},
        "template": default_template(output_format).to_dict(),
        "entity_types": [{"name": n, "description": "", "color": ""} for n in LABELS],
        "labels": LABELS, "decoding": {"constrained": True},
    }
    (folder / "nerlab.json").write_text(json.dumps(manifest))
    (folder / "adapter_config.json").write_text("{}")
    return folder, manifest


@pytest.fixture(scope="module")
def tokenizer(shared_models_dir):
    from core.models import loader

    return loader.load_tokenizer(str(loader.ensure_bundled_model()), padding_side="left")


@pytest.mark.parametrize("old_api", [False, True], ids=["StructuredOutputsParams",
                                                          "GuidedDecodingParams"])
def test_a_trained_run_predicts_through_vllm_with_its_adapter_and_the_formats_schema(
        monkeypatch, tmp_path, tokenizer, old_api):
    from core.models import loader

    examples = [Example(1, "Aspirin caused hypotension .", ()),
                Example(2, "No side effects .", ())]
    answers = {examples[0].text: '[{"type": "Chemical", "text": "Aspirin"}, '
                                 '{"type": "Disease", "text": "hypotension"}]',
               examples[1].text: "[]"}
    fake = _fake_vllm(monkeypatch, answers, old_api)
    # The stand-in answers by sentence: mark each request with its sentence.
    real_kwargs = vllm_backend.structured_kwargs

    def marked(module, fmt, labels, text):
        return {**real_kwargs(module, fmt, labels, text), "sentence": text}

    monkeypatch.setattr(vllm_backend, "structured_kwargs", marked)
    folder, manifest = _adapter_folder(tmp_path, tokenizer)
    predictor = predictors.LlmPredictor.load(folder, manifest, {"batch_size": 8})
    assert predictor.backend.backend == VLLM and predictor.engine is not None
    assert fake.llm["model"] == loader.resolve(manifest["base_model"])
    assert fake.llm["enable_lora"] is True and fake.llm["max_lora_rank"] >= 4

    preds = predictor.predict(examples)
    prompts, params, lora = fake.generate[0]
    assert lora.args == ("run-12", 1, str(folder))
    plan = predictor.plan
    for ex, prompt, p in zip(examples, prompts, params, strict=True):
        expected = tokenizer(plan.prompt(tokenizer, ex.id, ex.text),
                             add_special_tokens=not tokenizer.chat_template)["input_ids"]
        assert prompt == {"prompt_token_ids": list(expected)}
        assert p.kwargs["temperature"] == 0.0
        assert p.kwargs["max_tokens"] == token_budget(tokenizer, ex.text, "json_list")
        constraint = p.kwargs["guided_decoding" if old_api else "structured_outputs"]
        assert constraint.kwargs["json"] == vllm_backend.answer_schema("json_list", LABELS,
                                                                       ex.text)
    assert preds[0].spans == [Span(0, 7, "Chemical"), Span(15, 26, "Disease")]
    assert preds[0].status == "ok" and preds[1].spans == [] and preds[1].status == "ok"
    assert preds[0].confidence == pytest.approx(math.exp(-0.5))
    assert preds[0].details["backend"] == VLLM and preds[0].raw == answers[examples[0].text]


def test_without_vllm_the_same_folder_loads_the_built_in_path(monkeypatch, tmp_path, tokenizer):
    """The choice is made where the model is loaded: with the stand-in vLLM but no GPU, the
    loader says why and does not touch vLLM."""
    fake = _fake_vllm(monkeypatch, {})
    monkeypatch.setattr(vllm_backend, "_cuda", lambda: False)
    folder, manifest = _adapter_folder(tmp_path, tokenizer)
    calls = []
    monkeypatch.setattr(predictors.adapters, "load_adapter",
                        lambda *a, **k: calls.append(a) or (object(), tokenizer))
    predictor = predictors.LlmPredictor.load(folder, manifest, {})
    assert predictor.engine is None and calls and not fake.llm
    assert "needs a CUDA GPU" in predictor.backend.line
