"""The only place (with pages/ and app.py) that imports Streamlit.

Every page starts with :func:`init_page`, which sets the page config, opens a fresh database
connection for this rerun (migrated on open), makes sure the demo project exists, and lets the
user pick the open project in the sidebar.
"""

from __future__ import annotations

import os

import streamlit as st
from sqlite_utils import Database

from core import config, projects
from core.db import get_db

#: Session-state keys shared by every page (page-local keys are prefixed with the page's name).
PROJECT_KEY = "project_id"
ANNOTATOR_KEY = "annotator"
_PENDING_PROJECT_KEY = "_open_project"


def open_project(project_id: int) -> None:
    """Make ``project_id`` the open project and rerun (the picker widget is already drawn, so its
    key cannot be set directly in this run)."""
    st.session_state[_PENDING_PROJECT_KEY] = project_id
    st.rerun()


def init_page(title: str, icon: str = "🏷️", layout: str = "wide") -> tuple[Database, dict | None]:
    """Set up a page: config, database, demo project, project picker. Returns ``(db, project)``.

    ``project`` is None when there are no projects at all.
    """
    st.set_page_config(page_title=f"{title} · NERLab", page_icon=icon, layout=layout)
    db = get_db()
    ensure_demo(db)
    st.session_state.setdefault(ANNOTATOR_KEY, os.environ.get("USER") or "analyst")
    project = project_picker(db)
    return db, project


@st.cache_resource(show_spinner="Creating the demo project…")
def _demo_created(db_file: str) -> bool:
    """Create the demo project once per database file and server process."""
    from core import demo

    db = get_db(db_file)
    demo.ensure_demo_project(db)
    return True


def ensure_demo(db: Database) -> None:
    if os.environ.get("NERLAB_NO_DEMO"):
        return
    _demo_created(str(config.db_path()))


def project_picker(db: Database) -> dict | None:
    """Sidebar select box of projects; the choice survives page switches via session state."""
    rows = projects.list_projects(db)
    if not rows:
        st.sidebar.info("No project yet: create one on the home page.")
        return None
    ids = [r["id"] for r in rows]
    names = {r["id"]: r["name"] for r in rows}
    # Deep links (?project=ID) win, e.g. from the Evaluate page's "fix this label" links.
    wanted = st.query_params.get("project")
    if wanted and wanted.isdigit() and int(wanted) in ids:
        st.session_state[PROJECT_KEY] = int(wanted)
    pending = st.session_state.pop(_PENDING_PROJECT_KEY, None)
    if pending in ids:
        st.session_state[PROJECT_KEY] = pending
    if st.session_state.get(PROJECT_KEY) not in ids:
        st.session_state[PROJECT_KEY] = ids[0]
    st.sidebar.selectbox(
        "Project", ids, format_func=names.get, key=PROJECT_KEY,
        help="Every page works on this project.",
    )
    st.sidebar.text_input(
        "Your name", key=ANNOTATOR_KEY, help="Recorded with every label you save."
    )
    return projects.get_project(db, st.session_state[PROJECT_KEY])


def show_error(exc: Exception) -> None:
    """Show a user-facing error: NerlabError messages as they stand, others with their type."""
    if isinstance(exc, projects.NerlabError):
        st.error(str(exc))
    else:
        st.error(f"{type(exc).__name__}: {exc}")
