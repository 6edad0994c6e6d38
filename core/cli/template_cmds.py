"""``nerlab template list|show|set|check``: instruction templates without the browser.

- ``nerlab template show PROJECT [--template NAME] [--version N] [--as toml|json]`` prints a
  template in the form ``set`` reads back, or ``--preview`` the prompt of a labelled sentence.
- ``nerlab template set PROJECT FILE`` saves a TOML or JSON description as a new version.
- ``nerlab template check PROJECT [--all-formats] [--json]`` renders every labelled sentence's
  gold answer, parses it back and lists those that do not round-trip, with the reason; it exits
  non-zero when any fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core import config
from core.data import projects
from core.data.db import get_db
from core.errors import NerlabError, TemplateError
from core.models.loader import load_tokenizer
from core.prompts.formats import OUTPUT_FORMATS, render_answer
from core.prompts.render import build_chat
from core.prompts.retrieval import ExampleRetriever
from core.prompts.roundtrip import check_project
from core.prompts.store import get_template, list_templates, list_versions, save_template
from core.prompts.template import PromptTemplate


def _toml_string(value: str) -> str:
    """A TOML string: multi-line literal when that is exact and readable, else a basic string."""
    printable = all(c == "\n" or c == "\t" or (ord(c) >= 32 and ord(c) != 127) for c in value)
    if "\n" in value and "'''" not in value and printable and not value.endswith("'"):
        return "'''\n" + value + "'''"
    return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML basic escapes


def to_toml(tpl: PromptTemplate) -> str:
    """The TOML description of a template (what ``nerlab template set`` reads)."""
    lines = [
        f"# {tpl.label}; output formats: {', '.join(OUTPUT_FORMATS)}",
        f"name = {_toml_string(tpl.name)}",
        f"output_format = {_toml_string(tpl.output_format)}",
        f"n_examples = {tpl.n_examples}",
        f"retrieval = {_toml_string(tpl.retrieval)}",
        f"system = {_toml_string(tpl.system)}",
        f"instruction = {_toml_string(tpl.instruction)}",
    ]
    return "\n".join(lines) + "\n"


def read_description(path: str | Path) -> dict:
    """Read a template description from a ``.toml`` or ``.json`` file (others: tried as both)."""
    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NerlabError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise NerlabError(f"{path} is not UTF-8 text.") from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    suffix = path.suffix.lower()
    errors = []
    for kind in (["json"] if suffix == ".json" else ["toml"] if suffix == ".toml" else ["json", "toml"]):
        try:
            value = json.loads(data) if kind == "json" else tomllib.loads(data)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"as {kind.upper()}: {exc}")
            continue
        if not isinstance(value, dict):
            raise NerlabError(f"{path}: a template description must be an object/table.")
        return value
    raise NerlabError(f"Cannot read {path} " + "; ".join(errors) + ".")


def _template(db, project: dict, args) -> PromptTemplate:
    return get_template(db, project["id"], args.template, getattr(args, "version", None))


def cmd_list(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.project)
    get_template(db, project["id"])  # make sure the default exists
    rows = list_templates(db, project["id"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        versions = list_versions(db, project["id"], r["name"])
        runs = sum(v["runs"] for v in versions)
        print(f"{r['name']}  v{r['latest']}  ({r['versions']} version(s), {runs} run(s), saved {r['updated_at']})")
    return 0


def cmd_show(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.project)
    tpl = _template(db, project, args)
    if args.preview:
        examples = projects.examples(db, project["id"], split="train") or projects.examples(db, project["id"])
        if not examples:
            raise NerlabError(f"Project {project['name']!r} has no labelled sentence to preview.")
        ex = examples[0]
        labels = projects.list_labels(db, project["id"])
        tokenizer = None
        if args.model:

            tokenizer = load_tokenizer(args.model)
        shots = []
        if tpl.n_examples:

            train = projects.examples(db, project["id"], split="train")
            shots = ExampleRetriever(train, tpl.retrieval).top_k(ex.text, tpl.n_examples, exclude_id=ex.id)
        prompt, target = build_chat(
            tokenizer, tpl, ex.text, labels, shots, answer=render_answer(tpl, ex.text, ex.spans)
        )
        print(prompt + target)
        return 0
    if args.as_ == "json":
        print(json.dumps({k: v for k, v in tpl.to_dict().items() if k != "id"}, indent=2, ensure_ascii=False))
    else:
        print(to_toml(tpl), end="")
    return 0


def cmd_set(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.project)
    data = read_description(args.file)
    data.pop("version", None)
    data.pop("id", None)
    if args.template:
        data["name"] = args.template
    data.setdefault("name", "default")
    try:
        tpl = PromptTemplate.from_dict(data)
    except TemplateError as exc:
        raise NerlabError(f"{args.file}: {exc}") from None
    saved = save_template(db, project["id"], tpl)
    print(f"Saved template {saved.name!r} v{saved.version} (id {saved.id}) in project {project['name']!r}.")
    return 0


def cmd_check(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.project)
    tpl = _template(db, project, args)
    examples = projects.examples(db, project["id"], split=args.split)
    if not examples:
        raise NerlabError(
            f"Project {project['name']!r} has no labelled sentences"
            + (f" in {args.split}" if args.split else "") + " to check."
        )
    reports = check_project(db, project["id"], tpl, OUTPUT_FORMATS if args.all_formats else None,
                            split=args.split)
    results = [{
        "output_format": r.output_format,
        "checked": r.checked,
        "failed": len(r.failures),
        "failures": [f.to_dict() | {"position": r.numbers[f.sentence_id]} for f in r.failures],
    } for r in reports]
    failed = any(r["failed"] for r in results)
    if args.json:
        print(json.dumps({
            "project": project["name"], "template": tpl.name, "version": tpl.version,
            "ok": not failed, "results": results,
        }, indent=2, ensure_ascii=False))
        return 1 if failed else 0
    for r in results:
        mark = "ok" if not r["failed"] else "FAILED"
        print(f"{tpl.label} as {r['output_format']}: {r['checked'] - r['failed']}/{r['checked']} "
              f"labelled sentences round-trip ({mark})")
        for f in r["failures"][: args.limit]:
            print(f"  sentence {f['position']} (id {f['sentence_id']}): {f['reason']}")
            print(f"    text:   {f['text']}")
            print(f"    answer: {f['answer']}")
        if r["failed"] > args.limit:
            print(f"  … and {r['failed'] - args.limit} more (use --json for all)")
    return 1 if failed else 0


def register(subparsers) -> None:
    """Add ``template list|show|set|check`` to the ``nerlab`` parser."""
    parser = subparsers.add_parser(
        "template", help="show, set and check instruction templates",
        description="Instruction templates are versioned: every `set` adds a version, and runs "
        f"record the version they used. Data in $NERLAB_HOME (default ./{config.DEFAULT_HOME}).",
    )
    sub = parser.add_subparsers(dest="template_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, version: bool = True) -> None:
        p.add_argument("project", help="project name or id")
        p.add_argument("--template", "-t", default="default", help="template name (default: default)")
        if version:
            p.add_argument("--version", type=int, help="a saved version (default: the latest)")

    p = sub.add_parser("list", help="a project's templates and their versions")
    p.add_argument("project", help="project name or id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a template (as TOML, the form `set` reads)")
    common(p)
    p.add_argument("--as", dest="as_", choices=("toml", "json"), default="toml")
    p.add_argument("--preview", action="store_true",
                   help="print the prompt and target of the first labelled training sentence")
    p.add_argument("--model", help="with --preview: apply this base model's chat template "
                   f"(e.g. {config.BUNDLED_MODEL!r}); default: a plain prompt")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("set", help="save a TOML or JSON template description as a new version")
    p.add_argument("project", help="project name or id")
    p.add_argument("file", help="a .toml or .json file with name, instruction, output_format, "
                   "and optionally system, n_examples, retrieval")
    p.add_argument("--template", "-t", help="save under this name (default: the file's name field)")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("check", help="check that every labelled sentence's gold answer parses back "
                       "to its spans (exit 1 if any does not)")
    common(p)
    p.add_argument("--all-formats", action="store_true", help="check every output format")
    p.add_argument("--split", choices=config.SPLITS, help="only this split (default: all)")
    p.add_argument("--limit", type=int, default=20, help="failures listed per format (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable report with every failure")
    p.set_defaults(func=cmd_check)
