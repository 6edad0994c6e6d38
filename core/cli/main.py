"""``nerlab``: the headless command line. Every command reads ``NERLAB_HOME``.

Errors exit non-zero with one line on stderr saying why. Commands of other areas (templates,
training, evaluation) live in their own modules and register themselves through ``register``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from core import config
from core.cli import eval_cmds, predict_cmds, run_cmds, team_cmds, template_cmds
from core.data import io, projects, suggestions
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.data.phases import format_duration
from core.errors import NerlabError
from core.models import loader, quiet

#: Modules that add sub-commands: each defines ``register(subparsers) -> None`` and sets
#: ``func`` on its parsers (``func(args) -> int``).
COMMAND_MODULES = (template_cmds, run_cmds, eval_cmds, predict_cmds, team_cmds)


def _project(db, name: str) -> dict:
    return projects.get_project(db, name)


def cmd_init(args) -> int:
    db = get_db()
    labels = [s.strip() for s in (args.labels or "").split(",") if s.strip()]
    project = projects.create_project(
        db, args.name, labels=labels, description=args.description or "", fixed_labels=args.fixed_labels
    )
    print(f"Created project {project['name']!r} (id {project['id']}) in {config.db_path()}.")
    return 0


def cmd_import(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    options = {"split": args.split, "allow_new_labels": False if args.fixed_labels else None,
               "update": args.update, "text_field": args.text_field, "tags": args.tags,
               "as_annotator": args.annotator}
    if args.label_config:
        options["label_config"] = _read_text(args.label_config)
    fmt = None if args.format == "auto" else args.format
    if args.file == "-":
        result = io.import_bytes(db, project["id"], io.read_stdin(), fmt, name="stdin", **options)
    else:
        result = io.import_file(db, project["id"], args.file, fmt=fmt, **options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"{result.summary()} (read as {result.format})")
    for line in result.details():
        print(line)
    return 0


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NerlabError(f"Cannot read {path}: {exc}") from None


def cmd_export(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    to_stdout = args.file == "-"
    if to_stdout and args.format == "hf":
        raise NerlabError("The Hugging Face export is a folder: give a folder name, not -.")
    notes: list[str] = []
    out = io.export(
        db, project["id"], args.format, split=args.split, include_unlabelled=args.include_unlabelled,
        path=None if to_stdout else args.file, run_id=args.run, comments=not args.no_comments,
        notes=notes,
    )
    if to_stdout:
        if isinstance(out, bytes):
            sys.stdout.buffer.write(out)
        else:
            sys.stdout.write(out)
        sys.stdout.flush()
    elif args.format == "labelstudio":
        names = [row["name"] for row in projects.list_labels(db, project["id"])]
        config_path = Path(args.file).with_suffix(".config.xml")
        config_path.write_text(io.labelstudio_config(names), encoding="utf-8")
        notes.append(f"Label Studio labelling config for these tasks: {config_path}")
    n = len(io.export_rows(db, project["id"], split=args.split,
                           include_unlabelled=args.include_unlabelled))
    # The report goes to stderr when the export itself goes to stdout.
    report = sys.stderr if to_stdout else sys.stdout
    print(f"Exported {n} sentence(s) to {'stdout' if to_stdout else out if args.format == 'hf' else args.file}.",
          file=report)
    for note in notes:
        print(note, file=report)
    return 0


def cmd_split(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    report = projects.split_project(db, project["id"], dev=args.dev, test=args.test, seed=args.seed,
                                    reassign=args.reassign)
    if args.json:
        print(json.dumps({**asdict(report), "summary": report.summary()}, indent=2))
        return 0
    print(report.summary())
    return 0


def cmd_stats(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    st = projects.stats(db, project["id"])
    if args.json:
        print(json.dumps({"project": project["name"], **st}, indent=2))
        return 0
    print(f"{project['name']}: {st['labelled']} of {st['sentences']} sentences labelled, "
          f"{st['spans']} spans, {st['runs']} runs")
    for split, c in st["splits"].items():
        print(f"  {split:5}  {c['labelled']:>6} / {c['sentences']:<6} labelled")
    for label, n in st["spans_per_label"].items():
        print(f"  {label}: {n} spans")
    sg = st["suggestions"]
    if sg["sentences"]:
        print(f"  suggestions: {sg['pending']} waiting, {sg['in_progress']} in progress; "
              + suggestions.describe(sg))
    return 0


def cmd_projects(args) -> int:
    db = get_db()
    rows = projects.list_projects(db)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No projects in {config.db_path()}. Create one with: nerlab init NAME --labels A,B")
    for r in rows:
        print(f"{r['id']:>4}  {r['name']}  ({r['labelled']}/{r['sentences']} labelled, {r['runs']} runs)")
    return 0


def cmd_demo(args) -> int:
    project = ensure_demo_project(get_db())
    print(f"Demo project {project['name']!r} is ready (id {project['id']}).")
    return 0


def cmd_model(args) -> int:
    started = time.perf_counter()
    quiet.quiet_libraries()  # its own progress lines, not the libraries' bars
    if loader.needs_conversion(args.name):
        print("Converting the bundled model to safetensors (once; about a minute, more on a busy "
              "machine)…", flush=True)
        shown = [-1]

        def progress(done: int, total: int) -> None:
            if done // 10 == shown[0] // 10 and done < total:
                return  # a line per 10%
            shown[0] = done
            took = time.perf_counter() - started
            eta = (f", ETA {format_duration(took / done * (total - done))}"
                   if 0 < done < total else "")
            print(f"  {100 * done // total}% ({format_duration(took)}{eta})", flush=True)

        loader.ensure_bundled_model(progress=progress)
    path = loader.resolve(args.name)
    print(f"{args.name} → {path} ({time.perf_counter() - started:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerlab",
        description="Label, fine-tune and evaluate NER models. Data lives in $NERLAB_HOME "
        f"(default ./{config.DEFAULT_HOME}).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create a project")
    p.add_argument("name")
    p.add_argument("--labels", help="comma-separated entity types, e.g. PER,ORG,LOC")
    p.add_argument("--description", default="")
    p.add_argument("--fixed-labels", action="store_true", help="reject imports with other types")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", help="import sentences (atomic: a bad file writes nothing)",
                       description="Import a file (or a Hugging Face dataset folder); - reads "
                       "standard input. The format is read from the content unless --format says.")
    p.add_argument("name", help="project")
    p.add_argument("file", help="file, dataset folder, or - for standard input")
    p.add_argument("--format", choices=("auto", *io.IMPORT_FORMATS), default="auto",
                   help="default: read from the content")
    p.add_argument("--split", choices=config.SPLITS, help="split for sentences that name none")
    p.add_argument("--fixed-labels", action="store_true", help="reject entity types not in the project")
    p.add_argument("--update", action="store_true",
                   help="apply the file's labels to sentences already in the project (and say what changed)")
    p.add_argument("--annotator", metavar="NAME",
                   help="the file holds NAME's labels: they become NAME's annotations of the "
                   "sentences already in the project (and of new ones), beside everyone else's, "
                   "so that they can be compared (nerlab agreement)")
    p.add_argument("--text-field", help="Label Studio: the data field that holds the sentence")
    p.add_argument("--label-config", metavar="FILE",
                   help="Label Studio: the labelling config (XML), to find the text field")
    p.add_argument("--tags", help="Hugging Face: tag names for numeric ner_tags, e.g. O,B-PER,I-PER")
    p.add_argument("--json", action="store_true", help="print the import report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export sentences (labelled ones unless asked)")
    p.add_argument("name", help="project")
    p.add_argument("file", help="output file, - for standard output (a folder for --format hf)")
    p.add_argument("--format", choices=io.EXPORT_FORMATS, default="conll")
    p.add_argument("--split", choices=config.SPLITS)
    p.add_argument("--include-unlabelled", action="store_true",
                   help="also sentences not done yet (marked as such in the file)")
    p.add_argument("--run", type=int, metavar="RUN_ID",
                   help="Label Studio: add this run's predictions as pre-annotations")
    p.add_argument("--no-comments", action="store_true",
                   help="CoNLL: leave out the '# split = ...' lines (for readers that reject them)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("split", help="draw dev (and test) sentences reproducibly",
                       description="Draw dev and test sentences at random (same seed, same split). "
                       "Test sentences, and sentences placed by hand or dev sentences placed by an "
                       "import, stay where they are unless --reassign; a share you leave out is 0 "
                       "for a split the import or a person filled, else 0.1 (dev) and 0.2 (test).")
    p.add_argument("name", help="project")
    p.add_argument("--dev", type=float, default=None, help="share of the movable sentences for dev")
    p.add_argument("--test", type=float, default=None, help="share of the movable sentences for test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reassign", action="store_true",
                   help="also move sentences placed by hand or by an import, and test sentences "
                   "(never those already scored as test data)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("stats", help="counts per split and entity type")
    p.add_argument("name", help="project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("projects", help="list projects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_projects)

    p = sub.add_parser("demo", help="create the BC5CDR demo project if it is missing")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("model", help="resolve (and for the bundled model, convert) a base model")
    p.add_argument("name", nargs="?", default=config.BUNDLED_MODEL)
    p.set_defaults(func=cmd_model)

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (e.g. ``nerlab stats X | head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except NerlabError as exc:
        print(f"nerlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nerlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for the user
        print(f"nerlab: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
