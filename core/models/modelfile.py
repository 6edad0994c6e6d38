"""An Ollama ``Modelfile`` that asks an exported model exactly what NERLab trained it on.

The run's template (the version it recorded, with the project's entity types) is rendered by the
same :func:`core.prompts.render.build_chat` that training used, through the model's chat
template, with a marker where the sentence goes; the marker becomes Ollama's ``{{ .Prompt }}``.
So ``ollama run NAME "A sentence."`` sends the model the prompt it was trained with, and the
answer comes back in the run's output format. Decoding is greedy (temperature 0), as NERLab's.
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from core.data import projects
from core.data.runs import get_run
from core.errors import NerlabError
from core.prompts import formats
from core.prompts.plan import plan_for_run
from core.prompts.render import build_chat

#: Where the sentence goes while the prompt is rendered (never in a real template).
SENTENCE_MARKER = "\u2063NERLAB_SENTENCE\u2063"
#: Most tokens an answer may take (NERLab caps by the sentence's length; Ollama cannot).
NUM_PREDICT = 512


def _go_literal(text: str) -> str:
    """Text safe inside a Go template: ``{{`` starts an action there, so it is written as an
    action that prints ``{{``."""
    return text.replace("{{", '{{ "{{" }}')


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS before a text (written to the GGUF as add_bos_token)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and list(tokenizer("a")["input_ids"][:1]) == [bos_id]


def ollama_template(tokenizer: Any, template: Any, labels: list[dict], shots: list) -> str:
    """The Go template of the whole prompt, with ``{{ .Prompt }}`` where the sentence goes."""
    prompt, _ = build_chat(tokenizer, template, SENTENCE_MARKER, labels, shots=shots)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt.startswith(bos) and adds_bos(tokenizer):
        # The engine adds BOS itself (the GGUF says so, as the tokenizer does): once is enough.
        prompt = prompt[len(bos):]
    if SENTENCE_MARKER not in prompt:
        raise NerlabError("The template's prompt does not contain the sentence; it cannot be "
                          "written as an Ollama template.")
    return "{{ .Prompt }}".join(_go_literal(part) for part in prompt.split(SENTENCE_MARKER))


def _quoted(text: str) -> str:
    if '"""' in text:
        raise NerlabError('The prompt contains """, which an Ollama Modelfile cannot hold in a '
                          "multi-line value; remove it from the template.")
    return f'"""{text}"""'


def render_modelfile(db: Database, run_id: int, tokenizer: Any, gguf_name: str,
                     name: str = "NAME") -> str:
    """The Modelfile text for a run whose GGUF file is ``gguf_name`` (next to the Modelfile);
    ``name`` is the model name suggested for ``ollama create``."""
    run = get_run(db, run_id)
    project = projects.get_project(db, run["project_id"])
    plan = plan_for_run(db, run)
    notes = []
    shots: list = []
    if plan.template.n_examples:
        # Retrieved examples depend on the sentence; a fixed Modelfile shows the same ones always.
        fixed = plan_for_run(db, run, shots=plan.template.n_examples, selection="fixed")
        shots = fixed.shots_for(None, "")
        notes.append(f"# The run retrieved {plan.template.n_examples} similar training example(s) "
                     "per sentence; Ollama cannot, so this prompt shows the same "
                     f"{len(shots)} example(s) to every sentence.")
    template = ollama_template(tokenizer, plan.template, plan.labels, shots)
    names = ", ".join(plan.label_names)
    fmt = formats.get_format(plan.template.output_format)
    stops = [t for t in dict.fromkeys([tokenizer.eos_token]) if t]
    lines = [
        f"# NERLab run {run_id} ({run['name']}) of project {project['name']!r}, exported for Ollama.",
        f"# Entity types: {names}",
        f"# Template {plan.template.name!r} v{plan.template.version}; answer format "
        f"{plan.template.output_format}: {' '.join(fmt.description.split())}",
        f"# Create the model:   ollama create {name} -f Modelfile",
        f'# Label a sentence:   ollama run {name} "Aspirin can cause headache."',
        "# The prompt below is the one the run was trained with; the sentence goes in {{ .Prompt }}.",
        *notes,
        "",
        f"FROM ./{gguf_name}",
        "",
        f"TEMPLATE {_quoted(template)}",
        "",
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {NUM_PREDICT}",
        *(f'PARAMETER stop "{s}"' for s in stops),
        "",
    ]
    return "\n".join(lines)
