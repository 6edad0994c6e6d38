"""NERLab's Python API: a run's model from its folder alone (no database), predicting new text.

```python
from core.prediction.api import load

model = load("nerlab-data/runs/3")          # a run folder, or the model folder inside it
model.predict(["Lithium caused tremor in two patients."])
# [[{'start': 0, 'end': 7, 'label': 'Chemical', 'text': 'Lithium', 'confidence': None},
#   {'start': 15, 'end': 21, 'label': 'Disease', 'text': 'tremor', 'confidence': None}]]
```

The folder's ``nerlab.json`` says what the model is; a fine-tuned or prompted LLM loads its
base model by the name recorded there (the bundled model by name, a Hugging Face id as the id)
unless ``base_model`` names another copy (e.g. a local folder on this machine). Sentences are
tokenised as NERLab does; give :class:`~core.data.spans.Example` objects to
:meth:`NerModel.predict_examples` to use your own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data.spans import Example, tokenize
from core.models import run_card
from core.prediction.predictors import (
    Prediction,
    Predictor,
    entity_types,
    find_model_folder,
    load_predictor,
)


class NerModel:
    """A loaded model: :meth:`predict` finds the entities of sentences."""

    def __init__(self, folder: Path, manifest: dict, predictor: Predictor) -> None:
        self.folder = folder
        self.manifest = manifest
        self.predictor = predictor

    @property
    def kind(self) -> str:
        """``train``, ``crf``, ``zero-shot``, ``few-shot`` (or another registered kind)."""
        return self.predictor.kind

    @property
    def labels(self) -> list[dict]:
        """The entity types: ``[{"name", "description"}]``."""
        return entity_types(self.manifest)

    def predict_examples(self, examples: Sequence[Example]) -> list[Prediction]:
        """One :class:`Prediction` per example (spans, confidences, raw answer), in order, in
        batches of the model's batch size."""
        examples = list(examples)
        out: list[Prediction] = []
        step = max(1, self.predictor.batch_size)
        for i in range(0, len(examples), step):
            out.extend(self.predictor.predict(examples[i:i + step]))
        return out

    def predict(self, texts: str | Sequence[str]) -> list[list[dict]] | list[dict]:
        """The entities of each text: ``{"start", "end", "label", "text", "confidence"}`` dicts
        (character offsets; ``confidence`` is None where the model has none). A single string
        gives a single list."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        examples = [Example(id=-(i + 1), text=t, spans=(), tokens=tuple(tokenize(t)))
                    for i, t in enumerate(items)]
        found = [[] if not ex.text.strip() else None for ex in examples]
        todo = [ex for ex, f in zip(examples, found, strict=True) if f is None]
        results = iter(self.predict_examples(todo))
        out = []
        for ex, f in zip(examples, found, strict=True):
            if f is not None:
                out.append(f)
                continue
            p = next(results)
            out.append([{**s.to_dict(), "text": ex.text[s.start:s.end], "confidence": c}
                        for s, c in zip(p.spans, p.span_confidences, strict=True)])
        return out[0] if single else out


def load(path: str | Path, base_model: str | None = None, device: str | None = None,
         batch_size: int | None = None, **options: Any) -> NerModel:
    """Load the model of a NERLab run folder (``runs/ID``) or of its model folder.

    Args:
        path: the folder (copied anywhere: it needs no database).
        base_model: the base model to put an adapter on or to prompt (default: the one the
            folder records).
        device: ``cuda`` or ``cpu`` (default: the best there is).
        batch_size: sentences predicted together.
    """
    folder = find_model_folder(path)
    manifest = run_card.read_manifest(folder)
    predictor = load_predictor(folder, base_model=base_model, device=device,
                               batch_size=batch_size, **options)
    return NerModel(folder, manifest, predictor)
