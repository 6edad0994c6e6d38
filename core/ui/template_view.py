"""Widgets of the Template page: the editor, the live preview with token counts, the round-trip
check and the version list. All keys start with ``template_``.

The tokenizer of the chosen base model is loaded lazily (transformers is imported only then) and
kept with ``st.cache_resource``; it is never mutated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import streamlit as st
from sqlite_utils import Database

from core import config
from core.data import projects
from core.data.spans import Example
from core.errors import NerlabError, TemplateError
from core.models import loader
from core.prompts import formats, render
from core.prompts.formats import FORMAT_TITLES, OUTPUT_FORMATS, parse_output
from core.prompts.retrieval import ExampleRetriever
from core.prompts.roundtrip import check_project
from core.prompts.store import (
    diff,
    get_template,
    list_templates,
    list_versions,
    same_content,
    save_template,
)
from core.prompts.template import (
    MAX_EXAMPLES,
    PLACEHOLDERS,
    PromptTemplate,
    placeholders_in,
    validation_errors,
)
from core.ui.eval_view import colours, gold_pred_html, show_html

#: Editor widgets and the template field each one edits.
EDITOR_KEYS = {
    "template_format": "output_format",
    "template_system": "system",
    "template_instruction": "instruction",
    "template_n_examples": "n_examples",
    "template_retrieval": "retrieval",
}
OTHER_MODEL = "Other (Hugging Face id or local folder)…"
RETRIEVAL_TITLES = {"tfidf": "TF-IDF (fast)", "minilm": "MiniLM sentence embeddings (bundled encoder)"}
#: Max length offered before the user picks one (the training default).
DEFAULT_MAX_LENGTH = 512


# -- cached resources -------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the base model's tokenizer (once per server: 10-20 s)…",
                   max_entries=4)
def _tokenizer(name: str) -> Any:
    if loader.is_bundled(name) and not (loader.bundled_model_dir() / "config.json").is_file():
        # Not converted yet: the GGUF file's own tokenizer (same vocabulary and chat template)
        # loads in seconds, where converting the whole model takes half a minute or more.
        from transformers import AutoTokenizer

        gguf = loader.bundled_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return loader.load_tokenizer(name)


def load_tokenizer(name: str) -> tuple[Any, str | None]:
    """The tokenizer of ``name``, or ``(None, why)`` when it cannot be loaded."""
    try:
        return _tokenizer(name), None
    except NerlabError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad model folder must not break the page
        return None, f"{type(exc).__name__}: {exc}"


@st.cache_resource(show_spinner="Indexing the training sentences for retrieval…", max_entries=4)
def _retriever(project_id: int, method: str, fingerprint: str, _examples: list[Example]):
    return ExampleRetriever(_examples, method=method)


def data_fingerprint(db: Database, project_id: int) -> str:
    """Changes whenever a sentence or span of the project changes (cache key for derived data)."""
    row = db.execute(
        "SELECT COUNT(*), MAX(updated_at), SUM(version), (SELECT COUNT(*) FROM spans sp JOIN"
        " sentences s2 ON s2.id = sp.sentence_id WHERE s2.project_id = ?) FROM sentences"
        " WHERE project_id = ? AND status = 'labelled'",
        [project_id, project_id],
    ).fetchone()
    return json.dumps(list(row))


# -- template selection and editor ------------------------------------------------------------


def template_picker(db: Database, project: dict) -> PromptTemplate:
    """Pick a template and one of its versions (latest by default); returns that version."""
    pid = project["id"]
    get_template(db, pid)  # the default exists from the first visit on
    names = [t["name"] for t in list_templates(db, pid)]
    wanted = st.session_state.pop("template_select_next", None)
    if wanted in names:
        st.session_state["template_name"] = wanted
        st.session_state.pop("template_version", None)
    if st.session_state.get("template_name") not in names:
        st.session_state["template_name"] = "default" if "default" in names else names[0]
    c1, c2 = st.columns([2, 1])
    name = c1.selectbox("Template", names, key="template_name",
                        help="A project can keep several templates; runs record the version they used.")
    versions = list_versions(db, pid, name)
    numbers = [v["version"] for v in versions]
    if st.session_state.get("template_version") not in numbers:
        st.session_state["template_version"] = numbers[0]
    runs = {v["version"]: v["runs"] for v in versions}
    version = c2.selectbox(
        "Version", numbers, key="template_version",
        format_func=lambda v: f"v{v}" + (" (latest)" if v == numbers[0] else "")
        + (f" · {runs[v]} run(s)" if runs[v] else ""),
        help="Each save is a new version; older ones stay as they were.",
    )
    return get_template(db, pid, name, version)


def _load_into_editor(tpl: PromptTemplate) -> None:
    for key, attr in EDITOR_KEYS.items():
        st.session_state[key] = getattr(tpl, attr)
    st.session_state["template_loaded"] = tpl.id


def _edited(tpl: PromptTemplate) -> tuple[PromptTemplate | None, list[str]]:
    """The editor's content as a template (None if invalid) and what is wrong with it."""
    values = {attr: st.session_state[key] for key, attr in EDITOR_KEYS.items()}
    values["n_examples"] = int(values["n_examples"] or 0)
    errors = validation_errors(values["instruction"], values["system"], values["n_examples"])
    if errors:
        return None, errors
    try:
        return PromptTemplate(name=tpl.name, version=tpl.version, id=tpl.id, **values), []
    except TemplateError as exc:
        return None, [str(exc)]


