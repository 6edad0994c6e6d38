"""``nerlab``: the headless command line. Every command reads ``NERLAB_HOME``.

Errors exit non-zero with one line on stderr saying why. Commands of other areas (templates,
training, evaluation) live in their own modules and register themselves through ``register``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from core import config
from core.cli import eval_cmds, run_cmds, template_cmds
from core.data import io, projects
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.data.phases import format_duration
from core.errors import NerlabError
from core.models import loader, quiet

#: Modules that add sub-commands: each defines ``register(subparsers) -> None`` and sets
#: ``func`` on its parsers (``func(args) -> int``).
COMMAND_MODULES = (template_cmds, run_cmds, eval_cmds)


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
    result = io.import_file(
        db, project["id"], args.file, fmt=args.format, split=args.split,
        allow_new_labels=False if args.fixed_labels else None,
    )
    print(result.summary())
    return 0


def cmd_export(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    out = io.export(
        db, project["id"], args.format, split=args.split,
        include_unlabelled=args.include_unlabelled, path=args.file,
    )
    n = len(projects.examples(db, project["id"], split=args.split, labelled_only=not args.include_unlabelled))
    print(f"Exported {n} sentence(s) to {args.file if args.format != 'hf' else out}.")
    return 0


def cmd_split(args) -> int:
    db = get_db()
    project = _project(db, args.name)
    counts = projects.assign_splits(db, project["id"], dev=args.dev, test=args.test, seed=args.seed)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
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

    p = sub.add_parser("import", help="import sentences (atomic: a bad file writes nothing)")
    p.add_argument("name", help="project")
    p.add_argument("file")
    p.add_argument("--format", choices=io.IMPORT_FORMATS, help="default: from the file name")
    p.add_argument("--split", choices=config.SPLITS, help="split for sentences that name none")
    p.add_argument("--fixed-labels", action="store_true", help="reject entity types not in the project")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export labelled sentences")
    p.add_argument("name", help="project")
    p.add_argument("file", help="output file (a folder for --format hf)")
    p.add_argument("--format", choices=io.EXPORT_FORMATS, default="conll")
    p.add_argument("--split", choices=config.SPLITS)
    p.add_argument("--include-unlabelled", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("split", help="assign train/dev/test reproducibly")
    p.add_argument("name", help="project")
    p.add_argument("--dev", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
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
        return int(func(args) or 0)
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
