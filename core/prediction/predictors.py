"""Any finished run's model, loaded from its folder alone, predicting new sentences.

A run's model folder holds ``nerlab.json`` (:mod:`core.models.run_card`): its kind, entity
types, template, base model. :func:`load_predictor` reads it and asks the loader registered for
the kind (:data:`LOADERS`) for a :class:`Predictor`, whose :meth:`~Predictor.predict` returns
one :class:`Prediction` per sentence: spans, a confidence per span where the model has one, and
the model's confidence in the whole sentence (what "least confident first" sorts by):

- ``crf``: the mean marginal probability of its tokens' tags (per span: the lowest of its
  tokens');
- ``encoder``: the same from the encoder's softmax over each word's tags (its model folder is
  ``encoder/`` in the run folder);
- ``train``, ``zero-shot``, ``few-shot`` (an LLM): the lowest probability of a token of its
  answer (no per-span confidence);
- another kind plugs in with :func:`register`, naming the folder it keeps its model in
  (:data:`MODEL_DIRS`).

Nothing here reads the database: the Python API (:mod:`core.prediction.api`), ``nerlab predict``
and the Label page's suggestions all go through this module, so they give the same spans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.data.spans import Example, Span, spans_to_bio
from core.errors import NerlabError
from core.models import adapters, loader, run_card
from core.prediction import crf as crf_mod
from core.prediction import encoder as encoder_mod
from core.prediction import encoder_folder, vllm_backend
from core.prediction.decoding import DEFAULT_BATCH_SIZE
from core.prediction.predict import predict_examples
from core.prompts.plan import PromptPlan
from core.prompts.template import PromptTemplate

#: Where each kind keeps its model inside the run folder ("." = the run folder itself).
MODEL_DIRS: dict[str, str] = {"train": adapters.ADAPTER_DIR, "crf": ".", "zero-shot": ".",
                              "few-shot": "."}
#: The training examples a prompt with examples draws from (few-shot, retrieval).
EXAMPLES_FILE = "examples.jsonl"


@dataclass
class Prediction:
    """What a model finds in one sentence.

    Attributes:
        spans: the entities, in order.
        span_confidences: one per span, 0-1, or None where the model has none.
        confidence: the model's confidence in the whole sentence, 0-1 (None: unknown).
        raw: the model's raw answer (an LLM's text, a CRF's tags).
        status: ``ok``, ``partial`` or ``unparsable`` (an LLM answer the parser could not read).
        details: what else the model reports (an LLM's log-probabilities...).
    """

    spans: list[Span]
    span_confidences: list[float | None]
    confidence: float | None
    raw: str = ""
    status: str = "ok"
    details: dict = field(default_factory=dict)


class Predictor(Protocol):
    """A loaded model. ``batch_size``: sentences a caller hands :meth:`predict` at once (it
    reports progress and checks for a stop between calls)."""

    kind: str
    labels: list[str]
    batch_size: int

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        """One prediction per example, in order."""


#: ``loader(model folder, manifest, options) -> Predictor`` for each run kind. Options:
#: ``base_model`` (another copy of the base model), ``batch_size``, ``device``.
Loader = Callable[[Path, dict, dict], Predictor]
LOADERS: dict[str, Loader] = {}


def register(kind: str, load: Loader, model_dir: str = ".") -> None:
    """Teach NERLab to predict with runs of ``kind``: ``load`` builds its predictor from the
    model folder (``model_dir`` inside the run folder)."""
    LOADERS[kind] = load
    MODEL_DIRS[kind] = model_dir


def kinds() -> tuple[str, ...]:
    """The run kinds whose models can predict new sentences."""
    return tuple(LOADERS)


def find_model_folder(path: str | Path) -> Path:
    """The model folder at ``path``: ``path`` itself when it holds ``nerlab.json``, else the
    sub-folder a kind keeps its model in (a run folder: ``runs/ID``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NerlabError(f"No folder {str(path)!r}.")
    if (path / run_card.META_FILE).is_file():
        return path
    for sub in dict.fromkeys(MODEL_DIRS.values()):
        if sub != "." and (path / sub / run_card.META_FILE).is_file():
            return path / sub
    raise NerlabError(f"{path} holds no NERLab model ({run_card.META_FILE} is missing). Give a "
                      "run folder (runs/ID in the data directory) or the model folder in it.")


def manifest_kind(manifest: dict, folder: Path) -> str:
    """The kind of model a manifest describes (an adapter's from before kinds were recorded is
    ``train``)."""
    kind = manifest.get("kind")
    if not kind and (folder / "adapter_config.json").is_file():
        kind = "train"
    if kind not in LOADERS:
        raise NerlabError(f"{folder} holds a model of kind {kind!r}, which cannot predict here "
                          f"(known: {', '.join(LOADERS)}).")
    return kind


def load_predictor(folder: str | Path, **options: Any) -> Predictor:
    """Load the model in a run folder (or its model folder) for prediction."""
    folder = find_model_folder(folder)
    manifest = run_card.read_manifest(folder)
    kind = manifest_kind(manifest, folder)
    return LOADERS[kind](folder, manifest, {k: v for k, v in options.items() if v is not None})


def entity_types(manifest: dict) -> list[dict]:
    """The manifest's entity types as label rows (name, description)."""
    rows = manifest.get("entity_types")
    if rows:
        return [{"name": r["name"], "description": r.get("description") or ""} for r in rows]
    return [{"name": n, "description": ""} for n in manifest.get("labels") or []]


# --------------------------------------------------------------------------------------- CRF


class CrfPredictor:
    """A CRF run: its Viterbi tags, and marginal probabilities as confidences."""

    kind = "crf"

    def __init__(self, model: Any, labels: Sequence[str], batch_size: int = 500) -> None:
        self.model = model
        self.labels = list(labels)
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: Path, manifest: dict, options: dict) -> CrfPredictor:
        native = folder / crf_mod.NATIVE_FILE
        model = (crf_mod.load_native(native) if native.is_file()
                 else crf_mod.load_crf(folder / crf_mod.CRF_FILE))
        return cls(model, [r["name"] for r in entity_types(manifest)],
                   int(options.get("batch_size") or 500))

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        out = []
        for spans, confs, sentence in crf_mod.crf_predict_details(self.model, examples):
            out.append(Prediction(spans, list(confs), sentence))
        for ex, p in zip(examples, out, strict=True):
            p.raw = " ".join(_tags(ex, p.spans))
        return out


def _tags(example: Example, spans: Sequence[Span]) -> list[str]:
    return spans_to_bio(example.token_offsets(), spans)


# ----------------------------------------------------------------------------------- encoder


class EncoderPredictor:
    """An encoder run (token classification): its decoded tags, and the probabilities of the
    chosen tags as confidences (per span: the lowest of its words'; per sentence: their
    mean)."""

    kind = "encoder"

    def __init__(self, bundle: encoder_mod.EncoderBundle, labels: Sequence[str],
                 batch_size: int = 64) -> None:
        self.bundle = bundle
        self.labels = list(labels)
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: Path, manifest: dict, options: dict) -> EncoderPredictor:
        loader.set_threads()
        bundle = encoder_folder.load_encoder(folder)
        labels = [r["name"] for r in entity_types(manifest)] or bundle.labels
        return cls(bundle, labels,
                   int(options.get("batch_size") or bundle.settings.eval_batch_size))

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        found = encoder_mod.predict_encoder(self.bundle, examples, self.batch_size)
        return [Prediction(p.span_list, list(p.span_confidences), p.confidence,
                           raw=" ".join(p.tags), details={"lowest": p.lowest, "margin": p.margin})
                for p in found]


