"""``nerlab evaluate``, ``nerlab predictions`` and ``nerlab baseline``: scores from the shell."""

from __future__ import annotations

import argparse
import json
import sys

from core import config
from core.cli.follow import wait_and_report
from core.data import projects
from core.data.db import get_db
from core.data.runs import get_run, log_path, plain_text
from core.errors import NerlabError, NotFound
from core.evaluation import run_scores, scoring
from core.jobs import launcher
from core.prediction import baselines
from core.prediction.baselines import KINDS
from core.prediction.encoder import BUNDLED_ENCODER, EncoderSettings, setting_help

#: The encoder's settings ``nerlab baseline --kind encoder`` takes as flags.
ENCODER_FLAGS = ("epochs", "lr", "batch_size", "max_length", "max_steps", "seed")


def _run(db, ref: str) -> dict:
    """A run by id, or by name when the name is unique."""
    if str(ref).isdigit():
        return get_run(db, int(ref))
    rows = list(db.query("SELECT * FROM runs WHERE name = ? ORDER BY id DESC", [ref]))
    if not rows:
        raise NotFound(f"No run with id or name {ref!r}. List runs with: nerlab runs PROJECT")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise NerlabError(f"Several runs are called {ref!r} (ids {ids}); give the id.")
    return rows[0]


def _splits(db, run: dict, split: str | None) -> list[str]:
    have = run_scores.prediction_splits(db, run["id"])
    if split:
        if split not in have:
            raise NerlabError(
                f"Run {run['id']} has no predictions on {split!r} "
                f"(it has: {', '.join(have) or 'none'})."
            )
        return [split]
    if not have:
        raise NerlabError(f"Run {run['id']} ({run['status']}) has no stored predictions yet.")
    return have


