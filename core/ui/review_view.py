"""The Review page's parts: each annotator's version side by side, accepting one as gold, and a
merged version edited in the labelling widget (Enter or "Save merged as gold")."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence

import streamlit as st
from sqlite_utils import Database

from core.data import annotations, label_session, projects, review
from core.data.db import get_db
from core.data.spans import Span, tokenize
from core.errors import NerlabError
from core.ui.label_widget import label_widget, pending_action

WIDGET_KEY = "review_widget"
_DRAFTS = "review_drafts"
_ACK = "review_ack"
_NOTICE = "review_notice"
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def highlight(text: str, spans: Sequence[Span], colours: Mapping[str, str]) -> str:
    """The sentence as HTML with each span marked in its type's colour and named after it
    (everything escaped)."""
    out, pos = [], 0
    for span in sorted(spans):
        colour = colours.get(span.label, "#dddddd")
        colour = colour if _HEX.fullmatch(colour) else "#dddddd"
        out.append(html.escape(text[pos:span.start]))
        out.append(f'<span style="background:{colour};padding:1px 4px;border-radius:4px">'
                   f"{html.escape(text[span.start:span.end])} <sub><b>"
                   f"{html.escape(span.label)}</b></sub></span>")
        pos = span.end
    out.append(html.escape(text[pos:]))
    return '<div style="line-height:2.1">' + "".join(out) + "</div>"


def describe(text: str, span: Span) -> str:
    return f"{span.label}: “{text[span.start:span.end]}”"


def side_by_side(db: Database, sentence: dict, found: list[dict], colours: Mapping[str, str],
                 reviewer: str) -> None:
    """One column per annotator's version, each with "Accept this version"."""
    columns = st.columns(len(found))
    for i, (col, version) in enumerate(zip(columns, found, strict=True)):
        with col, st.container(border=True):
            st.markdown(f"**{html.escape(version['annotator'])}** · {version['updated_at'][:16]}")
            st.markdown(highlight(sentence["text"], version["spans"], colours),
                        unsafe_allow_html=True)
            st.caption(f"{len(version['spans'])} span(s)")
            if st.button("Accept this version", key=f"review_accept_{sentence['id']}_{i}",
                         width="stretch"):
                _adjudicate(db, sentence["id"], version["spans"], reviewer,
                            f"annotator:{version['annotator']}")


def _adjudicate(db: Database, sentence_id: int, spans: Sequence[Span], reviewer: str,
                choice: str) -> None:
    try:
        review.adjudicate(db, sentence_id, spans, reviewer, choice)
    except NerlabError as exc:
        st.session_state[_NOTICE] = ("error", str(exc))
    else:
        st.session_state.get(_DRAFTS, {}).pop(sentence_id, None)
        taken = choice.split(":", 1)[1] + "'s version" if choice.startswith("annotator:") else \
            "the merged version"
        st.session_state[_NOTICE] = ("success", f"Saved {taken} as gold (reviewed by {reviewer}).")
    st.rerun()


def _draft(sentence_id: int, found: list[dict]) -> list[Span]:
    drafts = st.session_state.setdefault(_DRAFTS, {})
    if sentence_id not in drafts:
        drafts[sentence_id] = review.majority(found)
    return drafts[sentence_id]


def _merge_handler(sentence_id: int, reviewer: str):
    """The widget's callback: an edit changes the merged draft, Enter saves it as gold."""
    def handle() -> None:
        state = st.session_state
        raw = pending_action(WIDGET_KEY)
        if raw is None:
            return
        try:
            action = label_session.parse_action(raw)
            if action.seq and action.seq <= state.get(_ACK, 0):
                return  # handled already (Streamlit repeats an interrupted run's callback)
            state[_ACK] = max(state.get(_ACK, 0), action.seq)
            if action.sentence_id != sentence_id or action.spans is None:
                return  # moving, undo and "not done" mean nothing here
            db = get_db()
            sentence = projects.get_sentence(db, sentence_id)
            labels = {n: r["id"] for n, r in projects.label_by_name(db, sentence["project_id"]).items()}
            spans = annotations.check_spans(sentence, action.spans, labels)
            state.setdefault(_DRAFTS, {})[sentence_id] = spans
            if action.type == "accept":
                review.adjudicate(db, sentence_id, spans, reviewer, review.MERGED)
                state[_DRAFTS].pop(sentence_id, None)
                state[_NOTICE] = ("success", f"Saved the merged version as gold (reviewed by "
                                             f"{reviewer}).")
        except NerlabError as exc:
            state[_NOTICE] = ("error", str(exc))

    return handle


def merge_editor(db: Database, sentence: dict, labels: list[dict], found: list[dict],
                 reviewer: str, place: tuple[int, int, int]) -> None:
    """The merged version in the labelling widget (starting from the spans most annotators
    marked); Enter or the button saves it as gold. ``place``: the sentence's number, its index
    among the sentences to review, and how many there are."""
    sid = sentence["id"]
    spans = _draft(sid, found)
    tokens = sentence["tokens"]
    data = {
        "sentence_id": sid, "version": sentence["version"], "status": "unlabelled",
        "text": sentence["text"],
        "tokens": [list(t) for t in (json.loads(tokens) if tokens else tokenize(sentence["text"]))],
        "spans": [s.to_dict() for s in spans], "suggestion": None,
        "labels": label_session.label_legend(labels),
        "number": place[0], "split": sentence["split"], "annotator": "merged version",
        "updated_at": "", "queue_index": place[1], "queue_total": place[2],
        "ack": st.session_state.get(_ACK, 0), "focus": 0,
    }
    label_widget(data, on_action=_merge_handler(sid, reviewer), key=WIDGET_KEY)
    if st.button("Save merged as gold", key=f"review_save_{sid}", type="primary"):
        _adjudicate(db, sid, spans, reviewer, review.MERGED)
    who = review.candidates(found)
    st.caption("Who marked what: " + "; ".join(
        f"{describe(sentence['text'], span)} ({', '.join(names)})" for span, names in who))


def show_notice() -> None:
    notice = st.session_state.pop(_NOTICE, None)
    if notice is not None:
        (st.success if notice[0] == "success" else st.error)(notice[1])
