"""The CRF baseline: word features, training, prediction, the model file."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import config
from core.data import projects
from core.data.phases import predict_phase
from core.data.spans import Example, Span, bio_to_spans, spans_to_bio, tokenize
from core.errors import DataError, NerlabError
from core.prediction import predict

CRF_FILE = "crf.model"
#: The same model in crfsuite's own format (what ``sklearn_crfsuite.CRF(model_filename=...)``
#: reads; no pickle).
NATIVE_FILE = "crf.crfsuite"


def _shape(word: str) -> str:
    out = []
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


def word_features(words: Sequence[str], i: int) -> dict[str, Any]:
    """The usual CRF features of word ``i``: identity, affixes, shape, and its neighbours."""
    w = words[i]
    low = w.lower()
    f: dict[str, Any] = {
        "bias": 1.0,
        "w": low,
        "suf2": low[-2:], "suf3": low[-3:], "suf4": low[-4:],
        "pre2": low[:2], "pre3": low[:3],
        "shape": _shape(w),
        "upper": w.isupper(), "title": w.istitle(), "digit": any(c.isdigit() for c in w),
        "hyphen": "-" in w, "punct": not any(c.isalnum() for c in w),
        "len": min(len(w), 12),
    }
    for off in (-2, -1, 1, 2):
        j = i + off
        if 0 <= j < len(words):
            o = words[j]
            f[f"{off}:w"] = o.lower()
            f[f"{off}:shape"] = _shape(o)
            if abs(off) == 1:
                f[f"{off}:suf3"] = o.lower()[-3:]
                f[f"{off}:title"] = o.istitle()
        else:
            f[f"{off}:pad"] = True
    return f


def sentence_features(example: Example) -> list[dict[str, Any]]:
    words = [example.text[s:e] for s, e in example.token_offsets()]
    return [word_features(words, i) for i in range(len(words))]


def train_crf(train: Sequence[Example], c1: float = 0.1, c2: float = 0.05,
              max_iterations: int = 100) -> Any:
    """A CRF (L-BFGS, elastic net) trained on the examples' IOB2 tags."""
    import sklearn_crfsuite

    usable = [e for e in train if e.token_offsets()]
    if not usable:
        raise DataError("The CRF needs labelled training sentences; there are none.")
    X = [sentence_features(e) for e in usable]
    y = [spans_to_bio(e.token_offsets(), e.spans) for e in usable]
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations,
                               all_possible_transitions=True)
    crf.fit(X, y)
    return crf


def crf_predict(crf: Any, examples: Sequence[Example]) -> list[list[Span]]:
    """Spans the CRF finds in each example."""
    if not examples:
        return []
    tags = crf.predict([sentence_features(e) for e in examples])
    return [bio_to_spans(e.token_offsets(), t) for e, t in zip(examples, tags, strict=True)]


def crf_predict_details(crf: Any, examples: Sequence[Example],
                        ) -> list[tuple[list[Span], list[float], float]]:
    """For each example: the CRF's spans (its Viterbi tags), each span's confidence (the lowest
    marginal probability of its tokens' tags) and the sentence's: the mean marginal probability
    of its tokens' tags (1.0 for a sentence without tokens).

    The mean, not the lowest: labelling the least confident sentences first by the lowest
    marginal picks long sentences with one odd token and fell below labelling in order at 25
    sentences (CRF test micro-F1 0.175 vs 0.239 on the demo); by the mean it is above in order
    at 25, 50, 100 and 200 (``benchmarks/bench_loop.py``).
    """
    tagger = crf.tagger_
    out = []
    for example in examples:
        offsets = example.token_offsets()
        if not offsets:
            out.append(([], [], 1.0))
            continue
        tagger.set(sentence_features(example))
        tags = tagger.tag()
        probs = [tagger.marginal(tag, i) for i, tag in enumerate(tags)]
        spans = bio_to_spans(offsets, tags)
        confs = []
        for span in spans:
            inside = [p for (s, e), p in zip(offsets, probs, strict=True)
                      if s >= span.start and e <= span.end]
            confs.append(min(inside) if inside else 0.0)
        out.append((spans, confs, sum(probs) / len(probs)))
    return out


def _crf_path(run: dict) -> Path:
    path = run.get("artifact_path")
    if path and Path(path).is_file():
        return Path(path)
    return config.runs_dir() / str(run["id"]) / CRF_FILE


def save_crf(crf: Any, path: Path) -> None:
    """Pickle the CRF to ``path`` and write crfsuite's own model file beside it
    (:data:`NATIVE_FILE`), each atomically."""
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as handle:
        pickle.dump(crf, handle)
    os.replace(tmp, path)
    source = getattr(getattr(crf, "modelfile", None), "name", None)
    if source and Path(source).is_file():
        native = path.with_name(NATIVE_FILE)
        tmp = native.with_name(native.name + ".partial")
        tmp.write_bytes(Path(source).read_bytes())
        os.replace(tmp, native)


def load_native(path: Path) -> Any:
    """A CRF from crfsuite's own model file."""
    import sklearn_crfsuite

    if not Path(path).is_file():
        raise NerlabError(f"The CRF model file {path} is missing.")
    return sklearn_crfsuite.CRF(model_filename=str(path))


def load_crf(path: Path) -> Any:
    import pickle

    if not path.is_file():
        raise NerlabError(f"The CRF model file {path} is missing.")
    with open(path, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - a file this app wrote into its own data folder


def crf_predict_text(run: dict, text: str) -> list[Span]:
    """Spans a finished CRF run finds in a new sentence (the Compare page's try box)."""
    crf = load_crf(_crf_path(run))
    example = Example(id=-1, text=text, spans=(), tokens=tuple(tokenize(text)))
    return crf_predict(crf, [example])[0]


def run_crf(ctx: Any, cfg: dict, phase: Any = None) -> Any:
    """Train the CRF on the labelled training sentences, then predict the run's splits (each
    its own phase; ``phase`` is the training phase's, when the run reports phases); return the
    model."""
    db, run_row = ctx.db, ctx.run
    train = projects.examples(db, run_row["project_id"], split="train")
    if phase is not None:
        ctx.phase(phase)
    ctx.log(f"Training a CRF on {len(train)} labelled sentences "
            f"(c1={cfg['c1']}, c2={cfg['c2']}, {cfg['max_iterations']} iterations)…")
    started = time.perf_counter()
    crf = train_crf(train, c1=float(cfg["c1"]), c2=float(cfg["c2"]),
                    max_iterations=int(cfg["max_iterations"]))
    ctx.log(f"Trained in {time.perf_counter() - started:.1f} s.")
    path = Path(ctx.run_dir) / CRF_FILE
    save_crf(crf, path)
    ctx.set_artifact(path)
    limit = int(cfg.get("limit") or 0)
    for split in cfg["splits"]:
        ctx.check_stop()
        examples = projects.examples(db, run_row["project_id"], split=split)
        if limit:
            examples = examples[:limit]
        if not examples:
            continue
        if phase is not None:
            ctx.phase(predict_phase(split, len(examples)))
        predicted = crf_predict(crf, examples)
        rows = []
        for ex, spans in zip(examples, predicted, strict=True):
            tags = spans_to_bio(ex.token_offsets(), spans)
            rows.append({"sentence_id": ex.id, "raw_output": " ".join(tags), "spans": spans,
                         "parse_status": "ok"})
        predict.store_predictions(db, run_row["id"], split, rows)
        if phase is not None:
            ctx.phase_progress(len(rows), len(rows))
        ctx.log(f"Predicted {len(rows)} {split} sentences.")
    return crf
