"""The only place (with views/ and app.py) that imports Streamlit.

``app.py`` is the entrypoint: it registers the pages with :func:`navigation`, draws what every
page shares with :func:`draw_shell` (the open project and the user's name, in the sidebar) and
runs the page the user is on inside :func:`serving`. Because the sidebar is drawn by the
entrypoint on every run, its choices hold on every page; they live under non-widget keys
(:data:`PROJECT_KEY`, :data:`ANNOTATOR_KEY`), which Streamlit never drops on a page switch, and
the open project is also written to the URL (``?project=ID``) so that a reload keeps it.

Who the user is comes first (:func:`core.ui.auth_view.gate`): with sign-in on, a signed-out
browser gets the sign-in page and no other (:func:`sign_in_only`), a signed-in user's name is
the annotator and their role decides which pages are registered. With sign-in off (no users, the
server on localhost) the sidebar's "Your name" names the annotator; the browser remembers it (a
cookie), so a new session starts with it.

Every page starts with :func:`init_page`. Under the entrypoint it returns what the shell opened;
a page run on its own (``AppTest.from_file("views/...")``) draws the shell itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import streamlit as st
from sqlite_utils import Database

from core import config
from core.data import projects
from core.data.db import get_db
from core.data.demo import ensure_demo_project
from core.errors import NerlabError
from core.ui import auth_view
from core.ui.auth_view import ANNOTATOR_KEY, LOCAL, Visitor
from core.ui.text import md_escape  # noqa: F401 - re-exported: pages import it from here

#: Session-state keys shared by every page (page-local keys are prefixed with the page's name).
#: Both are plain keys, not widget keys: a widget's state is dropped when the page changes.
PROJECT_KEY = "project_id"
#: The sidebar widgets that edit them.
_PICKER_KEY = "shell_project"
_NAME_KEY = "shell_name"
#: The ``?project=`` value this session wrote last (a different one in the URL is a link).
_URL_SHOWN_KEY = "shell_url_project"
_NAME_SAVED_KEY = "shell_name_saved"
#: Who this run's shell found (set on every run by :func:`draw_shell`).
_VISITOR_KEY = "shell_visitor"
URL_PROJECT = "project"
NAME_COOKIE = "nerlab_annotator"
_NAME_COOKIE_DAYS = 365

#: The pages after the home page: file, title (also the URL path), icon.
PAGES = (
    ("views/1_Data.py", "Data", "📥"),
    ("views/2_Label.py", "Label", "🖍️"),
    ("views/3_Template.py", "Template", "📝"),
    ("views/4_Train.py", "Train", "🏋️"),
    ("views/5_Evaluate.py", "Evaluate", "📊"),
    ("views/6_Compare.py", "Compare", "⚖️"),
    ("views/7_Review.py", "Review", "⚖"),
)


@dataclass(frozen=True)
class Shell:
    """What the entrypoint opened for this script run: the database, the open project and who
    is using the app."""

    db: Database
    project: dict | None
    visitor: Visitor = LOCAL


_current: contextvars.ContextVar[Shell | None] = contextvars.ContextVar("nerlab_shell", default=None)


def navigation(home: Callable[[], None], visitor: Visitor = LOCAL):
    """The app's pages for ``st.navigation``: ``home`` (the entrypoint's own page) first, then
    the pages ``visitor``'s role may open."""
    return st.navigation(
        [st.Page(home, title="Home", icon="🏷️", default=True)]
        + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES
           if auth_view.may_open(visitor, title)]
    )


def may_link(visitor: Visitor, path: str) -> bool:
    """Whether a page link to ``path`` (``views/…``) leads to a page ``visitor`` may open."""
    title = next((t for p, t, _i in PAGES if p == path), "Home")
    return auth_view.may_open(visitor, title)


def who(db: Database) -> Visitor:
    """Who uses this tab; a signed-out browser gets the sign-in page, registered as the only
    page (so no URL reaches another), and the script stops there."""
    visitor = auth_view.gate(db)
    if visitor is None:
        st.navigation([st.Page(lambda: auth_view.sign_in_page(db), title="Sign in", icon="🔑",
                               url_path="signin", default=True)], position="hidden").run()
        st.stop()
    return visitor


@contextlib.contextmanager
def serving(shell: Shell) -> Iterator[None]:
    """Run a page with ``shell`` as this script run's shell (see :func:`init_page`)."""
    token = _current.set(shell)
    try:
        yield
    finally:
        _current.reset(token)


def init_page(title: str, icon: str = "🏷️", layout: str = "wide") -> tuple[Database, dict | None]:
    """Set up a page and return ``(db, project)``; ``project`` is None when there is none.

    Under the entrypoint this is what :func:`draw_shell` opened; a page run on its own (tests)
    sets the page up and draws the shell itself.
    """
    st.set_page_config(page_title=f"{title} · NERLab", page_icon=icon, layout=layout)
    shell = _current.get()
    if shell is None:
        shell = draw_shell()
    if not auth_view.may_open(shell.visitor, title):
        st.error(f"Your role ({shell.visitor.role}) does not open the {title} page; an admin can "
                 "change it.")
        st.stop()
    return shell.db, shell.project


