"""The Label page's suggestions: where they come from, the queue's order, what the suggesting
model is doing (the automatic CRF retraining, a run pre-labelling the queue), and what the
annotators did with its suggestions.

Session-state and widget keys start with ``label_``.
"""

from __future__ import annotations

import streamlit as st
from sqlite_utils import Database

from core.data import labeling, phases, suggestions
from core.data.db import get_db
from core.data.runs import list_runs
from core.errors import NerlabError
from core.jobs import launcher
from core.jobs import suggest as jobs
from core.ui import md_escape, show_error

SOURCE_KEY = "label_suggest_from"
ORDER_KEY = "label_order"
EVERY_KEY = "label_auto_every"
_ACTIVE_KEY = "label_suggest_active"


def _save_source(project_id: int) -> None:
    value = st.session_state.get(SOURCE_KEY) or ""
    suggestions.set_settings(get_db(), project_id, suggest_from=value)


def _save_every(project_id: int) -> None:
    try:
        suggestions.set_settings(get_db(), project_id,
                                 auto_every=int(st.session_state.get(EVERY_KEY) or 1))
    except NerlabError as exc:
        st.session_state["label_suggest_error"] = str(exc)


def _titles(db: Database, runs: list[dict], every: int) -> dict[str, str]:
    titles = {suggestions.AUTO: f"{jobs.AUTO_TITLE} (retrained every {every} sentences)",
              suggestions.OFF: "No suggestions"}
    for r in runs:
        score = ", ".join(f"{s} F1 {f:.2f}" for s, f in sorted(r["f1"].items()))
        titles[suggestions.run_source(r["id"])] = (
            f"#{r['id']} {r['name']} ({r['kind']}{', ' + score if score else ''})")
    return titles


def controls(db: Database, project_id: int) -> tuple[str, str]:
    """Draw "Suggestions from", "Order" and (for the automatic CRF) "Retrain every"; return
    ``(source, order)``: ``auto``, ``run:ID`` or ``off``, and a queue order."""
    settings = suggestions.get_settings(db, project_id)
    runs = jobs.model_runs(db, project_id)
    source = jobs.resolve_source(db, project_id)
    options = [suggestions.AUTO, *(suggestions.run_source(r["id"]) for r in runs), suggestions.OFF]
    if source not in options:
        options.insert(0, source)
    titles = _titles(db, runs, settings["auto_every"])
    st.session_state[SOURCE_KEY] = source  # the project's choice (another tab may have changed it)
    c1, c2, c3 = st.columns([2.2, 1.3, 1])
    c1.selectbox(
        "Suggestions from", options, key=SOURCE_KEY, on_change=_save_source, args=(project_id,),
        format_func=lambda v: titles.get(v, v),
        help="A model pre-labels each sentence; its suggestions are drawn dashed. Enter accepts "
        "the sentence with them; click one to change or remove it, drag its edges to resize "
        "it. Default: the project's best finished run, else a CRF retrained automatically as "
        "you label (seconds on a CPU).")
    order = c2.selectbox(
        "Order", labeling.ORDERS, key=ORDER_KEY, format_func=labeling.ORDER_TITLES.get,
        help="Least confident first: the sentences the suggesting model is least sure of come "
        "first, so each label teaches it the most. Random: the same shuffle for everybody.")
    if source == suggestions.AUTO:
        st.session_state[EVERY_KEY] = settings["auto_every"]
        c3.number_input("Retrain every", min_value=1, max_value=suggestions.MAX_AUTO_EVERY,
                        step=1, key=EVERY_KEY, on_change=_save_every, args=(project_id,),
                        help="The automatic CRF is trained again, in the background, after "
                        "this many newly labelled training sentences.")
    if error := st.session_state.pop("label_suggest_error", None):
        st.error(error)
    return source, order


def prepare(db: Database, project_id: int, source: str, sentence: dict | None) -> None:
    """Before the sentence is drawn: start the automatic CRF when it is due, and make the
    sentence's suggestion at once when a CRF suggests and it has none yet."""
    try:
        if source == suggestions.AUTO:
            jobs.retrain_auto(db, project_id)
        if sentence is not None and source != suggestions.OFF:
            jobs.ensure_suggestion(db, project_id, sentence, source)
    except Exception as exc:  # noqa: BLE001 - labelling goes on without suggestions
        show_error(exc)


def _active_jobs(db: Database, project_id: int) -> list[dict]:
    return [r for r in list_runs(db, project_id)
            if r["status"] in ("queued", "running")
            and (jobs.is_auto(r) or r["kind"] == "suggest")]


def status(project_id: int, source: str) -> None:
    """One line: what suggests, how much of the queue it covered, what it is doing now (polled
    while a job runs; the page is redrawn when it ends, to show the new suggestions)."""
    db = get_db()
    poll = 2 if _active_jobs(db, project_id) else None

    @st.fragment(run_every=poll)
    def line() -> None:
        fdb = get_db()
        launcher.refresh(fdb)
        active = _active_jobs(fdb, project_id)
        now = {r["id"] for r in active}
        was = st.session_state.get(_ACTIVE_KEY, set())
        st.session_state[_ACTIVE_KEY] = now
        if was - now:
            st.rerun()  # a job ended: redraw with its suggestions
        _line(fdb, project_id, source, active)

    line()


def _line(db: Database, project_id: int, source: str, active: list[dict]) -> None:
    if source == suggestions.OFF:
        st.caption("No suggestions: label from scratch.")
        return
    counts = jobs.pending_count(db, project_id, source)
    parts = []
    if source == suggestions.AUTO:
        state = jobs.auto_state(db, project_id)
        latest = state["latest"]
        if latest is not None:
            parts.append(f"{md_escape(jobs.AUTO_TITLE)} trained on {state['trained_on']} sentences")
        else:
            parts.append(f"{jobs.AUTO_TITLE}: not trained yet")
        left = max(0, state["next_at"] - state["labelled"])
        if state["active"] is None:
            parts.append(f"retrains after {left} more labelled" if left else "retraining soon")
    else:
        parts.append(f"Suggestions from {md_escape(jobs.source_title(db, source))}")
    parts.append(f"{counts['suggested']} of {counts['unlabelled']} sentences waiting have one")
    for r in active:
        row = phases.current(db, [r["id"]]).get(r["id"])
        doing = phases.describe(row, launcher.format_duration) if row else r["status"]
        parts.append(f"⏳ {md_escape(r['name'])}: {md_escape(doing)}")
    st.caption(" · ".join(parts))
    kind, run_id = suggestions.parse_source(source)
    missing = counts["unlabelled"] - counts["suggested"]
    if kind == suggestions.RUN and missing and not active:
        if st.button(f"Pre-label the {missing} sentence(s) without a suggestion",
                     key="label_prelabel", help="Runs the model on them in the background "
                     "(a fine-tuned LLM on a CPU takes seconds per sentence; a CRF no time)."):
            try:
                job, started = jobs.submit_suggest(db, project_id, run_id)
            except NerlabError as exc:
                show_error(exc)
            else:
                st.session_state[_ACTIVE_KEY] = {job}
                st.toast(f"Pre-labelling started (job #{job})." if started else
                         f"Pre-labelling job #{job} waits for the active run.")
                st.rerun()


def outcome_caption(db: Database, project_id: int) -> str | None:
    """What the annotators did with the suggestions so far, or None when nothing yet."""
    info = suggestions.summary(db, project_id)
    if not info["reviewed"]:
        return None
    return suggestions.describe(info)