def editor(tpl: PromptTemplate) -> tuple[PromptTemplate | None, list[str]]:
    """The edit form for ``tpl``; returns the edited template (None if invalid) and its errors,
    which are shown above the fields (where they are seen while typing)."""
    # Widget state is dropped when the user visits another page: reload the fields then too.
    if st.session_state.get("template_loaded") != tpl.id or any(
            key not in st.session_state for key in EDITOR_KEYS):
        _load_into_editor(tpl)
    edited, errors = _edited(tpl)
    for message in errors:
        st.error(message)
    st.radio("Output format", OUTPUT_FORMATS, key="template_format", format_func=FORMAT_TITLES.get,
             horizontal=True, help="How the model writes its answer. The parser reads all three.")
    st.text_area(
        "System message (optional)", key="template_system", height=70,
        help="Sent as the chat's system message when the model has a chat template. "
        "It may use {labels}, {guidelines} and {format}, not {sentence} or {examples}.",
    )
    st.text_area(
        "Instruction", key="template_instruction", height=220,
        help="The user message. Placeholders: "
        + "; ".join(f"{{{k}}}: {v}" for k, v in PLACEHOLDERS.items())
        + ". Write {{name}} for a literal {name}; other braces stay as they are.",
    )
    c1, c2 = st.columns(2)
    c1.number_input(
        "Retrieved examples", min_value=0, max_value=MAX_EXAMPLES, step=1,
        key="template_n_examples",
        help="How many of the most similar labelled training sentences fill {examples} "
        "(never the sentence itself). 0: no examples.",
    )
    c2.selectbox("Retrieval", list(RETRIEVAL_TITLES), key="template_retrieval",
                 format_func=RETRIEVAL_TITLES.get, disabled=not st.session_state["template_n_examples"])
    st.caption("Placeholders: " + " ".join(f"`{{{k}}}`" for k in PLACEHOLDERS))
    if "examples" in placeholders_in(st.session_state["template_instruction"]) and not \
            st.session_state["template_n_examples"]:
        st.caption("{examples} stays empty until *Retrieved examples* is above 0.")
    return edited, errors


def is_dirty(tpl: PromptTemplate, edited: PromptTemplate | None) -> bool:
    return edited is None or not same_content(tpl, edited)


