"""The span-labelling widget: a Streamlit custom component v2 built from ``assets/label_widget.*``.

The HTML, CSS and JavaScript are inline (read from the assets folder once at import), so there is
no iframe and no build step. The widget sends each user action as the trigger value ``action``;
:func:`label_widget` hands it to the caller's callback, which runs before the page script, so the
page always draws what is in the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core import config
from core.data import label_session, labeling
from core.data.db import get_db
from core.errors import NerlabError

#: Name the component is registered under (unique in the app).
COMPONENT_NAME = "nerlab_label_widget"
#: Session-state key of the mounted widget (the Label page's prefix).
WIDGET_KEY = "label_widget"


def _asset(name: str) -> str:
    return (config.assets_dir() / name).read_text(encoding="utf-8")


_render = st.components.v2.component(
    COMPONENT_NAME,
    html=_asset("label_widget.html"),
    css=_asset("label_widget.css"),
    js=_asset("label_widget.js"),
)


def pending_action(key: str = WIDGET_KEY) -> Any:
    """The action the widget just sent (inside the ``on_action`` callback), or None."""
    value = st.session_state.get(key)
    if value is None:
        return None
    try:
        return value["action"]
    except (KeyError, TypeError):
        return getattr(value, "action", None)


def label_widget(
    data: dict, on_action: Callable[[], None], key: str = WIDGET_KEY
) -> Any:
    """Mount the widget for one sentence; ``on_action`` runs when the user changes something.

    Args:
        data: what :func:`core.data.label_session.widget_data` returns.
        on_action: called (with no arguments, before the next script run) when the widget
            sends an action; read it with :func:`pending_action`.
        key: widget key.

    Returns:
        The component result (its ``action`` attribute is the last action, for this run only).
    """
    return _render(key=key, data=data, on_action_change=on_action, height="content")


def action_handler(
    session: label_session.LabelSession,
    project_id: int,
    flt: labeling.QueueFilter,
    annotator_key: str,
    key: str = WIDGET_KEY,
) -> Callable[[], None]:
    """The ``on_action`` callback: validate the widget's action and apply it at once.

    It opens its own database connection, because callbacks run in the next script run's
    thread (a connection must not cross threads).
    """
    def handle() -> None:
        session.acted = True
        raw = pending_action(key)
        if raw is None:
            return
        try:
            action = label_session.parse_action(raw)
        except NerlabError as exc:
            session.notice = label_session.Notice("error", str(exc))
            return
        annotator = str(st.session_state.get(annotator_key) or "").strip()
        label_session.apply_action(get_db(), project_id, session, action, annotator, flt)

    return handle


def button_handler(
    session: label_session.LabelSession,
    project_id: int,
    flt: labeling.QueueFilter,
    annotator_key: str,
    kind: str,
    sentence_id: int,
) -> Callable[[], None]:
    """An ``on_click`` callback doing what a widget key does (for mouse users and AppTest)."""
    def handle() -> None:
        session.acted = True
        db = get_db()
        version = session.versions.get(sentence_id)
        action = label_session.Action(kind, sentence_id, None, version)
        annotator = str(st.session_state.get(annotator_key) or "").strip()
        label_session.apply_action(db, project_id, session, action, annotator, flt)

    return handle


def jump_handler(session: label_session.LabelSession, project_id: int, number_key: str) -> Callable[[], None]:
    """An ``on_click`` callback opening sentence number ``st.session_state[number_key]``."""
    def handle() -> None:
        session.acted = True
        try:
            session.move_to(
                labeling.by_number(get_db(), project_id, int(st.session_state[number_key]))
            )
        except NerlabError as exc:
            session.notice = label_session.Notice("error", str(exc))

    return handle
