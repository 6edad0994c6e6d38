"""A sentence and its spans -> the exact prompt and target a model sees (one function for training and inference)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.data.spans import Example
from core.prompts import formats
from core.prompts.template import _PLACEHOLDER_RE, PromptTemplate


def _label_rows(labels: Iterable[dict | str]) -> list[dict]:
    rows = []
    for label in labels:
        if isinstance(label, str):
            rows.append({"name": label, "description": ""})
        else:
            rows.append({"name": label["name"], "description": label.get("description") or ""})
    return rows


def label_names(labels: Iterable[dict | str]) -> list[str]:
    """The names of label rows (or the strings themselves)."""
    return [row["name"] for row in _label_rows(labels)]


def render_examples(tpl: PromptTemplate, shots: Sequence[Example]) -> str:
    """What ``{examples}`` becomes: each shot's sentence and answer, blank-line separated."""
    blocks = [
        f"Sentence: {shot.text}\nAnswer: {formats.render_answer(tpl, shot.text, shot.spans)}"
        for shot in list(shots)[: tpl.n_examples]
    ]
    return ("Examples:\n" + "\n\n".join(blocks) + "\n") if blocks else ""


def _substitute(text: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        return values[m.group(2)]

    out = _PLACEHOLDER_RE.sub(repl, text)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _values(tpl: PromptTemplate, text: str, labels: Iterable[dict | str], shots: Sequence[Example]) -> dict[str, str]:
    rows = _label_rows(labels)
    return {
        "sentence": text,
        "labels": ", ".join(r["name"] for r in rows),
        "guidelines": "\n".join(
            f"- {r['name']}: {r['description']}" if r["description"] else f"- {r['name']}" for r in rows
        ),
        "format": formats.get_format(tpl.output_format).description,
        "examples": render_examples(tpl, shots),
    }


def render_prompt(
    tpl: PromptTemplate, text: str, labels: Iterable[dict | str], shots: Sequence[Example] = ()
) -> str:
    """The user message for one sentence: the instruction with its placeholders filled in.

    Args:
        tpl: the template.
        text: the sentence.
        labels: the project's label rows (``name``, ``description``) or plain names.
        shots: retrieved examples for ``{examples}`` (the first ``tpl.n_examples`` are used).
    """
    return _substitute(tpl.instruction, _values(tpl, text, labels, shots))


def render_system(tpl: PromptTemplate, labels: Iterable[dict | str]) -> str:
    """The system message with its placeholders filled in ("" when the template has none)."""
    if not tpl.system.strip():
        return ""
    return _substitute(tpl.system, _values(tpl, "", labels, ()))


#: What ends a plain (no chat template) prompt; the answer follows on the next line.
PLAIN_ANSWER_CUE = "\n\nAnswer:\n"


def build_chat(
    tokenizer: Any,
    tpl: PromptTemplate,
    text: str,
    labels: Iterable[dict | str],
    shots: Sequence[Example] = (),
    answer: str | None = None,
) -> tuple[str, str]:
    """The exact strings a model sees: ``(prompt, target)``.

    The prompt is the rendered system message and instruction after the model's chat template,
    ending with the generation prompt (e.g. ``<|im_start|>assistant\\n``); a tokenizer without a
    chat template (or ``None``) gets a plain prompt ending with ``Answer:`` and a newline. The
    target is ``answer`` followed by the tokenizer's end-of-sequence token, so a trained model
    stops, or ``""`` when ``answer`` is None (inference). Training and inference both call this
    function, so they always see the same prompt.
    """
    labels = _label_rows(labels)
    system = render_system(tpl, labels)
    user = render_prompt(tpl, text, labels, shots)
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    target = "" if answer is None else answer + eos
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - e.g. templates that refuse a system role (Gemma)
            merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
            prompt = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return str(prompt), target
    prompt = (f"{system}\n\n{user}" if system else user) + PLAIN_ANSWER_CUE
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None
    if bos:
        # The text carries its special tokens, as a chat template's output does, so that both
        # kinds of prompt are tokenized the same way: with add_special_tokens=False.
        prompt = bos + prompt
    return prompt, target


def encode_chat(tokenizer: Any, prompt: str, target: str = "") -> tuple[list[int], list[int]]:
    """Token ids of a :func:`build_chat` pair, each tokenized without adding special tokens
    (the prompt already holds them). Training concatenates the two lists and masks the prompt;
    inference feeds the prompt's ids alone."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
    return prompt_ids, target_ids


@dataclass(frozen=True)
class PromptLength:
    """Token counts of one example's prompt and target (answer + end-of-sequence)."""

    example_id: int
    prompt_tokens: int
    answer_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.answer_tokens


def prompt_lengths(
    tokenizer: Any,
    tpl: PromptTemplate,
    examples: Sequence[Example],
    labels: Iterable[dict | str],
    shots: Sequence[Sequence[Example]] | None = None,
) -> list[PromptLength]:
    """Token counts of every example's training pair, as :func:`build_chat` and
    :func:`encode_chat` make it (``shots[i]`` are example i's retrieved examples).

    Without a tokenizer the counts are characters, not tokens.
    """
    labels = _label_rows(labels)
    prompts, targets = [], []
    for i, ex in enumerate(examples):
        prompt, target = build_chat(
            tokenizer, tpl, ex.text, labels, shots[i] if shots else (),
            answer=formats.render_answer(tpl, ex.text, ex.spans),
        )
        prompts.append(prompt)
        targets.append(target)
    if tokenizer is None:
        return [
            PromptLength(ex.id, len(p), len(t)) for ex, p, t in zip(examples, prompts, targets, strict=True)
        ]
    out: list[PromptLength] = []
    for start in range(0, len(prompts), 256):
        p_ids = tokenizer(prompts[start : start + 256], add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(targets[start : start + 256], add_special_tokens=False)["input_ids"]
        for ex, p, t in zip(examples[start : start + 256], p_ids, t_ids, strict=True):
            out.append(PromptLength(ex.id, len(p), len(t)))
    return out
