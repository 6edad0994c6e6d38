"""Instruction templates: validated, versioned data that turns a sentence into a prompt and its
gold spans into the answer the model learns, and the parser that turns any model output back
into spans on the sentence.

A template is an instruction with placeholders (``{labels}``, ``{guidelines}``, ``{format}``,
``{examples}``, ``{sentence}``) plus an output format:

- ``json_list``: ``[{"type": "Chemical", "text": "aspirin"}]`` (the financial-NER paper's form),
- ``inline_tags``: the sentence with each entity written ``[Chemical: aspirin]`` (the LoRA+ form),
- ``json_dict``: ``{"Chemical": ["aspirin"], "Disease": ["pain"]}``.

Rendering is plain placeholder substitution: nothing in a template is ever evaluated (no
``eval``, no Jinja). The model's own chat template (Jinja, run by transformers) wraps the rendered
text; :func:`build_chat` is the one function that builds the prompt for both training and
inference, so the two always see the same string.

:func:`parse_output` never raises: it tolerates code fences, text around the JSON, single quotes,
trailing commas and a truncated last item, maps each entity string back to character offsets (the
k-th mention of a repeated string to its k-th free occurrence, whole-word occurrences before those
inside a longer word, longer mentions placed first so a short one never takes a place inside a
long one; exact case first, then case-insensitive, then whitespace-insensitive), and reports
hallucinated entities and unknown types separately. Inline tags are read by aligning the output
with the sentence, so their offsets are exact even for repeated strings.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from sqlite_utils import Database

from core.db import now
from core.errors import NerlabError, NotFound
from core.spans import Example, Span

OUTPUT_FORMATS = ("json_list", "inline_tags", "json_dict")
#: How each output format is named to a user.
FORMAT_TITLES = {
    "json_list": 'JSON list of {"type", "text"} objects',
    "inline_tags": "Inline tags: [TYPE: entity]",
    "json_dict": "JSON object keyed by type",
}
#: Ways of picking the retrieved examples for ``{examples}`` (see :mod:`core.retrieval`).
RETRIEVAL_METHODS = ("tfidf", "minilm")

#: Placeholders an instruction may use, with what each is replaced by.
PLACEHOLDERS = {
    "sentence": "the sentence to label, as it stands",
    "labels": "the entity types, comma-separated (e.g. Chemical, Disease)",
    "guidelines": "one line per entity type: '- Type: its guideline'",
    "format": "how to write the answer, for the chosen output format",
    "examples": "the most similar labelled training sentences with their answers",
}
#: Placeholders the system message may use (it must not depend on the sentence, so that its
#: key/value cache can be shared by every prompt).
SYSTEM_PLACEHOLDERS = ("labels", "guidelines", "format")
MAX_EXAMPLES = 20
MAX_INSTRUCTION_CHARS = 8000

_PLACEHOLDER_RE = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|\{([A-Za-z_]\w*)\}")


class TemplateError(NerlabError):
    """A template that cannot be used; the message says what is wrong and where."""


# ---------------------------------------------------------------------------------------------
# The template


def _placeholders(text: str) -> list[tuple[str, int]]:
    """``(name, line number)`` of every ``{name}`` in ``text`` (``{{name}}`` is a literal)."""
    found = []
    for m in _PLACEHOLDER_RE.finditer(text):
        if m.group(2):
            found.append((m.group(2), text.count("\n", 0, m.start()) + 1))
    return found


@dataclass(frozen=True)
class PromptTemplate:
    """An instruction template with its output format; validated when created.

    Attributes:
        name: the template's name within its project (versions share a name).
        instruction: the user message, with placeholders such as ``{sentence}``.
        output_format: one of :data:`OUTPUT_FORMATS`.
        system: an optional system message (may use ``{labels}``, ``{guidelines}``, ``{format}``).
        n_examples: how many retrieved training examples fill ``{examples}`` (0 = none).
        version: the saved version (0 = not saved yet).
        id: the database row id of this version (None = not saved yet).
        retrieval: how examples are retrieved, one of :data:`RETRIEVAL_METHODS`.
    """

    name: str
    instruction: str
    output_format: str
    system: str = ""
    n_examples: int = 0
    version: int = 0
    id: int | None = None
    retrieval: str = "tfidf"

    def __post_init__(self) -> None:
        name = (self.name or "").strip()
        if not name:
            raise TemplateError("A template needs a name.")
        if len(name) > 60 or "\n" in name:
            raise TemplateError(f"Template name {self.name!r} must be one line of at most 60 characters.")
        object.__setattr__(self, "name", name)
        if self.output_format not in OUTPUT_FORMATS:
            raise TemplateError(
                f"Output format {self.output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}."
            )
        if self.retrieval not in RETRIEVAL_METHODS:
            raise TemplateError(
                f"Retrieval method {self.retrieval!r} is not one of {', '.join(RETRIEVAL_METHODS)}."
            )
        if not isinstance(self.n_examples, int) or isinstance(self.n_examples, bool) or not (
            0 <= self.n_examples <= MAX_EXAMPLES
        ):
            raise TemplateError(
                f"Number of examples {self.n_examples!r} must be a whole number from 0 to {MAX_EXAMPLES}."
            )
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise TemplateError("The instruction is empty: it needs at least {sentence} and {labels}.")
        if len(self.instruction) > MAX_INSTRUCTION_CHARS:
            raise TemplateError(
                f"The instruction has {len(self.instruction)} characters; the limit is {MAX_INSTRUCTION_CHARS}."
            )
        problems = validation_errors(self.instruction, self.system, self.n_examples)
        if problems:
            raise TemplateError(" ".join(problems))

    @property
    def placeholders(self) -> list[str]:
        """The placeholders the instruction uses, in order of first use."""
        return list(dict.fromkeys(name for name, _ in _placeholders(self.instruction)))

    @property
    def label(self) -> str:
        """``name vN`` (or ``name (unsaved)``) for menus and run records."""
        return f"{self.name} v{self.version}" if self.version else f"{self.name} (unsaved)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        """Build a template from a dict (e.g. a TOML/JSON file); unknown keys are an error.

        ``name`` and ``instruction`` are required; ``output_format`` defaults to ``json_list``.
        """
        if not isinstance(data, dict):
            raise TemplateError(f"A template description must be a table/object, not {type(data).__name__}.")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TemplateError(
                f"Unknown template field(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        missing = [k for k in ("name", "instruction") if k not in data]
        if missing:
            raise TemplateError(f"The template description lacks: {', '.join(missing)}.")
        try:
            n_examples = int(data.get("n_examples", 0))
        except (TypeError, ValueError):
            raise TemplateError(f"n_examples {data.get('n_examples')!r} is not a number.") from None
        return cls(
            name=str(data["name"]),
            instruction=str(data["instruction"]),
            output_format=str(data.get("output_format") or "json_list"),
            system=str(data.get("system") or ""),
            n_examples=n_examples,
            version=int(data.get("version") or 0),
            id=data.get("id"),
            retrieval=str(data.get("retrieval") or "tfidf"),
        )


def placeholders_in(text: str) -> list[str]:
    """The placeholders ``text`` uses (known or not), in order of first use."""
    return list(dict.fromkeys(name for name, _ in _placeholders(text)))


def validation_errors(instruction: str, system: str = "", n_examples: int = 0) -> list[str]:
    """Everything wrong with an instruction and system message, as user-facing sentences.

    Used on creation of a :class:`PromptTemplate` and by the editor to show errors before saving.
    """
    problems: list[str] = []
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    used = _placeholders(instruction)
    for name, line in used:
        if name not in PLACEHOLDERS:
            problems.append(
                f"Unknown placeholder {{{name}}} in the instruction (line {line}); known: {known}. "
                f"Write {{{{{name}}}}} for a literal {{{name}}}."
            )
    names = {n for n, _ in used}
    if "sentence" not in names:
        problems.append("The instruction must contain {sentence}, where the sentence goes.")
    if not names & {"labels", "guidelines"}:
        problems.append(
            "The instruction must name the entity types with {labels} or {guidelines}."
        )
    if n_examples and "examples" not in names:
        problems.append(
            f"The template asks for {n_examples} retrieved example(s) but the instruction has no "
            "{examples} placeholder to put them in."
        )
    for name, line in _placeholders(system or ""):
        if name not in SYSTEM_PLACEHOLDERS:
            where = "allowed there: " + ", ".join("{" + p + "}" for p in SYSTEM_PLACEHOLDERS)
            reason = (
                "unknown placeholder"
                if name not in PLACEHOLDERS
                else "the system message must be the same for every sentence"
            )
            problems.append(f"{{{name}}} in the system message (line {line}): {reason}; {where}.")
    return problems


DEFAULT_SYSTEM = "You find named entities in text."
DEFAULT_INSTRUCTION = """Find the entities of these types in the sentence.
{guidelines}
{format}
{examples}
Sentence: {sentence}"""


def default_template(output_format: str = "json_list") -> PromptTemplate:
    """The starting template: short and clear, which suits small models like SmolLM2-135M.

    The sentence comes last so that every prompt shares the longest possible prefix.
    """
    return PromptTemplate(
        name="default",
        instruction=DEFAULT_INSTRUCTION,
        output_format=output_format,
        system=DEFAULT_SYSTEM,
        n_examples=0,
    )


# ---------------------------------------------------------------------------------------------
# Storage: one row per version


def _from_row(row: dict) -> PromptTemplate:
    settings = json.loads(row.get("settings") or "{}")
    return PromptTemplate(
        name=row["name"],
        instruction=row["instruction"],
        output_format=row["output_format"],
        system=settings.get("system", ""),
        n_examples=int(settings.get("n_examples", 0)),
        version=row["version"],
        id=row["id"],
        retrieval=settings.get("retrieval", "tfidf"),
    )


def same_content(a: PromptTemplate, b: PromptTemplate) -> bool:
    """Whether two templates would give the model the same prompts (names and versions aside)."""
    return (a.instruction, a.output_format, a.system, a.n_examples, a.retrieval) == (
        b.instruction, b.output_format, b.system, b.n_examples, b.retrieval
    )


def get_template(
    db: Database, project_id: int, name: str = "default", version: int | None = None
) -> PromptTemplate:
    """A project's template: the latest version unless ``version`` is given.

    The project's ``default`` template is created (and saved as version 1) on first use.

    Raises:
        NotFound: no template (or version) of that name in the project.
    """
    params: list[Any] = [project_id, name]
    sql = "SELECT * FROM templates WHERE project_id = ? AND name = ?"
    if version is not None:
        sql += " AND version = ?"
        params.append(int(version))
    rows = list(db.query(sql + " ORDER BY version DESC LIMIT 1", params))
    if rows:
        return _from_row(rows[0])
    if name == "default" and version is None:
        if not db["projects"].count_where("id = ?", [project_id]):
            raise NotFound(f"No project with id {project_id}.")
        return save_template(db, project_id, default_template())
    names = [t["name"] for t in list_templates(db, project_id)]
    what = f"version {version} of template {name!r}" if version is not None else f"template {name!r}"
    raise NotFound(f"No {what} in this project. Templates: {', '.join(names) or 'none'}.")


def get_template_by_id(db: Database, template_id: int) -> PromptTemplate:
    """The template version stored in row ``template_id`` (what a run records)."""
    rows = list(db["templates"].rows_where("id = ?", [template_id]))
    if not rows:
        raise NotFound(f"No template with id {template_id}.")
    return _from_row(rows[0])


def save_template(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """Save ``tpl`` as the next version of its name; return it with its version and id.

    Saving content identical to the latest version returns that version instead of adding one.
    When another process saves the same name at the same moment, the save is retried on top of
    that version.
    """
    attempt = 0
    while True:
        try:
            return _save_once(db, project_id, tpl)
        except sqlite3.IntegrityError:
            if not db["projects"].count_where("id = ?", [project_id]):
                raise NotFound(f"No project with id {project_id}.") from None
            attempt += 1
            if attempt >= 3:
                raise


def _save_once(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """One attempt, in a transaction that takes the write lock before it reads the latest
    version (a deferred one could not upgrade while another process writes: "database is
    locked")."""
    if db.conn.in_transaction:  # the caller's transaction: a savepoint inside it
        with db.atomic():
            return _insert_version(db, project_id, tpl)
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        saved = _insert_version(db, project_id, tpl)
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()
    return saved


def _insert_version(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """Insert the next version of ``tpl.name`` unless the latest has the same content."""
    rows = list(
        db.query(
            "SELECT * FROM templates WHERE project_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
            [project_id, tpl.name],
        )
    )
    if rows:
        latest = _from_row(rows[0])
        if same_content(latest, tpl):
            return latest
    version = rows[0]["version"] + 1 if rows else 1
    cursor = db.execute(
        "INSERT INTO templates (project_id, name, version, instruction, output_format, settings,"
        " created_at) VALUES (?,?,?,?,?,?,?)",
        [
            project_id,
            tpl.name,
            version,
            tpl.instruction,
            tpl.output_format,
            json.dumps(
                {"system": tpl.system, "n_examples": tpl.n_examples, "retrieval": tpl.retrieval}
            ),
            now(),
        ],
    )
    return replace(tpl, version=version, id=cursor.lastrowid)


def list_templates(db: Database, project_id: int) -> list[dict]:
    """One row per template name: ``name``, ``versions``, ``latest`` (version), ``updated_at``."""
    return [
        dict(r)
        for r in db.query(
            "SELECT name, COUNT(*) AS versions, MAX(version) AS latest, MAX(created_at) AS updated_at"
            " FROM templates WHERE project_id = ? GROUP BY name ORDER BY name",
            [project_id],
        )
    ]


def list_versions(db: Database, project_id: int, name: str) -> list[dict]:
    """Every saved version of a template, newest first, with the runs that used it."""
    return [
        dict(r)
        for r in db.query(
            "SELECT t.id, t.version, t.output_format, t.created_at,"
            " (SELECT COUNT(*) FROM runs r WHERE r.template_id = t.id) AS runs"
            " FROM templates t WHERE t.project_id = ? AND t.name = ? ORDER BY t.version DESC",
            [project_id, name],
        )
    ]


def describe(tpl: PromptTemplate) -> list[str]:
    """The template as lines of text (settings, system message, instruction) for diffs."""
    return [
        f"output format: {tpl.output_format}",
        f"retrieved examples: {tpl.n_examples} ({tpl.retrieval})",
        "system:",
        *(tpl.system.splitlines() or [""]),
        "instruction:",
        *tpl.instruction.splitlines(),
    ]


def diff(old: PromptTemplate, new: PromptTemplate) -> str:
    """A unified diff from ``old`` to ``new`` ("" when they give the same prompts)."""
    import difflib

    if same_content(old, new):
        return ""
    return "\n".join(
        difflib.unified_diff(describe(old), describe(new), old.label, new.label, lineterm="", n=2)
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _label_rows(labels: Iterable[dict | str]) -> list[dict]:
    rows = []
    for label in labels:
        if isinstance(label, str):
            rows.append({"name": label, "description": ""})
        else:
            rows.append({"name": label["name"], "description": label.get("description") or ""})
    return rows


def label_names(labels: Iterable[dict | str]) -> list[str]:
    """The names of label rows (or the strings themselves)."""
    return [row["name"] for row in _label_rows(labels)]


def format_description(output_format: str) -> str:
    """What ``{format}`` becomes: how to write the answer in this output format (kept short:
    every token here is paid for in every training step and every prediction)."""
    if output_format == "json_list":
        return (
            'Answer with a JSON list of {"type": ..., "text": ...} objects in sentence order, '
            "text copied exactly; [] if none."
        )
    if output_format == "inline_tags":
        return "Answer with the sentence copied exactly, each entity written as [Type: entity]."
    if output_format == "json_dict":
        return (
            "Answer with a JSON object mapping each type to its entities in sentence order, "
            "text copied exactly; {} if none."
        )
    raise TemplateError(f"Output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}.")


def render_answer(tpl: PromptTemplate, text: str, spans: Sequence[Span]) -> str:
    """The target the model learns for a sentence with these gold spans (no end-of-sequence)."""
    ordered = sorted(spans)
    if tpl.output_format == "json_list":
        return json.dumps(
            [{"type": s.label, "text": text[s.start : s.end]} for s in ordered], ensure_ascii=False
        )
    if tpl.output_format == "json_dict":
        grouped: dict[str, list[str]] = {}
        for s in ordered:
            grouped.setdefault(s.label, []).append(text[s.start : s.end])
        return json.dumps(grouped, ensure_ascii=False)
    parts: list[str] = []
    pos = 0
    for s in ordered:
        parts.append(text[pos : s.start])
        parts.append(f"[{s.label}: {text[s.start : s.end]}]")
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)


def render_examples(tpl: PromptTemplate, shots: Sequence[Example]) -> str:
    """What ``{examples}`` becomes: each shot's sentence and answer, blank-line separated."""
    blocks = [
        f"Sentence: {shot.text}\nAnswer: {render_answer(tpl, shot.text, shot.spans)}"
        for shot in list(shots)[: tpl.n_examples]
    ]
    return ("Examples:\n" + "\n\n".join(blocks) + "\n") if blocks else ""


def _substitute(text: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        return values[m.group(2)]

    out = _PLACEHOLDER_RE.sub(repl, text)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _values(tpl: PromptTemplate, text: str, labels: Iterable[dict | str], shots: Sequence[Example]) -> dict[str, str]:
    rows = _label_rows(labels)
    return {
        "sentence": text,
        "labels": ", ".join(r["name"] for r in rows),
        "guidelines": "\n".join(
            f"- {r['name']}: {r['description']}" if r["description"] else f"- {r['name']}" for r in rows
        ),
        "format": format_description(tpl.output_format),
        "examples": render_examples(tpl, shots),
    }


def render_prompt(
    tpl: PromptTemplate, text: str, labels: Iterable[dict | str], shots: Sequence[Example] = ()
) -> str:
    """The user message for one sentence: the instruction with its placeholders filled in.

    Args:
        tpl: the template.
        text: the sentence.
        labels: the project's label rows (``name``, ``description``) or plain names.
        shots: retrieved examples for ``{examples}`` (the first ``tpl.n_examples`` are used).
    """
    return _substitute(tpl.instruction, _values(tpl, text, labels, shots))


def render_system(tpl: PromptTemplate, labels: Iterable[dict | str]) -> str:
    """The system message with its placeholders filled in ("" when the template has none)."""
    if not tpl.system.strip():
        return ""
    return _substitute(tpl.system, _values(tpl, "", labels, ()))


#: What ends a plain (no chat template) prompt; the answer follows on the next line.
PLAIN_ANSWER_CUE = "\n\nAnswer:\n"


def build_chat(
    tokenizer: Any,
    tpl: PromptTemplate,
    text: str,
    labels: Iterable[dict | str],
    shots: Sequence[Example] = (),
    answer: str | None = None,
) -> tuple[str, str]:
    """The exact strings a model sees: ``(prompt, target)``.

    The prompt is the rendered system message and instruction after the model's chat template,
    ending with the generation prompt (e.g. ``<|im_start|>assistant\\n``); a tokenizer without a
    chat template (or ``None``) gets a plain prompt ending with ``Answer:`` and a newline. The
    target is ``answer`` followed by the tokenizer's end-of-sequence token, so a trained model
    stops, or ``""`` when ``answer`` is None (inference). Training and inference both call this
    function, so they always see the same prompt.
    """
    labels = _label_rows(labels)
    system = render_system(tpl, labels)
    user = render_prompt(tpl, text, labels, shots)
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    target = "" if answer is None else answer + eos
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - e.g. templates that refuse a system role (Gemma)
            merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
            prompt = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return str(prompt), target
    prompt = (f"{system}\n\n{user}" if system else user) + PLAIN_ANSWER_CUE
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None
    if bos:
        # The text carries its special tokens, as a chat template's output does, so that both
        # kinds of prompt are tokenized the same way: with add_special_tokens=False.
        prompt = bos + prompt
    return prompt, target


def encode_chat(tokenizer: Any, prompt: str, target: str = "") -> tuple[list[int], list[int]]:
    """Token ids of a :func:`build_chat` pair, each tokenized without adding special tokens
    (the prompt already holds them). Training concatenates the two lists and masks the prompt;
    inference feeds the prompt's ids alone."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
    return prompt_ids, target_ids


@dataclass(frozen=True)
class PromptLength:
    """Token counts of one example's prompt and target (answer + end-of-sequence)."""

    example_id: int
    prompt_tokens: int
    answer_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.answer_tokens


def prompt_lengths(
    tokenizer: Any,
    tpl: PromptTemplate,
    examples: Sequence[Example],
    labels: Iterable[dict | str],
    shots: Sequence[Sequence[Example]] | None = None,
) -> list[PromptLength]:
    """Token counts of every example's training pair, as :func:`build_chat` and
    :func:`encode_chat` make it (``shots[i]`` are example i's retrieved examples).

    Without a tokenizer the counts are characters, not tokens.
    """
    labels = _label_rows(labels)
    prompts, targets = [], []
    for i, ex in enumerate(examples):
        prompt, target = build_chat(
            tokenizer, tpl, ex.text, labels, shots[i] if shots else (),
            answer=render_answer(tpl, ex.text, ex.spans),
        )
        prompts.append(prompt)
        targets.append(target)
    if tokenizer is None:
        return [
            PromptLength(ex.id, len(p), len(t)) for ex, p, t in zip(examples, prompts, targets, strict=True)
        ]
    out: list[PromptLength] = []
    for start in range(0, len(prompts), 256):
        p_ids = tokenizer(prompts[start : start + 256], add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(targets[start : start + 256], add_special_tokens=False)["input_ids"]
        for ex, p, t in zip(examples[start : start + 256], p_ids, t_ids, strict=True):
            out.append(PromptLength(ex.id, len(p), len(t)))
    return out


# ---------------------------------------------------------------------------------------------
# Parsing model output back into spans


ParseStatus = Literal["ok", "partial", "unparsable"]


@dataclass(frozen=True)
class ParseResult:
    """Spans recovered from one model output, and what went wrong on the way.

    Attributes:
        spans: sorted, non-overlapping spans on the sentence.
        status: ``ok`` (read completely), ``partial`` (truncated or malformed parts were dropped),
            ``unparsable`` (nothing could be read).
        hallucinated: entity strings that do not occur in the sentence.
        unknown_types: types the model used that are not entity types of the project.
    """

    spans: list[Span] = field(default_factory=list)
    status: ParseStatus = "ok"
    hallucinated: list[str] = field(default_factory=list)
    unknown_types: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spans": [s.to_dict() for s in self.spans],
            "status": self.status,
            "hallucinated": list(self.hallucinated),
            "unknown_types": list(self.unknown_types),
        }


_FENCE_RE = re.compile(r"(?:^|\n)[ \t]*```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


def _strip_fences(raw: str) -> str:
    """The inside of the first code fence, or the text itself when there is none."""
    m = _FENCE_RE.search(raw)
    if m and m.group(1).strip():
        return m.group(1)
    return raw


class _Truncated(Exception):
    """The loose JSON reader hit the end of the text inside a value."""


class _Loose:
    """A forgiving JSON reader: single quotes, trailing or missing commas, bare words, and a
    truncated end (the values completed so far are kept and ``truncated`` is set)."""

    MAX_DEPTH = 50

    def __init__(self, s: str, pos: int) -> None:
        self.s = s
        self.pos = pos
        self.truncated = False
        self.malformed = False

    def ws(self) -> None:
        while self.pos < len(self.s) and self.s[self.pos].isspace():
            self.pos += 1

    def value(self, depth: int = 0) -> Any:
        if depth > self.MAX_DEPTH:
            raise ValueError("nested too deeply")
        self.ws()
        if self.pos >= len(self.s):
            raise _Truncated
        c = self.s[self.pos]
        if c == "[":
            return self.array(depth)
        if c == "{":
            return self.obj(depth)
        if c in "\"'“”‘’":
            return self.string()
        return self.bare()

    def _items(self, close: str, depth: int, read_item) -> None:
        self.pos += 1
        while True:
            self.ws()
            if self.pos >= len(self.s):
                self.truncated = True
                return
            c = self.s[self.pos]
            if c == close:
                self.pos += 1
                return
            if c == ",":
                self.pos += 1
                continue
            if c in "]}":  # a closing bracket of the wrong kind
                self.malformed = True
                self.pos += 1
                return
            start = self.pos
            try:
                read_item()
            except _Truncated:
                self.truncated = True
                self.pos = len(self.s)
                return
            if self.pos == start:  # no progress: skip the character
                self.malformed = True
                self.pos += 1

    def array(self, depth: int) -> list:
        out: list = []
        self._items("]", depth, lambda: out.append(self.value(depth + 1)))
        return out

    def obj(self, depth: int) -> dict:
        out: dict = {}

        def item() -> None:
            key = self.value(depth + 1)
            self.ws()
            if self.pos >= len(self.s):
                raise _Truncated
            if self.s[self.pos] in ":=":
                self.pos += 1
                out[str(key)] = self.value(depth + 1)
            else:
                self.malformed = True

        self._items("}", depth, item)
        return out

    def string(self) -> str:
        quote = self.s[self.pos]
        closers = {"“": "””", "‘": "’’", "”": "”", "’": "’"}.get(quote, quote)
        self.pos += 1
        buf: list[str] = []
        while self.pos < len(self.s):
            c = self.s[self.pos]
            if c == "\\" and self.pos + 1 < len(self.s):
                nxt = self.s[self.pos + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/"}
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", self.s[self.pos + 2 : self.pos + 6]):
                    code = int(self.s[self.pos + 2 : self.pos + 6], 16)
                    self.pos += 6
                    if 0xD800 <= code < 0xDC00 and self.s[self.pos : self.pos + 2] == "\\u":
                        low = self.s[self.pos + 2 : self.pos + 6]
                        if re.fullmatch(r"[0-9a-fA-F]{4}", low) and 0xDC00 <= int(low, 16) < 0xE000:
                            code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                            self.pos += 6
                    buf.append(chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")
                    continue
                buf.append(simple.get(nxt, nxt))
                self.pos += 2
                continue
            if c in closers:
                # A quote ends the string only where JSON could go on; otherwise it is part of the
                # text (e.g. the apostrophe in 'Parkinson's disease').
                j = self.pos + 1
                while j < len(self.s) and self.s[j] in " \t\r\n":
                    j += 1
                if j >= len(self.s) or self.s[j] in ",:]}=":
                    self.pos += 1
                    return "".join(buf)
            buf.append(c)
            self.pos += 1
        raise _Truncated

    def bare(self) -> Any:
        m = re.compile(r"[^,:\]\}\[\{\n]*").match(self.s, self.pos)
        word = m.group(0).strip() if m else ""
        self.pos = m.end() if m else self.pos
        if not word:
            return None
        if self.pos >= len(self.s):
            self.truncated = True
        lowered = word.lower()
        if lowered in ("true", "false", "null", "none"):
            return {"true": True, "false": False}.get(lowered)
        try:
            return json.loads(word)
        except ValueError:
            return word


def _read_json(s: str, pos: int) -> tuple[Any, bool, bool]:
    """Read one loose JSON value at ``pos``: ``(value, truncated, malformed)``."""
    reader = _Loose(s, pos)
    try:
        value = reader.value()
    except _Truncated:
        return None, True, True
    except (ValueError, RecursionError):  # nested too deeply: not an answer
        return None, False, True
    return value, reader.truncated, reader.malformed


_TYPE_KEYS = ("type", "label", "entity_type", "category", "tag", "class")
_TEXT_KEYS = ("text", "entity", "span", "name", "value", "mention", "word")


def _pick(item: dict, keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in item.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _entities_from_json(value: Any) -> tuple[list[tuple[str, str]], int] | None:
    """``([(type, text), ...], malformed item count)`` from a parsed JSON value, or None when
    the value is not a list of entity objects nor an object keyed by type."""
    bad = 0
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        # {"entities": [...]} wrappers
        for key in ("entities", "entity", "result", "results", "answer", "output", "ner"):
            inner = next((v for k, v in value.items() if str(k).lower() == key), None)
            if isinstance(inner, list | dict) and inner is not value:
                found = _entities_from_json(inner)
                if found is not None:
                    return found
        if value and all(isinstance(v, dict) for v in value.values()) and _pick(
            next(iter(value.values())), _TEXT_KEYS
        ) is not None:
            return _entities_from_json(list(value.values()))
        if {str(k).lower() for k in value} & {"type", "label"} and _pick(value, _TEXT_KEYS) is not None:
            return _entities_from_json([value])
        for key, mentions in value.items():
            if isinstance(mentions, str):
                mentions = [mentions]
            if not isinstance(mentions, list):
                bad += mentions is not None
                continue
            for mention in mentions:
                if isinstance(mention, str | int | float) and not isinstance(mention, bool):
                    out.append((str(key), str(mention)))
                else:
                    bad += 1
        return out, bad
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                kind, text = _pick(item, _TYPE_KEYS), _pick(item, _TEXT_KEYS)
                if isinstance(kind, str) and isinstance(text, str | int | float) and not isinstance(text, bool):
                    out.append((kind, str(text)))
                else:
                    bad += 1
            elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
                out.append((item[1], item[0]))  # [text, type] pairs
            else:
                bad += 1
        if bad and not out:
            return None  # a list, but not of entities (e.g. "[see above]")
        return out, bad
    return None


def _canonical_types(label_names: Sequence[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for name in label_names:
        mapping.setdefault(name.casefold(), name)
    return mapping


def _resolve_type(kind: str, label_names: Sequence[str], canon: dict[str, str]) -> str | None:
    kind = kind.strip()
    if kind in label_names:
        return kind
    return canon.get(kind.casefold())


class _Placer:
    """Map entity strings to free, non-overlapping occurrences in the sentence."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.folded = text.casefold() if len(text.casefold()) == len(text) else None
        self.taken: list[tuple[int, int]] = []

    def _free(self, start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in self.taken)

    def _aligned(self, start: int, end: int) -> bool:
        t = self.text
        before = start == 0 or not (t[start - 1].isalnum() and t[start].isalnum())
        after = end == len(t) or not (t[end - 1].isalnum() and t[end].isalnum())
        return before and after

    def _occurrences(self, haystack: str, needle: str) -> list[tuple[int, int]]:
        found, i = [], haystack.find(needle)
        while i != -1:
            found.append((i, i + len(needle)))
            i = haystack.find(needle, i + 1)
        return found

    def _tiers(self, mention: str) -> Iterable[list[tuple[int, int]]]:
        yield self._occurrences(self.text, mention)
        if self.folded is not None:
            yield self._occurrences(self.folded, mention.casefold())
        squeezed = "".join(mention.split())
        if squeezed and len(squeezed) <= 500:
            pattern = r"\s*".join(re.escape(c) for c in squeezed)
            yield [(m.start(), m.end()) for m in re.finditer(pattern, self.text, re.IGNORECASE)]

    def place(self, mention: str) -> tuple[int, int] | None | Literal[False]:
        """Offsets for ``mention``; None when it is nowhere in the sentence, False when every
        occurrence is already taken (a repeated mention)."""
        mention = mention.strip()
        if not mention:
            return None
        seen_any = False
        for occurrences in self._tiers(mention):
            if not occurrences:
                continue
            seen_any = True
            free = [o for o in occurrences if self._free(*o)]
            for start, end in sorted(free, key=lambda o: (not self._aligned(*o), o[0])):
                self.taken.append((start, end))
                return start, end
        return False if seen_any else None


def _place_all(
    entities: Sequence[tuple[str, str]], text: str, label_names: Sequence[str]
) -> tuple[list[Span], list[str], list[str]]:
    """Spans for ``(type, mention)`` pairs; longer mentions are placed first so that a short
    mention never takes an occurrence inside a longer one; repeated mentions of one string are
    placed in their order."""
    canon = _canonical_types(label_names)
    spans: list[Span] = []
    hallucinated: list[str] = []
    unknown: list[str] = []
    placer = _Placer(text)
    order = sorted(range(len(entities)), key=lambda i: -len(entities[i][1].strip()))
    for i in order:
        kind, mention = entities[i]
        label = _resolve_type(kind, label_names, canon)
        if label is None:
            if kind.strip() and kind.strip() not in unknown:
                unknown.append(kind.strip())
            continue
        where = placer.place(mention)
        if where is None:
            if mention.strip():
                hallucinated.append(mention.strip())
            continue
        if where is False:
            continue
        spans.append(Span(where[0], where[1], label))
    return sorted(spans), hallucinated, unknown


def _parse_json_output(raw: str, text: str, label_names: Sequence[str]) -> ParseResult:
    body = _strip_fences(raw)
    starts = [m.start() for m in re.finditer(r"[\[{]", body)][:25]
    best: tuple[list[tuple[str, str]], int, bool] | None = None
    for pos in starts:
        value, truncated, malformed = _read_json(body, pos)
        found = _entities_from_json(value)
        if found is None:
            continue
        entities, bad = found
        if best is None or (len(entities) > len(best[0])):
            best = (entities, bad + int(malformed and not truncated), truncated)
        if entities or not truncated:
            break
    if best is None:
        return ParseResult([], "unparsable", [], [])
    entities, bad, truncated = best
    if truncated and not entities:
        return ParseResult([], "unparsable", [], [])
    spans, hallucinated, unknown = _place_all(entities, text, label_names)
    status: ParseStatus = "partial" if (truncated or bad) else "ok"
    return ParseResult(spans, status, hallucinated, unknown)


_TAG_OPEN_RE = re.compile(r"\[\s*([^\[\]:\n\"{}]{1,40}?)\s*:[ \t]?")


_AlignPath = Any  # tuple[_AlignPath, Span | str] | None


def _align_inline(
    body: str, start: int, text: str, label_names: Sequence[str], canon: dict[str, str],
    budget: int = 200_000,
) -> tuple[list[Span], list[str], bool, int] | None:
    """Align a tagged output with the sentence it should copy.

    A depth-first search over (output position, sentence position): at a tag opener every
    closing bracket whose content matches the sentence is tried, nearest first, then the
    bracket as a literal character; runs of whitespace match each other. This finds the
    entities even when they contain brackets (``[Chemical: [3H]thymidine]``).

    Returns ``(spans, unknown types, truncated, sentence position reached)`` for the first
    alignment that copies the whole sentence, else for the one that gets furthest before the
    output ends (a truncated answer), or None when the output is not a copy of the sentence.
    """
    n, m = len(body), len(text)
    # A path is a linked list (parent path, span or unknown type name) shared between branches.
    stack: list[tuple[int, int, _AlignPath]] = [(start, 0, None)]
    dead: set[tuple[int, int]] = set()
    best: tuple[int, _AlignPath, bool] | None = None
    found: tuple[int, _AlignPath, bool] | None = None
    while stack and budget > 0:
        i, j, path = stack.pop()
        if (i, j) in dead:
            continue
        dead.add((i, j))
        budget -= 1
        if j >= m:
            found = (j, path, False)
            break
        if i >= n:
            if best is None or j > best[0]:
                best = (j, path, False)
            continue
        children: list[tuple[int, int, _AlignPath]] = []
        opener = _TAG_OPEN_RE.match(body, i)
        if opener:
            kind = opener.group(1).strip()
            label = _resolve_type(kind, label_names, canon)
            close = body.find("]", opener.end())
            while close != -1:
                content = body[opener.end() : close]
                if content and text.startswith(content, j):
                    item = Span(j, j + len(content), label) if label else kind
                    children.append((close + 1, j + len(content), (path, item)))
                close = body.find("]", close + 1)
            tail = body[opener.end() :]
            if "]" not in tail and text.startswith(tail, j) and (best is None or j >= best[0]):
                best = (j, path, True)  # the output stops inside this tag
        if body[i] == text[j]:
            children.append((i + 1, j + 1, path))
        elif body[i].isspace() and text[j].isspace():
            i2, j2 = i, j
            while i2 < n and body[i2].isspace():
                i2 += 1
            while j2 < m and text[j2].isspace():
                j2 += 1
            children.append((i2, j2, path))
        stack.extend(reversed(children))
    result = found or best
    if result is None:
        return None
    j, path, cut = result
    spans: list[Span] = []
    unknown: list[str] = []
    while path is not None:
        path, item = path
        if isinstance(item, Span):
            spans.append(item)
        elif item not in unknown:
            unknown.insert(0, item)
    return sorted(spans), unknown, cut, j


def _parse_inline_output(raw: str, text: str, label_names: Sequence[str]) -> ParseResult:
    body = _strip_fences(raw)
    canon = _canonical_types(label_names)
    n = len(body)
    i = 0
    # Skip a preamble such as "Answer:" when the sentence itself starts later in the output.
    if text and not body.startswith(text[:1]) and not _TAG_OPEN_RE.match(body):
        stripped = body.lstrip()
        i = n - len(stripped)
        for prefix in ("Answer:", "Output:", "answer:", "output:"):
            if body.startswith(prefix, i):
                i += len(prefix)
                while i < n and body[i] in " \t\n":
                    i += 1
    aligned = _align_inline(body, i, text, label_names, canon)
    if aligned is not None:
        spans, unknown, cut, j = aligned
        if j == 0 and not spans and not unknown and not cut:
            return ParseResult([], "unparsable", [], [])
        # An output that ends before the sentence does is truncated, unless only punctuation
        # is missing.
        truncated = cut or any(c.isalnum() for c in text[j:])
        return ParseResult(spans, "partial" if truncated else "ok", [], unknown)

    # The model changed the sentence: read its tags and find their entities by search.
    entities: list[tuple[str, str]] = []
    pos = 0
    truncated = False
    while True:
        opener = _TAG_OPEN_RE.search(body, pos)
        if not opener:
            break
        close = body.find("]", opener.end())
        nxt = _TAG_OPEN_RE.search(body, opener.end())
        if close == -1:
            truncated = True
            break
        if nxt and nxt.start() < close:  # a tag opened inside another: skip the outer one
            pos = nxt.start()
            continue
        entities.append((opener.group(1).strip(), body[opener.end() : close]))
        pos = close + 1
    if not entities:
        if _similar(body, text):
            return ParseResult([], "partial" if truncated else "ok", [], [])
        return ParseResult([], "unparsable", [], [])
    spans, hallucinated, unknown = _place_all(entities, text, label_names)
    return ParseResult(spans, "partial" if truncated else "ok", hallucinated, unknown)


def _similar(a: str, b: str) -> bool:
    """Whether an output without tags is the sentence (whitespace and case aside)."""
    squash = lambda s: " ".join(s.split()).casefold()  # noqa: E731
    a, b = squash(a), squash(b)
    if a == b:
        return True
    if not a or not b:
        return False
    import difflib

    return difflib.SequenceMatcher(None, a[: 4 * len(b)], b, autojunk=False).ratio() >= 0.8


_EOS_RE = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|</s>")


def parse_output(
    tpl: PromptTemplate, raw: str, text: str, label_names: Sequence[str]
) -> ParseResult:
    """Turn a model's output into spans on ``text``. Never raises.

    Args:
        tpl: the template the output was generated with (its output format is read first; JSON
            outputs are read in either JSON shape).
        raw: the generated text (without the prompt).
        text: the sentence.
        label_names: the project's entity types; other types are reported in ``unknown_types``.
    """
    try:
        if not isinstance(raw, str) or not raw.strip():
            return ParseResult([], "unparsable", [], [])
        raw = _EOS_RE.split(raw, maxsplit=1)[0]  # what a model says after its EOS is noise
        names = list(label_names)
        if tpl.output_format == "inline_tags":
            return _parse_inline_output(raw, text, names)
        return _parse_json_output(raw, text, names)
    except Exception:  # noqa: BLE001 - the contract is "never raises"; a bad output is data
        return ParseResult([], "unparsable", [], [])


# ---------------------------------------------------------------------------------------------
# Round-trip check


@dataclass(frozen=True)
class RoundTripFailure:
    """A labelled sentence whose gold answer does not parse back to its gold spans."""

    sentence_id: int
    text: str
    answer: str
    expected: list[Span]
    got: list[Span]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sentence_id": self.sentence_id,
            "text": self.text,
            "answer": self.answer,
            "expected": [s.to_dict() for s in self.expected],
            "got": [s.to_dict() for s in self.got],
            "reason": self.reason,
        }


def _explain(tpl: PromptTemplate, text: str, expected: list[Span], got: list[Span], result: ParseResult) -> str:
    missing = [s for s in expected if s not in got]
    reasons: list[str] = []
    if result.status != "ok":
        reasons.append(f"the answer parses as {result.status}")
    for s in missing[:3]:
        mention = text[s.start : s.end]
        where = f"{mention!r} ({s.label}, {s.start}-{s.end})"
        if mention != mention.strip():
            reasons.append(f"{where} begins or ends with whitespace")
            continue
        if tpl.output_format == "inline_tags" and mention.endswith("]"):
            reasons.append(
                f"{where} ends with ']', which the tag format reads as the end of the tag"
            )
            continue
        if tpl.output_format == "inline_tags" and any(c in mention for c in "[]"):
            reasons.append(f"{where} contains a bracket, which the tag format cannot delimit here")
            continue
        count = text.count(mention)
        if count > 1:
            nth = [i for i in range(len(text)) if text.startswith(mention, i)].index(s.start) + 1 \
                if text.startswith(mention, s.start) else 0
            reasons.append(
                f"{where} occurs {count} times and gold marks occurrence {nth}, so the text alone "
                "cannot say which one is meant"
            )
            continue
        if text.casefold().count(mention.casefold()) > 1:
            reasons.append(f"{where} also occurs in another case, so the text alone is ambiguous")
            continue
        reasons.append(f"{where} is not recovered")
    if not reasons:
        extra = [s for s in got if s not in expected]
        reasons.append(
            "the parser finds extra spans: "
            + ", ".join(f"{text[s.start:s.end]!r} ({s.label})" for s in extra[:3])
        )
    return "; ".join(reasons)


def round_trip(
    tpl: PromptTemplate, examples: Iterable[Example], label_names: Sequence[str]
) -> list[RoundTripFailure]:
    """Render every example's gold answer and parse it back; return those that do not come back
    exactly, each with the reason."""
    failures: list[RoundTripFailure] = []
    for ex in examples:
        expected = sorted(ex.spans)
        answer = render_answer(tpl, ex.text, expected)
        result = parse_output(tpl, answer, ex.text, label_names)
        if result.spans != expected or result.status != "ok":
            failures.append(
                RoundTripFailure(
                    ex.id, ex.text, answer, expected, result.spans,
                    _explain(tpl, ex.text, expected, result.spans, result),
                )
            )
    return failures