def format_table(metrics: dict) -> str:
    """Per-class precision / recall / F1 / support, then micro, macro and weighted averages."""
    lines = [f"{'':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}{'predicted':>10}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name[:14]:<14}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                     f"{row['f1']:>10.3f}{row['support']:>9}{row['predicted']:>10}")
    lines.append("")
    for avg in ("micro", "macro", "weighted"):
        row = metrics[avg]
        lines.append(f"{avg + ' avg':<14}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                     f"{row['f1']:>10.3f}{row['support']:>9}")
    ci = metrics.get("ci") or {}
    if ci.get("f1_low") is not None:
        lines.append(f"micro-F1 {int(ci['level'] * 100)}% bootstrap interval: "
                     f"{ci['f1_low']:.3f}–{ci['f1_high']:.3f} ({ci['samples']} resamples)")
    e = metrics["errors"]
    lines.append("errors: " + ", ".join(f"{scoring.ERROR_KIND_NAMES[k]} {e[k]}"
                                         for k in scoring.ERROR_KINDS if k != "correct"))
    p = metrics["parse"]
    lines.append(f"parse: {p['ok']} ok, {p['partial']} partial, {p['unparsable']} unparsable; "
                 f"{metrics['hallucinated']} hallucinated entities, "
                 f"{metrics['unknown_types']} unknown types")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    db = get_db()
    run = _run(db, args.run)
    splits = _splits(db, run, args.split)
    result = run_scores.evaluate_run(db, run["id"], splits=splits)
    if args.json:
        print(json.dumps({s: result[s][args.mode] for s in splits}, indent=2))
        return 0
    for split in splits:
        m = result[split][args.mode]
        print(f"Run {run['id']} {plain_text(run['name'], 60) or run['kind']} ({run['kind']}) on {split}, "
              f"{args.mode} mode: {scoring.summary_line(m)}")
        print(format_table(m))
        print()
    return 0


def cmd_predictions(args: argparse.Namespace) -> int:
    db = get_db()
    run = _run(db, args.run)
    split = _splits(db, run, args.split)[0]
    items = run_scores.load_scored(db, run["id"], split)
    if args.format == "conll":
        text = scoring.to_conll(items)
    else:
        text = "".join(json.dumps({
            "sentence_id": it.example.id, "text": it.example.text,
            "gold": [s.to_dict() for s in it.example.spans],
            "pred": [s.to_dict() for s in it.pred],
            "raw_output": it.raw_output, "parse_status": it.parse_status,
        }, ensure_ascii=False) + "\n" for it in items)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"Wrote {len(items)} sentences to {args.output}.", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def baseline_config(args: argparse.Namespace) -> dict:
    """The run config of ``nerlab baseline`` from its flags (only what was given)."""
    cfg: dict = {}
    if args.kind in baselines.PROMPTED:
        cfg["base_model"] = args.base_model or config.BUNDLED_MODEL
    elif args.kind == "encoder":
        cfg["base_model"] = args.base_model or BUNDLED_ENCODER
        for key in ENCODER_FLAGS:
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("base_model", *ENCODER_FLAGS)
                 if getattr(args, k) is not None]
        if given:
            raise NerlabError(f"A CRF baseline takes no {', '.join(given)}.")
    if args.kind == "few-shot":
        cfg["shots"] = args.shots
        cfg["selection"] = args.selection
    if args.splits:
        cfg["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.limit:
        cfg["limit"] = args.limit
    if args.kind in baselines.PROMPTED and args.max_new_tokens:
        cfg["max_new_tokens"] = args.max_new_tokens
    if args.kind in baselines.PROMPTED:
        cfg["constrained"] = args.constrained
    if args.kind in baselines.PROMPTED:
        cfg["template"] = args.template
    return cfg


def cmd_baseline(args: argparse.Namespace) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    run_id, started = launcher.submit_baseline(db, project["id"], args.kind, baseline_config(args),
                                               name=args.run_name or "")
    print(f"Run {run_id} ({args.kind}) {'started' if started else 'queued behind the active run'}."
          f" Log: {log_path(run_id)}")
    if not args.wait:
        return 0
    code = wait_and_report(db, run_id)
    if code != 0:
        return code
    for split in run_scores.prediction_splits(db, run_id):
        m = run_scores.metrics_for(db, run_id, split)
        if m:
            print(f"{split}: {scoring.summary_line(m)}")
    return 0


def _lower(text: str) -> str:
    return (text[:1].lower() + text[1:]).rstrip(".")


def register(subparsers) -> None:
    """Add the evaluation commands to ``nerlab``."""
    p = subparsers.add_parser("evaluate", help="score a run's predictions (per class, CI, errors)")
    p.add_argument("run", help="run id (or unique run name)")
    p.add_argument("--split", choices=config.SPLITS, help="default: every split with predictions")
    p.add_argument("--mode", choices=scoring.MODES, default="default",
                   help="default = conlleval; strict = seqeval strict IOB2")
    p.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("predictions", help="export a run's predictions next to the gold tags")
    p.add_argument("run", help="run id (or unique run name)")
    p.add_argument("--split", choices=config.SPLITS, default="test")
    p.add_argument("--format", choices=("conll", "jsonl"), default="conll",
                   help="conll: token, gold tag, predicted tag (what conlleval reads)")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_predictions)

    p = subparsers.add_parser("baseline", help="start a baseline run (zero-shot, few-shot, CRF, "
                              "encoder)")
    p.add_argument("name", help="project")
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--base-model", default=None,
                   help="zero-/few-shot: the bundled model (default), a Hugging Face id or a local "
                   f"folder; encoder: {BUNDLED_ENCODER!r} (default) or another BERT-style encoder")
    p.add_argument("--template", default="default", help="template name (latest version)")
    p.add_argument("--shots", type=int, default=5, help="few-shot: examples per prompt")
    p.add_argument("--selection", choices=("fixed", "retrieved"), default="fixed",
                   help="few-shot: the same examples for every sentence, or the most similar ones")
    p.add_argument("--splits", help="comma-separated splits to predict (default dev,test)")
    p.add_argument("--limit", type=int, default=0, help="predict at most N sentences per split")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="zero-/few-shot: cap every answer at N tokens (default: from the sentence)")
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True,
                   help="zero-/few-shot: constrained decoding (default on): well-formed answers, "
                   "entities only whole words of the sentence; --no-constrained to compare")
    defaults = EncoderSettings()
    for key in ENCODER_FLAGS:
        p.add_argument(f"--{key.replace('_', '-')}", type=type(getattr(defaults, key)), default=None,
                       help=f"encoder: {_lower(setting_help(key) or key)} "
                       f"(default {getattr(defaults, key)})")
    p.add_argument("--run-name", default="", help="a name for the run")
    p.add_argument("--wait", action="store_true",
                   help="print every phase's progress until the run ends, then its scores; "
                   "exit 0 finished, 1 failed, 2 stopped")
    p.set_defaults(func=cmd_baseline)