def save_controls(db: Database, project: dict, tpl: PromptTemplate, edited: PromptTemplate | None,
                  errors: list[str]) -> None:
    """Save (a new version) and Discard, plus "save as a new template"."""
    dirty = is_dirty(tpl, edited)
    latest = get_template(db, project["id"], tpl.name)
    old = tpl.version != latest.version
    c1, c2, c3 = st.columns([2, 1.1, 1.9])
    if c1.button("Save as new version", key="template_save", type="primary",
                 disabled=bool(errors) or not (dirty or old),
                 help="Saves the editor's content as the next version (also to bring back an older "
                 "version); runs keep the version they used."):
        saved = save_template(db, project["id"], edited)
        if saved.id == latest.id:
            st.session_state["template_flash"] = f"That is the latest version (v{latest.version}) already."
        else:
            st.session_state["template_flash"] = f"Saved {saved.name!r} v{saved.version}."
        st.session_state.pop("template_version", None)
        st.session_state.pop("template_loaded", None)
        st.rerun()
    if c2.button("Discard", key="template_discard", disabled=not dirty,
                 help="Reload the selected version into the editor."):
        st.session_state.pop("template_loaded", None)
        st.rerun()
    if dirty and not errors:
        c3.caption("Unsaved changes: the preview shows the edited template.")
    elif old:
        c3.caption(f"An older version: saving it makes it v{latest.version + 1}, the latest.")
    with st.expander("Save as a new template"):
        new_name = st.text_input("Name", key="template_new_name", placeholder="e.g. short-tags")
        if st.button("Create", key="template_create", disabled=bool(errors)):
            try:
                existing = [t["name"] for t in list_templates(db, project["id"])]
                if new_name.strip() in existing:
                    raise NerlabError(f"A template called {new_name.strip()!r} already exists.")
                base = edited or tpl
                saved = save_template(
                    db, project["id"], PromptTemplate(**{**base.to_dict(), "name": new_name, "version": 0, "id": None})
                )
            except NerlabError as exc:
                st.error(str(exc))
            else:
                st.session_state["template_flash"] = f"Created template {saved.name!r} (v1)."
                st.session_state["template_select_next"] = saved.name
                st.session_state.pop("template_loaded", None)
                st.rerun()


# -- preview --------------------------------------------------------------------------------


def model_picker(db: Database, project: dict) -> str | None:
    """Base model whose chat template and tokenizer the preview uses (None: plain prompt)."""
    used = [
        r["base_model"]
        for r in db.query(
            "SELECT DISTINCT base_model FROM runs WHERE project_id = ? AND base_model != ''"
            " ORDER BY base_model", [project["id"]],
        )
        if r["base_model"] != config.BUNDLED_MODEL
    ]
    options = [config.BUNDLED_MODEL, *used, OTHER_MODEL]
    if st.session_state.get("template_model") not in options:
        st.session_state["template_model"] = config.BUNDLED_MODEL
    c1, c2 = st.columns([3, 1])
    choice = c1.selectbox("Base model", options, key="template_model",
                          help="The preview applies its chat template and counts its tokens.")
    c2.number_input("Max length", min_value=32, max_value=32768, step=16, key="template_max_length",
                    value=DEFAULT_MAX_LENGTH, help="Training's maximum tokens per example (prompt + answer).")
    if choice == OTHER_MODEL:
        name = st.text_input("Model id or folder", key="template_model_other",
                             placeholder="Qwen/Qwen2.5-7B-Instruct or /models/llama-3-8b").strip()
        return name or None
    return choice


@dataclass
class PreviewData:
    examples: list[Example]
    labels: list[dict]
    train: list[Example]


def preview_data(db: Database, project: dict) -> PreviewData:
    pid = project["id"]
    train = projects.examples(db, pid, split="train")
    examples = train or projects.examples(db, pid)
    return PreviewData(examples, projects.list_labels(db, pid), train)


def _shots(tpl: PromptTemplate, data: PreviewData, fingerprint: str, project_id: int,
           targets: list[Example]) -> list[list[Example]] | None:
    if not tpl.n_examples or not data.train:
        return None
    try:
        retriever = _retriever(project_id, tpl.retrieval, fingerprint, data.train)
    except NerlabError as exc:
        st.warning(f"Retrieval is unavailable: {exc}")
        return None
    return retriever.top_k_batch([e.text for e in targets], tpl.n_examples, [e.id for e in targets])


