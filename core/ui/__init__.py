"""The only place (with pages/ and app.py) that imports Streamlit.

``app.py`` is the entrypoint: it registers the pages with :func:`navigation`, draws what every
page shares with :func:`draw_shell` (the open project and the user's name, in the sidebar) and
runs the page the user is on inside :func:`serving`. Because the sidebar is drawn by the
entrypoint on every run, its choices hold on every page; they live under non-widget keys
(:data:`PROJECT_KEY`, :data:`ANNOTATOR_KEY`), which Streamlit never drops on a page switch, and
the open project is also written to the URL (``?project=ID``) so that a reload keeps it. The
name is remembered by the browser (a cookie), so a new session starts with it.

Every page starts with :func:`init_page`. Under the entrypoint it returns what the shell opened;
a page run on its own (``AppTest.from_file("pages/...")``) draws the shell itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
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

#: Session-state keys shared by every page (page-local keys are prefixed with the page's name).
#: Both are plain keys, not widget keys: a widget's state is dropped when the page changes.
PROJECT_KEY = "project_id"
ANNOTATOR_KEY = "annotator"
#: The sidebar widgets that edit them.
_PICKER_KEY = "shell_project"
_NAME_KEY = "shell_name"
#: The ``?project=`` value this session wrote last (a different one in the URL is a link).
_URL_SHOWN_KEY = "shell_url_project"
_NAME_SAVED_KEY = "shell_name_saved"
URL_PROJECT = "project"
NAME_COOKIE = "nerlab_annotator"
_NAME_COOKIE_DAYS = 365

#: The pages after the home page: file, title (also the URL path), icon.
PAGES = (
    ("pages/1_Data.py", "Data", "📥"),
    ("pages/2_Label.py", "Label", "🖍️"),
    ("pages/3_Template.py", "Template", "📝"),
    ("pages/4_Train.py", "Train", "🏋️"),
    ("pages/5_Evaluate.py", "Evaluate", "📊"),
    ("pages/6_Compare.py", "Compare", "⚖️"),
)


@dataclass(frozen=True)
class Shell:
    """What the entrypoint opened for this script run: the database and the open project."""

    db: Database
    project: dict | None


_current: contextvars.ContextVar[Shell | None] = contextvars.ContextVar("nerlab_shell", default=None)


def navigation(home: Callable[[], None]):
    """The app's pages for ``st.navigation``: ``home`` (the entrypoint's own page) first."""
    return st.navigation(
        [st.Page(home, title="Home", icon="🏷️", default=True)]
        + [st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]
    )


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
    return shell.db, shell.project


def draw_shell() -> Shell:
    """Open the database, make sure the demo exists, and draw the sidebar's project and name."""
    db = get_db()
    ensure_demo(db)
    project = _project_picker(db)
    _name_field()
    return Shell(db, project)


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


_COOKIE_JS = """
export default function (component) {
  const { data } = component;
  if (data && data.name) {
    document.cookie = `${data.name}=${encodeURIComponent(data.value)}; path=/; `
      + `max-age=${data.max_age}; SameSite=Strict`;
  }
}
"""
_cookie_writer = st.components.v2.component("nerlab_cookie", html="<span></span>", js=_COOKIE_JS)


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
            _cookie_writer(key="shell_name_cookie", height=0, data={
                "name": NAME_COOKIE, "value": name, "max_age": _NAME_COOKIE_DAYS * 86400})
        state[_NAME_SAVED_KEY] = name


def show_error(exc: Exception) -> None:
    """Show a user-facing error: NerlabError messages as they stand, others with their type."""
    if isinstance(exc, NerlabError):
        st.error(str(exc))
    else:
        st.error(f"{type(exc).__name__}: {exc}")


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=^\"'/])")


def md_escape(text: object) -> str:
    """``text`` as plain text inside Markdown (st.markdown, captions, headings): every character
    Markdown or Streamlit would read as syntax is escaped, so a run name like ``![i](http://x)``
    shows as typed and makes the browser fetch nothing. Control characters become spaces."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())
    return _MD_SPECIAL.sub(r"\\\1", cleaned)
