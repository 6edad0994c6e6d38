"""Prediction with vLLM, when it is installed and a CUDA GPU is there; else the built-in batched
generation (:mod:`core.prediction.decoding`).

:func:`backend_for` is the pre-flight choice, with its reason in words (``nerlab predict``
prints it, the worker logs it). :class:`VllmPredictor` runs a run's model as
``LLM(model=base, enable_lora=True)`` with the run's adapter as a ``LoRARequest`` (the base
model alone for zero-/few-shot runs), greedy, one request per sentence with the sentence's token
budget and vLLM's structured outputs: the answer format's JSON schema (``json_list``,
``json_dict``) or a regular expression (``inline_tags``, the sentence copied with optional
``[Type: `` … ``]`` around its tokens). Its answers are read back by the same parser as the
built-in path (:func:`core.prompts.formats.parse_output`).

vLLM's names changed over its versions: ``StructuredOutputsParams`` passed as
``SamplingParams(structured_outputs=...)`` (0.10.2 on; the ``guided_*`` fields went in 0.12),
before that ``GuidedDecodingParams`` passed as ``guided_decoding=``; both are handled.

``NERLAB_PREDICT_BACKEND`` = ``builtin`` keeps the built-in path even where vLLM could run.
Nothing heavy is imported at module level; vLLM only inside :meth:`VllmPredictor.load`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.spans import Example, tokenize
from core.errors import NerlabError
from core.models import loader
from core.prediction.decoding import DEFAULT_BATCH_SIZE, token_budget
from core.prompts.formats import parse_output
from core.prompts.plan import PromptPlan

VLLM = "vllm"
BUILTIN = "builtin"
#: Environment variable: ``builtin`` (never vLLM) or ``auto`` (the default).
BACKEND_ENV = "NERLAB_PREDICT_BACKEND"
#: Run kinds whose model is an LLM that generates its answers.
LLM_KINDS = ("train", "zero-shot", "few-shot")
#: How a backend is named to a user.
TITLES = {VLLM: "vLLM (LoRA adapter, structured outputs)",
          BUILTIN: "built-in batched generation"}


@dataclass(frozen=True)
class Choice:
    """Which backend predicts, and why."""

    backend: str
    reason: str

    @property
    def line(self) -> str:
        """One line for a user: ``Prediction backend: vLLM (...): reason.``"""
        return f"Prediction backend: {TITLES[self.backend]}: {self.reason}."


def vllm_installed() -> bool:
    """True when ``import vllm`` would find the package (nothing is imported)."""
    try:
        return importlib.util.find_spec(VLLM) is not None
    except (ImportError, ValueError):  # a broken or stand-in module in sys.modules
        return VLLM in sys.modules


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def backend_for(kind: str, method: str = "", processes: int = 1, installed: bool | None = None,
                cuda: bool | None = None) -> Choice:
    """The backend that will predict with a run of ``kind`` (``method`` its fine-tuning method,
    ``processes`` how many share the sentences), and why. ``installed`` and ``cuda`` default to
    what this machine has (torch is imported only when vLLM is installed)."""
    if kind not in LLM_KINDS:
        return Choice(BUILTIN, f"a {kind} model does not generate text")
    wanted = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted == BUILTIN:
        return Choice(BUILTIN, f"{BACKEND_ENV}={wanted}")
    installed = vllm_installed() if installed is None else installed
    if not installed:
        return Choice(BUILTIN, "vLLM is not installed (pip install vllm, on a CUDA machine)")
    cuda = _cuda() if cuda is None else cuda
    if not cuda:
        return Choice(BUILTIN, "vLLM is installed but needs a CUDA GPU, and none is visible")
    if method == "dora":
        return Choice(BUILTIN, "vLLM's LoRA does not run DoRA adapters")
    if processes > 1:
        return Choice(BUILTIN, f"{processes} processes share the sentences (vLLM runs as one)")
    return Choice(VLLM, "vLLM is installed and a CUDA GPU is visible")


# -- what vLLM is asked ------------------------------------------------------------------------


def answer_schema(output_format: str, labels: Sequence[str], text: str) -> dict | None:
    """The JSON schema of an answer in ``output_format`` (None: not a JSON format)."""
    labels = list(labels)
    if output_format == "json_list":
        return {"type": "array", "items": {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": labels},
                           "text": {"type": "string", "maxLength": max(1, len(text))}},
            "required": ["type", "text"], "additionalProperties": False}}
    if output_format == "json_dict":
        return {"type": "object", "additionalProperties": False,
                "properties": {label: {"type": "array", "items": {
                    "type": "string", "maxLength": max(1, len(text))}} for label in labels}}
    return None


def inline_regex(text: str, labels: Sequence[str]) -> str:
    """A regular expression for an ``inline_tags`` answer: the sentence copied, each token
    optionally opening ``[Type: `` or closing ``]`` (the parser checks the brackets' balance)."""
    opening = r"(?:\[(?:" + "|".join(re.escape(label) for label in labels) + r"): )?"
    out, pos = [], 0
    for start, end in tokenize(text):
        out.append(re.escape(text[pos:start]))
        out.append(opening + re.escape(text[start:end]) + r"\]?")
        pos = end
    out.append(re.escape(text[pos:]))
    return "".join(out)


def structured_kwargs(sampling_module: Any, output_format: str, labels: Sequence[str],
                      text: str) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments constraining an answer to the format, with the
    names this vLLM has (see the module's docstring)."""
    schema = answer_schema(output_format, labels, text)
    spec = {"json": schema} if schema is not None else {"regex": inline_regex(text, labels)}
    if hasattr(sampling_module, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_module.StructuredOutputsParams(**spec)}
    if hasattr(sampling_module, "GuidedDecodingParams"):
        return {"guided_decoding": sampling_module.GuidedDecodingParams(**spec)}
    raise NerlabError("This vLLM has neither StructuredOutputsParams nor GuidedDecodingParams: "
                      "upgrade vLLM, or set NERLAB_PREDICT_BACKEND=builtin.")


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    # The same rule as the built-in path: a chat-templated prompt holds its special tokens.
    special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(prompt, add_special_tokens=special)["input_ids"])


class VllmPredictor:
    """A run's model on vLLM: the base model with the run's adapter (``train``), or alone."""

    def __init__(self, kind: str, llm: Any, vllm: Any, sampling: Any, lora: Any, tokenizer: Any,
                 plan: PromptPlan, constrained: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.kind = kind
        self.llm, self.vllm, self.sampling, self.lora = llm, vllm, sampling, lora
        self.tokenizer, self.plan = tokenizer, plan
        self.labels = plan.label_names
        self.constrained = constrained
        # vLLM schedules its own batches: hand it many sentences at a time.
        self.batch_size = max(int(batch_size), 64)

    @classmethod
    def load(cls, folder: Path, manifest: dict, options: dict, kind: str,
             plan: PromptPlan) -> VllmPredictor:
        """Start vLLM on the run's base model (``enable_lora`` for a trained adapter)."""
        vllm = importlib.import_module(VLLM)
        sampling = importlib.import_module("vllm.sampling_params")
        base = options.get("base_model") or manifest.get("base_model") or (
            manifest.get("config") or {}).get("base_model")
        if not base:
            raise NerlabError(f"{folder} names no base model: give one.")
        path = loader.resolve(base)
        tokenizer_from = str(folder) if (folder / "tokenizer_config.json").is_file() else path
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
        lora = None
        settings: dict[str, Any] = {"model": path, "tokenizer": tokenizer_from}
        if kind == "train":
            rank = int(((manifest.get("config") or {}).get("lora") or {}).get("rank") or 16)
            settings.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
            lora_module = importlib.import_module("vllm.lora.request")
            lora = lora_module.LoRARequest(f"run-{manifest.get('run_id', 0)}", 1, str(folder))
        llm = vllm.LLM(**settings)
        constrained = bool((manifest.get("decoding") or {}).get("constrained", True))
        return cls(kind, llm, vllm, sampling, lora, tokenizer, plan, constrained,
                   int(options.get("batch_size") or DEFAULT_BATCH_SIZE))

    def requests(self, examples: Sequence[Example]) -> tuple[list[dict], list[Any]]:
        """The prompts (token ids) and one ``SamplingParams`` per sentence: greedy, the
        sentence's token budget, the answer format's structured output when constrained."""
        fmt = self.plan.template.output_format
        prompts, params = [], []
        for ex in examples:
            ids = _prompt_ids(self.tokenizer, self.plan.prompt(self.tokenizer, ex.id, ex.text))
            prompts.append({"prompt_token_ids": ids})
            extra = (structured_kwargs(self.sampling, fmt, self.labels, ex.text)
                     if self.constrained else {})
            params.append(self.sampling.SamplingParams(
                temperature=0.0, max_tokens=token_budget(self.tokenizer, ex.text, fmt),
                logprobs=0, **extra))
        return prompts, params

    def predict_rows(self, examples: Sequence[Example]) -> list[dict]:
        """Generate and parse the answers: rows as :func:`core.prediction.predict.predict_examples`
        gives them (``raw_output``, ``spans``, ``parse_status``, ``details``)."""
        if not examples:
            return []
        prompts, params = self.requests(examples)
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        rows = []
        for ex, output in zip(examples, outputs, strict=True):
            done = output.outputs[0]
            parsed = parse_output(self.plan.template, done.text, ex.text, self.labels,
                                  ex.token_offsets())
            details = {**parsed.details(), "min_logprob": _min_logprob(done),
                       "constrained": self.constrained, "backend": VLLM,
                       "finish_reason": getattr(done, "finish_reason", None)}
            rows.append({"sentence_id": ex.id, "raw_output": done.text,
                         "spans": list(parsed.spans), "parse_status": parsed.status,
                         "details": details})
        return rows


def _min_logprob(completion: Any) -> float | None:
    """The lowest log-probability of a chosen answer token (vLLM: a dict per position)."""
    ids = list(getattr(completion, "token_ids", None) or [])
    steps = getattr(completion, "logprobs", None) or []
    values = []
    for token, step in zip(ids, steps, strict=False):
        entry = step.get(token) if isinstance(step, dict) else None
        value = getattr(entry, "logprob", entry)
        if isinstance(value, (int, float)):
            values.append(float(value))
    return min(values) if values else None
