"""How a run asks its model: template, entity types and where its examples come from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlite_utils import Database

from core.data import projects
from core.data.spans import Example
from core.errors import NerlabError
from core.prompts import render
from core.prompts.retrieval import ExampleRetriever
from core.prompts.store import get_template, get_template_by_id
from core.prompts.template import PromptTemplate


@dataclasses.dataclass
class PromptPlan:
    """How a run asks its model: template, entity types, and where its examples come from."""

    template: PromptTemplate
    labels: list[dict]
    shots: int = 0
    selection: str = "none"  # "none" | "fixed" | "retrieved"
    train: list[Example] = dataclasses.field(default_factory=list)
    fixed: list[Example] = dataclasses.field(default_factory=list)
    _retriever: Any = None

    @property
    def label_names(self) -> list[str]:
        return [r["name"] for r in self.labels]

    def shots_for(self, example_id: int | None, text: str) -> list[Example]:
        """The examples shown with one sentence (never the sentence itself)."""
        if self.shots <= 0:
            return []
        if self.selection == "fixed":
            return [e for e in self.fixed if e.id != example_id][: self.shots]
        if self._retriever is None:
            self._retriever = ExampleRetriever(self.train, method=self.template.retrieval)
        return list(self._retriever.top_k(text, self.shots, exclude_id=example_id))

    def prompt(self, tokenizer: Any, example_id: int | None, text: str) -> str:
        prompt, _ = render.build_chat(
            tokenizer, self.template, text, self.labels, shots=self.shots_for(example_id, text)
        )
        return prompt


def fixed_shots(train: Sequence[Example], k: int) -> list[Example]:
    """``k`` training examples that cover every entity type, shortest first (short prompts)."""
    if k <= 0:
        return []
    with_spans = sorted((e for e in train if e.spans), key=lambda e: (len(e.text), e.id))
    chosen: list[Example] = []
    covered: set[str] = set()
    for ex in with_spans:
        new = {s.label for s in ex.spans} - covered
        if new and 30 <= len(ex.text):
            chosen.append(ex)
            covered |= new
        if len(chosen) >= k:
            break
    for ex in [*with_spans, *(e for e in sorted(train, key=lambda e: len(e.text)) if not e.spans)]:
        if len(chosen) >= k:
            break
        if ex not in chosen and len(ex.text) >= 30:
            chosen.append(ex)
    return chosen[:k]


def run_template(db: Database, run: dict) -> PromptTemplate:
    """The template version a run uses: the one it recorded, else the latest version of the
    template its config names (``"default"`` when none), which is then recorded with the run.

    Runs record their template when they are submitted; this is the one place that resolves it.
    """
    if run.get("template_id"):
        return get_template_by_id(db, run["template_id"])
    tpl = get_template(db, run["project_id"], run["config"].get("template") or "default")
    db.execute("UPDATE runs SET template_id = ? WHERE id = ? AND template_id IS NULL",
               [tpl.id, run["id"]])
    db.conn.commit()
    run["template_id"] = tpl.id
    return tpl


def plan_for_run(db: Database, run: dict, shots: int | None = None,
                 selection: str | None = None) -> PromptPlan:
    """Template, entity types and examples of a run (see :func:`plan_for_template`)."""
    return plan_for_template(db, run["project_id"], run_template(db, run), shots, selection)


def plan_for_template(db: Database, project_id: int, tpl: PromptTemplate, shots: int | None = None,
                      selection: str | None = None) -> PromptPlan:
    """How a model is asked about the project's sentences with ``tpl``.

    ``shots`` (number of examples in each prompt) and ``selection`` (``fixed`` or ``retrieved``)
    are a baseline's settings; without them the template's own ``n_examples`` are retrieved, as
    in training.
    """
    shots = tpl.n_examples if shots is None else int(shots)
    selection = selection or ("retrieved" if shots else "none")
    if shots and selection not in ("fixed", "retrieved"):
        raise NerlabError(f"Example selection {selection!r} is not 'fixed' or 'retrieved'.")
    if shots != tpl.n_examples:
        if shots and "examples" not in tpl.placeholders:
            raise NerlabError(
                f"Template {tpl.label} has no {{examples}} placeholder, so it cannot show "
                f"{shots} example(s). Add {{examples}} to it on the Template page."
            )
        tpl = dataclasses.replace(tpl, n_examples=shots)
    train = projects.examples(db, project_id, split="train") if shots else []
    if shots and not train:
        raise NerlabError("Few-shot prompts need labelled training sentences; there are none.")
    return PromptPlan(
        template=tpl,
        labels=projects.list_labels(db, project_id),
        shots=shots,
        selection=selection if shots else "none",
        train=train,
        fixed=fixed_shots(train, shots) if selection == "fixed" else [],
    )
