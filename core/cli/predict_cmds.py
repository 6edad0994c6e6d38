"""``nerlab predict`` and ``nerlab suggest``: a trained model on new text, and on the labelling
queue.

``nerlab predict RUN INPUT --out OUT.jsonl`` runs in the background like any run (a ``predict``
job with its phases) and, by default, waits for it, printing its progress; OUT gets one JSON
object per input sentence, in order (or CoNLL), written whole at the end or not at all.
``nerlab suggest PROJECT [--run RUN] [--wait]`` pre-labels the sentences that wait to be
labelled, with a run or the automatic CRF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.cli.eval_cmds import _run
from core.cli.follow import wait_and_report
from core.data import io, projects, suggestions
from core.data.db import get_db
from core.errors import NerlabError
from core.jobs import suggest
from core.prediction import bulk, vllm_backend
from core.prediction.run_folder import check_predictable, run_title

#: Output suffixes that mean CoNLL (anything else is JSONL).
CONLL_SUFFIXES = (".conll", ".bio", ".iob", ".tsv")
#: Input formats a prediction reads (those with sentences in a text file).
INPUT_FORMATS = ("auto", "text", "conll", "jsonl", "labelstudio", "doccano")


def _read_input(path: str) -> tuple[bytes, str]:
    if path == "-":
        return io.read_stdin(), "stdin"
    p = Path(path)
    if p.is_dir():
        raise NerlabError(f"{path} is a folder: give a text, CoNLL or JSONL file.")
    if not p.is_file():
        raise NerlabError(f"No file {path!r}.")
    try:
        return p.read_bytes(), p.name
    except OSError as exc:
        raise NerlabError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def _output(args: argparse.Namespace, input_path: str) -> tuple[Path | None, str]:
    """The output file (None: standard output) and its format, checked before the job starts."""
    if args.out in (None, "-"):
        return None, args.out_format or "jsonl"
    out = Path(args.out).expanduser().resolve()
    fmt = args.out_format or ("conll" if out.suffix.lower() in CONLL_SUFFIXES else "jsonl")
    if out.is_dir():
        raise NerlabError(f"--out {args.out} is a folder: give a file name.")
    if not out.parent.is_dir():
        raise NerlabError(f"--out {args.out}: the folder {out.parent} does not exist.")
    if not os.access(out.parent, os.W_OK):
        raise NerlabError(f"--out {args.out}: cannot write in {out.parent}.")
    if input_path != "-" and Path(input_path).resolve() == out:
        raise NerlabError("--out names the input file itself; give another file.")
    return out, fmt


def cmd_predict(args: argparse.Namespace) -> int:
    db = get_db()
    run = _run(db, args.run)
    check_predictable(run)
    out, out_format = _output(args, args.input)
    data, name = _read_input(args.input)
    fmt, records = io.parse_bytes(data, None if args.format == "auto" else args.format, name=name)
    job, started = suggest.submit_predict(db, run["id"], records, name, out=str(out) if out else None,
                                          out_format=out_format, batch_size=args.batch_size,
                                          gpus=args.gpus)
    report = sys.stderr if out is None else sys.stdout
    n = sum(1 for r in records if r.text.strip())
    print(f"Job {job}: {n} sentence(s) of {name} (read as {fmt}) through run {run_title(run)} "
          f"({run['kind']}).", file=report)
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    print(vllm_backend.backend_for(run["kind"], method=str(config.get("method") or ""),
                                   processes=int(args.gpus or 1)).line, file=report)
    if not started:
        print(f"Job {job} is queued behind the active run.", file=sys.stderr)
    if not args.wait:
        target = out or bulk.output_path(job, out_format)
        print(f"It goes on in the background; the output will be {target}. Follow it with: "
              f"nerlab runs {json.dumps(projects.get_project(db, run['project_id'])['name'])}",
              file=report)
        return 0
    code = wait_and_report(db, job, out=report)
    if code == 0:
        if out is None:
            sys.stdout.write(bulk.output_text(job, out_format))
        else:
            print(f"Wrote {n} sentence(s) to {out} ({out_format}).", file=report)
    return code


def cmd_suggest(args: argparse.Namespace) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    pid = project["id"]
    if args.every is not None:
        suggestions.set_settings(db, pid, auto_every=args.every)
    if args.off:
        suggestions.set_settings(db, pid, suggest_from=suggestions.OFF)
        gone = suggestions.clear_pending(db, pid)
        print(f"Suggestions are off for {project['name']!r}; {gone} unused suggestion(s) removed.")
        return 0
    if args.run is not None:
        run = _run(db, args.run)
        if run["project_id"] != pid:
            raise NerlabError(f"Run {run['id']} belongs to another project.")
        check_predictable(run)
        suggestions.set_settings(db, pid, suggest_from=suggestions.run_source(run["id"]))
    elif args.auto:
        suggestions.set_settings(db, pid, suggest_from=suggestions.AUTO)
    source = suggest.resolve_source(db, pid)
    kind, run_id = suggestions.parse_source(source)
    if kind == suggestions.OFF:
        raise NerlabError(f"Suggestions are off for {project['name']!r}: pass --run RUN or --auto.")
    if kind == suggestions.AUTO:
        job = suggest.retrain_auto(db, pid, force=True)
        if job is None:
            state = suggest.auto_state(db, pid)
            if state["active"] is None:
                raise NerlabError("The automatic CRF needs labelled training sentences; label "
                                  "some first (or pass --run RUN).")
            job = state["active"]["id"]
            print(f"The automatic CRF is already training (run {job}).", file=sys.stderr)
        what = "the automatic CRF"
    else:
        job, started = suggest.submit_suggest(db, pid, run_id, limit=args.limit or 0)
        if not started:
            print(f"Job {job} is queued behind the active run.", file=sys.stderr)
        what = f"run {suggest.source_title(db, source)}"
    print(job)
    print(f"Pre-labelling the sentences of {project['name']!r} that wait to be labelled with "
          f"{what}; the Label page shows them.", file=sys.stderr)
    if not args.wait:
        return 0
    code = wait_and_report(db, job)
    counts = suggest.pending_count(db, pid, source)
    print(f"{counts['suggested']} of {counts['unlabelled']} sentence(s) waiting to be labelled "
          "have a suggestion.")
    return code


def register(subparsers) -> None:
    """Add ``predict`` and ``suggest`` to the ``nerlab`` parser."""
    p = subparsers.add_parser(
        "predict", help="predict the entities of a file with a finished run (in the background)",
        description="Predict the entities of every sentence of INPUT (a text file with one "
        "sentence a line, CoNLL or JSONL; - reads standard input) with run RUN's model, without "
        "adding them to a project. OUT gets one JSON object per input sentence, in order: "
        '{"text", "spans": [{"start", "end", "label", "confidence"}], "confidence", ...} (what '
        "`nerlab import --format jsonl` reads), or CoNLL for a .conll file; it is written whole "
        "when the job has finished, never half. Exit 0 finished, 1 failed, 2 stopped.")
    p.add_argument("run", help="run id (or unique name): a training run or a baseline")
    p.add_argument("input", help="file to predict, or - for standard input")
    p.add_argument("--out", default="-", help="output file (default: standard output)")
    p.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                   help="the input's format (default: read from the content)")
    p.add_argument("--out-format", choices=bulk.OUTPUT_FORMATS,
                   help="default: conll for a .conll/.bio/.iob/.tsv file, else jsonl")
    p.add_argument("--batch-size", type=int, help="sentences predicted together")
    p.add_argument("--gpus", type=int, default=1,
                   help="processes (one per GPU, accelerate launch) sharing the sentences")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="follow the job until it ends (default); --no-wait returns at once")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "suggest", help="pre-label the sentences waiting to be labelled (the Label page shows them)",
        description="Pre-label the project's sentences that wait to be labelled, with a run "
        "(--run; it becomes the project's source of suggestions) or the automatic CRF (--auto), "
        "else with the project's source (its choice, else its best run, else the automatic "
        "CRF). Annotators then correct the suggestions on the Label page.")
    p.add_argument("name", help="project")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", help="run id (or unique name) whose model suggests")
    which.add_argument("--auto", action="store_true",
                       help="the automatic CRF (trained now on the labelled sentences)")
    which.add_argument("--off", action="store_true",
                       help="no suggestions: remove those nobody used yet")
    p.add_argument("--every", type=int, metavar="N",
                   help="retrain the automatic CRF after every N newly labelled sentences")
    p.add_argument("--limit", type=int, default=0, help="at most this many sentences (a run)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.set_defaults(func=cmd_suggest)