# --------------------------------------------------------------------------------------- LLM


def read_examples(path: Path) -> list[Example]:
    """The examples a prompt draws from, as :func:`write_examples` wrote them."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        out.append(Example(id=int(row["id"]), text=row["text"],
                           spans=tuple(Span(s["start"], s["end"], s["label"]) for s in row["spans"]),
                           tokens=tuple(tuple(t) for t in row["tokens"]) if row.get("tokens") else None))
    return out


def write_examples(path: Path, examples: Sequence[Example]) -> None:
    """Write the examples a prompt draws from (id, text, spans, own tokens)."""
    lines = [json.dumps({"id": e.id, "text": e.text, "spans": [s.to_dict() for s in e.spans],
                         **({"tokens": [list(t) for t in e.tokens]} if e.tokens else {})},
                        ensure_ascii=False) for e in examples]
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    tmp.replace(path)


def prompt_plan(folder: Path, manifest: dict) -> PromptPlan:
    """How the model is asked, from the manifest: its template, entity types and examples."""
    if not manifest.get("template"):
        raise NerlabError(f"{folder}/{run_card.META_FILE} records no template.")
    template = PromptTemplate.from_dict(manifest["template"])
    prompt = manifest.get("prompt") or {}
    shots = int(prompt.get("shots", template.n_examples) or 0)
    selection = prompt.get("selection") or ("retrieved" if shots else "none")
    examples = read_examples(folder / EXAMPLES_FILE) if shots else []
    if shots and not examples:
        raise NerlabError(f"The model's prompt shows {shots} example(s), but {folder} has no "
                          f"{EXAMPLES_FILE} to take them from.")
    if template.n_examples != shots:
        template = PromptTemplate.from_dict({**template.to_dict(), "n_examples": shots})
    return PromptPlan(template=template, labels=entity_types(manifest), shots=shots,
                      selection=selection if shots else "none", train=examples,
                      fixed=examples if selection == "fixed" else [])


class LlmPredictor:
    """A fine-tuned adapter on its base model, or the base model prompted (zero/few-shot)."""

    def __init__(self, kind: str, model: Any, tokenizer: Any, plan: PromptPlan,
                 constrained: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 engine: vllm_backend.VllmPredictor | None = None,
                 backend: vllm_backend.Choice | None = None) -> None:
        self.kind = kind
        self.model, self.tokenizer, self.plan = model, tokenizer, plan
        self.labels = plan.label_names
        self.constrained = constrained
        self.batch_size = batch_size
        #: vLLM, when :func:`vllm_backend.backend_for` chose it (else the built-in generation).
        self.engine = engine
        self.backend = backend or vllm_backend.Choice(vllm_backend.BUILTIN, "as asked")

    @classmethod
    def load(cls, folder: Path, manifest: dict, options: dict) -> LlmPredictor:
        kind = manifest_kind(manifest, folder)
        plan = prompt_plan(folder, manifest)
        base = options.get("base_model") or manifest.get("base_model") or (
            manifest.get("config") or {}).get("base_model")
        if not base:
            raise NerlabError(f"{folder}/{run_card.META_FILE} names no base model: give one.")
        config = manifest.get("config") or {}
        choice = vllm_backend.backend_for(kind, method=str(config.get("method") or ""),
                                          processes=int(options.get("processes") or 1))
        if choice.backend == vllm_backend.VLLM:
            engine = vllm_backend.VllmPredictor.load(folder, {**manifest, "base_model": base},
                                                     options, kind, plan)
            return cls(kind, None, engine.tokenizer, plan, engine.constrained, engine.batch_size,
                       engine, choice)
        loader.set_threads()
        if kind == "train":
            # merged: the same answers as the run's own predictions, ~1.5× faster on a CPU
            model, tokenizer = adapters.load_adapter(folder, device=options.get("device"),
                                                     base_model=base, merge=True)
        else:
            model, tokenizer = loader.load_model(base, device=options.get("device"))
            model.eval()
        tokenizer.padding_side = "left"
        decoding = manifest.get("decoding") or {}
        constrained = bool(decoding.get("constrained", True))
        return cls(kind, model, tokenizer, plan, constrained,
                   int(options.get("batch_size") or DEFAULT_BATCH_SIZE), backend=choice)

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        if self.engine is not None:
            rows = self.engine.predict_rows(examples)
        else:
            rows = predict_examples(self.model, self.tokenizer, self.plan, examples,
                                    batch_size=self.batch_size, constrained=self.constrained)
        out = []
        for row in rows:
            low = row["details"].get("min_logprob")
            out.append(Prediction(
                spans=list(row["spans"]), span_confidences=[None] * len(row["spans"]),
                confidence=math.exp(low) if low is not None else None, raw=row["raw_output"],
                status=row["parse_status"], details=row["details"]))
        return out


for _kind in ("train", "zero-shot", "few-shot"):
    register(_kind, LlmPredictor.load, MODEL_DIRS[_kind])
register("crf", CrfPredictor.load, ".")
register("encoder", EncoderPredictor.load, encoder_folder.ENCODER_DIR)