def sentence_preview(tpl: PromptTemplate, data: PreviewData, tokenizer: Any, project: dict,
                     fingerprint: str) -> None:
    """The exact prompt and target of one labelled sentence, with token counts."""
    if not data.examples:
        st.info("Label a few sentences to see what the model gets for them.")
        return
    by_id = {e.id: e for e in data.examples}
    ids = list(by_id)
    if st.session_state.get("template_sentence") not in by_id:
        st.session_state["template_sentence"] = ids[0]
    sid = st.selectbox(
        "Sentence", ids, key="template_sentence",
        format_func=lambda i: (by_id[i].text[:90] + ("…" if len(by_id[i].text) > 90 else "")),
        help="A labelled sentence (from the training split when it has any).",
    )
    ex = by_id[sid]
    shots = _shots(tpl, data, fingerprint, project["id"], [ex])
    prompt, target = render.build_chat(
        tokenizer, tpl, ex.text, data.labels, shots[0] if shots else (),
        answer=formats.render_answer(tpl, ex.text, ex.spans),
    )
    st.markdown("**Prompt** (what the model reads)")
    st.code(prompt, language=None, wrap_lines=True)
    st.markdown("**Target** (what it learns to write, ending with the end-of-sequence token)")
    st.code(target, language=None, wrap_lines=True)
    max_length = int(st.session_state.get("template_max_length") or DEFAULT_MAX_LENGTH)
    (length,) = render.prompt_lengths(tokenizer, tpl, [ex], data.labels, shots)
    unit = "tokens" if tokenizer is not None else "characters"
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Prompt {unit}", length.prompt_tokens)
    c2.metric(f"Answer {unit}", length.answer_tokens)
    c3.metric(f"Total {unit}", length.total)
    if tokenizer is not None and length.total > max_length:
        st.warning(
            f"This example has {length.total} tokens, more than the maximum length of {max_length}: "
            "training cuts the end of its answer. Shorten the instruction, use fewer retrieved "
            "examples, or raise the maximum length."
        )


@st.cache_data(show_spinner="Measuring every labelled sentence…", max_entries=8)
def _all_lengths(tpl_json: str, model: str | None, project_id: int, fingerprint: str,
                 _tokenizer: Any, _data: PreviewData, _shots: list | None) -> list[tuple[int, int, int]]:
    tpl = PromptTemplate.from_dict(json.loads(tpl_json))
    lengths = render.prompt_lengths(_tokenizer, tpl, _data.examples, _data.labels, _shots)
    return [(x.example_id, x.prompt_tokens, x.answer_tokens) for x in lengths]


def length_summary(tpl: PromptTemplate, data: PreviewData, tokenizer: Any, model: str | None,
                   project: dict, fingerprint: str) -> None:
    """Token counts over every labelled sentence, and a warning naming those over the limit."""
    if tokenizer is None or not data.examples:
        return
    shots = _shots(tpl, data, fingerprint, project["id"], data.examples)
    rows = _all_lengths(json.dumps(tpl.to_dict()), model, project["id"], fingerprint,
                        tokenizer, data, shots)
    max_length = int(st.session_state.get("template_max_length") or DEFAULT_MAX_LENGTH)
    totals = [p + a for _, p, a in rows]
    over = sorted(((p + a, i) for i, p, a in rows if p + a > max_length), reverse=True)
    st.caption(
        f"Over {len(rows)} labelled {'training ' if data.train else ''}sentences: prompt + answer {min(totals)}–{max(totals)} tokens, "
        f"mean {sum(totals) / len(totals):.0f}; {sum(totals):,} tokens per epoch."
    )
    if over:
        by_id = {e.id: e for e in data.examples}
        st.warning(
            f"{len(over)} of {len(rows)} examples exceed the maximum length of {max_length} tokens "
            "(training cuts their answers): "
            + "; ".join(f"{n} tokens: “{by_id[i].text[:60]}…”" for n, i in over[:5])
        )


