"""Quality on the demo (BC5CDR) dev and test splits: every kind of model NERLab trains on a CPU.

    .venv/bin/python benchmarks/bench_quality.py [--home DIR] [--train-run ID] [--limit N]
                                                 [--skip zero-shot,five-shot,...]

For the CRF, the encoder (when the ``encoder`` baseline kind is there), zero-shot and five-shot
prompting of the bundled SmolLM2-135M, and a fine-tune with the Train page's default CPU preset:
micro / macro F1, unparsable answers and entities not in the sentence on dev and test; for the
LLMs with constrained decoding (the default) and without, and the sentences/s of both, timed on
the same sentences alternately in one process (target: constrained >= 0.85 of unconstrained).

Runs are real NERLab runs in ``--home`` (a fresh temporary data directory by default), found
again by name there, so a second call reuses the slow ones; ``--train-run`` scores a finished
fine-tuning run of the demo instead of training one (about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from core.data import projects
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.data.runs import get_run
from core.evaluation.run_scores import metrics_for
from core.evaluation.scoring import Scored, score
from core.jobs import launcher
from core.training.runconfig import DEFAULT_PRESET, get_preset

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("dev", "test")


def _run(db, pid: int, name: str, submit) -> dict:
    row = db.execute("SELECT id FROM runs WHERE project_id = ? AND name = ? AND status ="
                     " 'finished' ORDER BY id DESC", [pid, name]).fetchone()
    if row:
        return get_run(db, row[0])
    t = time.perf_counter()
    run_id, _ = submit()
    run = launcher.wait(db, run_id, timeout_s=6 * 3600, poll_s=2)
    if run["status"] != "finished":
        raise SystemExit(f"run {name} ended {run['status']}: {run.get('error')}")
    print(f"  {name}: run {run_id} finished in {time.perf_counter() - t:.0f} s", flush=True)
    return run


def _row(metrics: dict) -> dict:
    return {"micro": metrics["micro"]["f1"], "macro": metrics["macro"]["f1"],
            "unparsable": metrics["parse"]["unparsable"], "hallucinated": metrics["hallucinated"],
            "per_class": {k: round(v["f1"], 3) for k, v in metrics["per_class"].items()}}


def stored(db, run: dict) -> dict:
    """The scores the run stored (its own predictions of dev and test)."""
    found = {split: metrics_for(db, run["id"], split) for split in SPLITS}
    return {split: _row(m) for split, m in found.items() if m}


def llm(db, pid: int, run: dict, limit: int) -> dict:
    """Predict dev and test with the run's model, constrained and not, alternating per batch;
    score both and time both."""
    from core.prediction.predictors import load_predictor
    from core.prediction.run_folder import model_folder

    predictor = load_predictor(model_folder(run))
    labels = [r["name"] for r in projects.list_labels(db, pid)]
    out: dict = {}
    seconds = {True: 0.0, False: 0.0}
    n_timed = 0
    for split in SPLITS:
        examples = projects.examples(db, pid, split=split)
        if limit:
            examples = examples[:limit]
        preds = {True: [], False: []}
        step = predictor.batch_size
        for i in range(0, len(examples), step):
            batch = examples[i:i + step]
            order = (True, False) if (i // step) % 2 == 0 else (False, True)
            for constrained in order:
                predictor.constrained = constrained
                t = time.perf_counter()
                preds[constrained] += predictor.predict(batch)
                seconds[constrained] += time.perf_counter() - t
            n_timed += len(batch)
        for constrained, found in preds.items():
            items = [Scored(example=ex, pred=p.spans, parse_status=p.status, raw_output=p.raw,
                            hallucinated=list(p.details.get("hallucinated", [])),
                            unknown_types=list(p.details.get("unknown_types", [])))
                     for ex, p in zip(examples, found, strict=True)]
            out.setdefault(constrained, {})[split] = _row(score(items, labels=labels,
                                                                 bootstrap=0))
    out["speed"] = {c: n_timed / s for c, s in seconds.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data directory (default: a new temporary one)")
    parser.add_argument("--train-run", type=int, help="a finished fine-tuning run to score")
    parser.add_argument("--limit", type=int, default=0,
                        help="LLMs: at most N sentences per split (0 = all)")
    parser.add_argument("--skip", default="", help="comma-separated: crf,encoder,zero-shot,"
                        "five-shot,fine-tune")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="nerlab-quality-"))
    os.environ["NERLAB_HOME"] = str(home)
    cached = ROOT / ".pytest_cache" / "nerlab-models"
    if cached.is_dir():
        os.environ.setdefault("NERLAB_MODELS_DIR", str(cached))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    db = get_db()
    pid = ensure_demo_project(db)["id"]
    print(f"Data directory {home}; demo splits {projects.split_counts(db, pid)}", flush=True)
    from core.prediction import baselines

    table: list[tuple[str, str, dict]] = []
    speeds: dict[str, dict] = {}
    if "crf" not in skip:
        run = _run(db, pid, "quality-crf", lambda: launcher.submit_baseline(
            db, pid, "crf", {}, name="quality-crf"))
        table.append(("CRF", "-", stored(db, run)))
    if "encoder" not in skip and "encoder" in baselines.KINDS:
        run = _run(db, pid, "quality-encoder", lambda: launcher.submit_baseline(
            db, pid, "encoder", {}, name="quality-encoder"))
        table.append(("Encoder (all-MiniLM-L6-v2)", "-", stored(db, run)))
    prompted = [("zero-shot", "Zero-shot", {}), ("five-shot", "Five-shot", {"shots": 5})]
    for key, title, extra in prompted:
        if key in skip:
            continue
        kind = "zero-shot" if key == "zero-shot" else "few-shot"
        run = _run(db, pid, f"quality-{key}", lambda kind=kind, key=key, extra=extra:
                   launcher.submit_baseline(db, pid, kind, {"splits": ["dev"], "limit": 1,
                                                            **extra}, name=f"quality-{key}"))
        found = llm(db, pid, run, args.limit)
        speeds[title] = found.pop("speed")
        for constrained in (True, False):
            table.append((title, "yes" if constrained else "no", found[constrained]))
    if "fine-tune" not in skip:
        if args.train_run:
            run = get_run(db, args.train_run)
        else:
            cfg = get_preset(DEFAULT_PRESET).config()
            run = _run(db, pid, "quality-fine-tune", lambda: launcher.submit_training(
                db, pid, cfg, name="quality-fine-tune"))
        table.append((f"Fine-tuned ({DEFAULT_PRESET}), the run's own scores, all sentences",
                      "yes" if run["config"].get("train", {}).get("constrained", True) else "no",
                      stored(db, run)))
        found = llm(db, pid, run, args.limit)
        speeds["Fine-tuned"] = found.pop("speed")
        for constrained in (True, False):
            table.append((f"Fine-tuned ({DEFAULT_PRESET})", "yes" if constrained else "no",
                          found[constrained]))

    print(f"\nLLM rows other than the run's own scores: the first {args.limit or 'all'} sentences "
          "of each split.")
    print("\n| model | constrained | dev micro | dev macro | test micro | test macro | "
          "test unparsable | test hallucinated | test per type |")
    print("|---|---|---|---|---|---|---|---|---|")
    for title, constrained, rows in table:
        dev, test = rows.get("dev"), rows.get("test")
        cells = [f"{dev['micro']:.3f}" if dev else "-", f"{dev['macro']:.3f}" if dev else "-"]
        cells += [f"{test['micro']:.3f}", f"{test['macro']:.3f}", str(test["unparsable"]),
                  str(test["hallucinated"]), ", ".join(f"{k} {v}" for k, v in
                                                       test["per_class"].items())] if test else \
            ["-"] * 5
        print(f"| {title} | {constrained} | " + " | ".join(cells) + " |")
    if speeds:
        print("\n| model | sentences/s constrained | unconstrained | ratio (target >= 0.85) |")
        print("|---|---|---|---|")
        for title, s in speeds.items():
            print(f"| {title} | {s[True]:.2f} | {s[False]:.2f} | {s[True] / s[False]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
