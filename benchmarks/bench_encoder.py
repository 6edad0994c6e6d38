"""Encoder baseline (MiniLM token classification) vs the CRF baseline on the demo project.

Both run as the app runs them (:func:`core.prediction.baselines.run` with the worker's own
context, in this process): trained on the demo project's 300 labelled training sentences
(BC5CDR, Chemical and Disease), predicting and scoring its dev (60) and test (147) sentences, so
the scores are the ones the Evaluate page shows. Printed per model: micro and macro F1 (default
mode) on dev and test with the bootstrap 95% interval of test micro-F1, the training phase's
wall time, and prediction speed: sentences per second of the run's predict phases (storing
included) and of the model loaded from its run folder (:mod:`core.prediction.predictors`, what
``nerlab predict`` uses) on the test sentences.

Settings: each kind's defaults (:data:`core.prediction.baselines.DEFAULTS`; the encoder's were
chosen on dev data only, see ``benchmarks/sweep_encoder.py``) unless overridden with
``key=value`` (encoder settings). ``--extra-test N`` adds a second held-out check: the first N
sentences of at most 40 tokens of BC5CDR's ``test.tsv`` that are not in the demo's test split.

    NERLAB_HOME=$(mktemp -d) .venv/bin/python benchmarks/bench_encoder.py
    .venv/bin/python benchmarks/bench_encoder.py --extra-test 1000 epochs=15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As the worker runs (core.procs.spawn): OpenMP threads that sleep instead of spinning, which on a
# shared CPU made steps several times faster. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core.data import phases, projects  # noqa: E402
from core.data.db import get_db, now  # noqa: E402
from core.data.demo import ensure_demo_project  # noqa: E402
from core.data.runs import create_run, get_run  # noqa: E402
from core.data.spans import Example, bio_to_spans, text_from_tokens  # noqa: E402
from core.evaluation import run_scores, scoring  # noqa: E402
from core.jobs import worker  # noqa: E402
from core.prediction import baselines, predictors, run_folder  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Data (shared with sweep_encoder.py)


def bc5cdr_dir() -> Path:
    """``shared/data/bc5cdr`` beside the checkout (or its parent); NERLAB_BC5CDR overrides."""
    if os.environ.get("NERLAB_BC5CDR"):
        return Path(os.environ["NERLAB_BC5CDR"])
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "data" / "bc5cdr" / "devel.tsv").is_file():
            return base / "shared" / "data" / "bc5cdr"
    raise SystemExit("BC5CDR not found; set NERLAB_BC5CDR to the folder with devel.tsv")


def read_tsv(path: Path, max_tokens: int = 40, split: str = "dev") -> list[Example]:
    """Sentences of an IOB TSV file (at most ``max_tokens`` tokens) as Examples."""
    out: list[Example] = []
    words: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if words and len(words) <= max_tokens:
            text, offsets = text_from_tokens(words)
            out.append(Example(id=-len(out) - 1, text=text, spans=tuple(bio_to_spans(offsets, tags)),
                               split=split, tokens=tuple(offsets)))
        words.clear()
        tags.clear()

    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            flush()
            continue
        word, tag = line.split("\t")
        words.append(word)
        tags.append(tag)
    flush()
    return out


def demo_project():
    """The database (a temporary data directory unless NERLAB_HOME is set), the demo project,
    its labelled examples per split and its entity types."""
    if not os.environ.get("NERLAB_HOME"):
        os.environ["NERLAB_HOME"] = tempfile.mkdtemp(prefix="nerlab-bench-")
    db = get_db()
    project = ensure_demo_project(db)
    labels = [r["name"] for r in projects.list_labels(db, project["id"])]
    splits = {s: projects.examples(db, project["id"], split=s) for s in ("train", "dev", "test")}
    return db, project, splits, labels


def more_sentences(file: str, exclude, n: int, max_tokens: int = 40) -> list[Example]:
    """The first ``n`` sentences of a BC5CDR file that are not among ``exclude`` (by text)."""
    seen = {e.text for e in exclude}
    split = "test" if file.startswith("test") else "dev"
    pool = [e for e in read_tsv(bc5cdr_dir() / file, max_tokens, split) if e.text not in seen]
    return pool[:n] if n else []


def figures(m: dict) -> dict:
    """Micro/macro F1, P, R (and the bootstrap interval when there is one) of a metrics dict."""
    out = {"micro": round(m["micro"]["f1"], 4), "macro": round(m["macro"]["f1"], 4),
           "P": round(m["micro"]["precision"], 4), "R": round(m["micro"]["recall"], 4)}
    out.update({f"f1_{name}": round(row["f1"], 4) for name, row in m["per_class"].items()})
    ci = m.get("ci") or {}
    if ci.get("f1_low") is not None:
        out["ci"] = [round(ci["f1_low"], 4), round(ci["f1_high"], 4)]
    return out


def score(examples, predicted_spans, labels, bootstrap: int = 0) -> dict:
    """:func:`core.evaluation.scoring.score` (default mode) of predicted spans, as runs are scored."""
    items = [scoring.Scored(example=e, pred=list(p)) for e, p in zip(examples, predicted_spans, strict=True)]
    return figures(scoring.score(items, labels=labels, bootstrap=bootstrap))


# ---------------------------------------------------------------------------------------------


def run_baseline(db, project_id: int, kind: str, cfg: dict) -> dict:
    """A baseline run as the worker runs it (in this process); its row once finished."""
    run_id = create_run(db, project_id, kind, baselines.settings(kind, cfg), name=f"bench {kind}")
    db.execute("UPDATE runs SET status = 'running', started_at = ? WHERE id = ?", [now(), run_id])
    db.conn.commit()
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    baselines.run(ctx)
    ctx.end_phases("done")
    db.execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE id = ?", [now(), run_id])
    db.conn.commit()
    run_folder.write_run_card(db, run_id)
    return get_run(db, run_id)


def measure(db, run: dict, splits: dict, labels, extra: dict) -> dict:
    took = {p["phase"]: p for p in phases.list_phases(db, run["id"])}
    train = took.get("encoder_train") or took.get("crf_train")
    row: dict = {"run": run["id"], "train_s": round(train["seconds"], 1)}
    if "encoder_load" in took:
        row["load_s"] = round(took["encoder_load"]["seconds"], 1)
    for split in ("dev", "test"):
        row[split] = figures(run_scores.stored_metrics(db, run["id"], split))
        p = took[f"predict_{split}"]
        row[f"{split}_run_sent_per_s"] = round(p["total"] / max(p["seconds"], 1e-9), 1)
    predictor = predictors.load_predictor(run_folder.model_folder(run))
    predictor.predict(splits["dev"][:8])  # warm-up (the first call allocates)
    started = time.perf_counter()
    test = splits["test"]
    for b in range(0, len(test), predictor.batch_size):
        predictor.predict(test[b : b + predictor.batch_size])
    row["predict_sent_per_s"] = round(len(test) / (time.perf_counter() - started), 1)
    for name, data in extra.items():
        found = [p.spans for b in range(0, len(data), predictor.batch_size)
                 for p in predictor.predict(data[b : b + predictor.batch_size])]
        row[name] = score(data, found, labels, bootstrap=1000)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="encoder settings as key=value")
    parser.add_argument("--extra-test", type=int, default=0,
                        help="also score N further BC5CDR test sentences (held out, never used "
                        "for choices)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    settings = dict(kv.split("=", 1) for kv in args.settings)
    db, project, splits, labels = demo_project()
    extra = {}
    if args.extra_test:
        extra[f"bc5cdr-test{args.extra_test}"] = more_sentences("test.tsv", splits["test"],
                                                                args.extra_test)
    results: dict[str, dict] = {}
    for kind, cfg in (("crf", {}), ("encoder", settings)):
        run = run_baseline(db, project["id"], kind, cfg)
        results[kind] = {**measure(db, run, splits, labels, extra),
                         "settings": baselines.settings(kind, cfg)}
        print(f"{kind}:", json.dumps(results[kind]), flush=True)

    print()
    print(f"Demo project: {len(splits['train'])} train, {len(splits['dev'])} dev, "
          f"{len(splits['test'])} test sentences; {os.cpu_count()} CPU cores (timings as measured, "
          "on a shared machine).")
    names = ["dev", "test", *extra]
    head = (f"{'model':<8} {'split':<18} {'micro-F1':>8} {'macro-F1':>8} {'P':>6} {'R':>6}  "
            "test micro-F1 95% CI")
    print(head)
    print("-" * len(head))
    for model, row in results.items():
        for name in names:
            s = row[name]
            ci = f"  {s['ci'][0]:.3f}-{s['ci'][1]:.3f}" if "ci" in s and name != "dev" else ""
            print(f"{model:<8} {name:<18} {s['micro']:>8.3f} {s['macro']:>8.3f} {s['P']:>6.3f} "
                  f"{s['R']:>6.3f}{ci}")
        print(f"{model:<8} training {row['train_s']:.1f} s"
              + (f" (+ {row['load_s']:.1f} s loading)" if "load_s" in row else "")
              + f"; predicting {row['predict_sent_per_s']:.0f} sentences/s loaded from the run "
              f"folder, {row['test_run_sent_per_s']:.0f}/s in the run (storing included)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