# -- round-trip check and versions ------------------------------------------------------------


def round_trip_check(db: Database, project: dict, tpl: PromptTemplate) -> None:
    """Render every labelled sentence's gold answer, parse it back, list those that differ."""
    st.checkbox("All output formats", key="template_check_all",
                help="Also check the formats this template does not use.")
    if st.button("Check every labelled sentence", key="template_check"):
        every = OUTPUT_FORMATS if st.session_state.get("template_check_all") else None
        st.session_state["template_check_result"] = check_project(db, project["id"], tpl, every)
    results = st.session_state.get("template_check_result")
    if not results:
        st.caption("Renders each labelled sentence's gold answer and parses it back: every "
                   "sentence should come back with exactly its spans.")
        return
    for report in results:
        fmt, checked, failures = report.output_format, report.checked, report.failures
        if not checked:
            st.info("No labelled sentences to check yet.")
        elif not failures:
            st.success(f"{FORMAT_TITLES[fmt]}: all {checked} labelled sentences round-trip.")
        else:
            st.error(f"{FORMAT_TITLES[fmt]}: {len(failures)} of {checked} labelled sentences do not "
                     "round-trip.")
            st.dataframe(
                [
                    {"sentence": report.numbers[f.sentence_id], "why": f.reason, "text": f.text,
                     "answer": f.answer,
                     "open": f"Label?sentence={f.sentence_id}&project={project['id']}"}
                    for f in failures
                ],
                hide_index=True, width="stretch",
                column_order=["sentence", "open", "why", "text", "answer"],
                column_config={
                    "open": st.column_config.LinkColumn(
                        "Open", display_text="label ↗", width="small",
                        help="Open this sentence on the Label page"),
                    "why": st.column_config.TextColumn(width="large"),
                },
            )


def versions_table(db: Database, project: dict, tpl: PromptTemplate) -> None:
    """The template's versions, and what the selected one changed from the one before."""
    rows = list_versions(db, project["id"], tpl.name)
    st.dataframe(
        [{"version": f"v{r['version']}", "output format": FORMAT_TITLES[r["output_format"]],
          "saved": r["created_at"], "runs": r["runs"]} for r in rows],
        hide_index=True, width="stretch",
    )
    earlier = [r["version"] for r in rows if r["version"] < tpl.version]
    if earlier:
        before = get_template(db, project["id"], tpl.name, earlier[0])
        st.markdown(f"**Changes from v{before.version} to v{tpl.version}**")
        st.code(diff(before, tpl) or "(no change in what the model sees)", language="diff")


def parser_tryout(tpl: PromptTemplate, data: PreviewData) -> None:
    """Paste a model output and see the spans the parser reads from it, with what went wrong."""
    if not data.examples:
        return
    by_id = {e.id: e for e in data.examples}
    ex = by_id.get(st.session_state.get("template_sentence"), data.examples[0])
    st.caption("Paste what a model answered for the sentence above (any format, even broken) to "
               "see how it is read.")
    raw = st.text_area("Model output", key="template_try_output", height=90,
                       placeholder=formats.render_answer(tpl, ex.text, ex.spans))
    if not raw.strip():
        return
    names = [r["name"] for r in data.labels]
    result = parse_output(tpl, raw, ex.text, names, ex.token_offsets())
    verdict = {"ok": st.success, "partial": st.warning, "unparsable": st.error}[result.status]
    verdict(f"Parse status: {result.status} · {len(result.spans)} span(s) read"
            + (f" · not in the sentence: {', '.join(map(repr, result.hallucinated))}"
               if result.hallucinated else "")
            + (f" · unknown types: {', '.join(result.unknown_types)}" if result.unknown_types else "")
            + ("".join(f" · {m!r}: {kind}" for m, kind in result.loose)))
    show_html(gold_pred_html(ex.text, ex.spans, [("parsed", result.spans)], colours(data.labels)))
