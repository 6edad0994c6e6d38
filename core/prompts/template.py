"""An instruction template: validated when created, with its placeholders and defaults."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import TemplateError
from core.prompts.formats import OUTPUT_FORMATS

#: Ways of picking the retrieved examples for ``{examples}`` (see :mod:`core.prompts.retrieval`).
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