def current_visitor() -> Visitor:
    """Who uses this tab (as :func:`draw_shell` found out on this run)."""
    visitor = st.session_state.get(_VISITOR_KEY)
    return visitor if isinstance(visitor, Visitor) else LOCAL


def draw_shell(db: Database | None = None, visitor: Visitor | None = None) -> Shell:
    """Open the database, find out who is here (a signed-out browser gets the sign-in form and
    nothing else), make sure the demo exists, and draw the sidebar's project and name."""
    if db is None:
        db = get_db()
    if visitor is None:
        visitor = auth_view.gate(db)
        if visitor is None:  # a page run on its own: the same form, then nothing
            auth_view.sign_in_page(db)
            st.stop()
    ensure_demo(db)
    project = _project_picker(db)
    if visitor.signed_in:
        auth_view.account(db, visitor, str(config.db_path()))
    else:
        _name_field()
        visitor = Visitor(str(st.session_state.get(ANNOTATOR_KEY) or "").strip(), visitor.role,
                          False)
    st.session_state[_VISITOR_KEY] = visitor
    return Shell(db, project, visitor)


def open_project(project_id: int) -> None:
    """Make ``project_id`` the open project on every page and rerun."""
    st.session_state[PROJECT_KEY] = project_id
    st.rerun()


@st.cache_resource(show_spinner="Creating the demo project…")
def _demo_created(db_file: str) -> bool:
    """Create the demo project once per database file and server process."""
    db = get_db(db_file)
    ensure_demo_project(db)
    return True


def ensure_demo(db: Database) -> None:
    if os.environ.get("NERLAB_NO_DEMO"):
        return
    _demo_created(str(config.db_path()))


def _copy(source: str, target: str) -> None:
    st.session_state[target] = st.session_state[source]


def _project_picker(db: Database) -> dict | None:
    """The sidebar's project select box; the choice holds on every page and in the URL."""
    rows = projects.list_projects(db)
    if not rows:
        st.sidebar.info("No project yet: create one on the home page.")
        return None
    state = st.session_state
    ids = [r["id"] for r in rows]
    names = {r["id"]: r["name"] for r in rows}
    # A ?project= this session did not write is a link (or a reload): it wins.
    wanted = st.query_params.get(URL_PROJECT)
    if wanted and wanted != state.get(_URL_SHOWN_KEY) and wanted.isdigit() and int(wanted) in ids:
        state[PROJECT_KEY] = int(wanted)
    if state.get(PROJECT_KEY) not in ids:
        state[PROJECT_KEY] = ids[0]
    state[_PICKER_KEY] = state[PROJECT_KEY]
    st.sidebar.selectbox(
        "Project", ids, format_func=names.get, key=_PICKER_KEY,
        on_change=_copy, args=(_PICKER_KEY, PROJECT_KEY),
        help="Every page works on this project.",
    )
    pid = state[PROJECT_KEY]
    st.query_params[URL_PROJECT] = str(pid)
    state[_URL_SHOWN_KEY] = str(pid)
    return projects.get_project(db, pid)


def _remembered_name() -> str | None:
    with contextlib.suppress(Exception):  # no browser context (bare mode, AppTest)
        value = st.context.cookies.get(NAME_COOKIE)
        if isinstance(value, str) and value:
            return urllib.parse.unquote(value).strip() or None
    return None


def _name_field() -> None:
    """The sidebar's "Your name": recorded with every label; the browser remembers it."""
    state = st.session_state
    if ANNOTATOR_KEY not in state:
        state[ANNOTATOR_KEY] = _remembered_name() or os.environ.get("USER") or "analyst"
        state[_NAME_SAVED_KEY] = state[ANNOTATOR_KEY]
    state[_NAME_KEY] = state[ANNOTATOR_KEY]
    st.sidebar.text_input(
        "Your name", key=_NAME_KEY, on_change=_copy, args=(_NAME_KEY, ANNOTATOR_KEY),
        help="Recorded with every label you save; this browser remembers it.",
    )
    name = str(state[ANNOTATOR_KEY]).strip()
    if name and state.get(_NAME_SAVED_KEY) != name:
        with st.sidebar:
            auth_view.cookie_writer(key="shell_name_cookie", height=0, data={
                "name": NAME_COOKIE, "value": name, "max_age": _NAME_COOKIE_DAYS * 86400})
        state[_NAME_SAVED_KEY] = name


def show_error(exc: Exception) -> None:
    """Show a user-facing error: NerlabError messages as they stand, others with their type."""
    if isinstance(exc, NerlabError):
        st.error(str(exc))
    else:
        st.error(f"{type(exc).__name__}: {exc}")
