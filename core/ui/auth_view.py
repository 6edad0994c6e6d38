"""Sign-in: who is using the app, and what they may open.

Safe by default: the server listens on localhost only (``.streamlit/config.toml``). There, with
no users defined, the app opens as it always did (no sign-in; the sidebar's "Your name" is the
annotator) and the home page offers to create an admin account. Sign-in is required as soon as
any user exists, when the server listens on the network (``server.address`` other than
localhost), or when single sign-on is configured (``[auth]`` in ``.streamlit/secrets.toml``:
Streamlit's ``st.login``, OpenID Connect). A signed-out browser then gets the sign-in page and
nothing else: the entrypoint registers no other page, and every page checks again.

A password sign-in starts a session (:func:`core.data.users.start_session`): its token stays in
this tab's session state and in a cookie (``SameSite=Strict``; ``Secure`` over HTTPS), so a
reload or a new tab stays signed in until the session expires or the user signs out. A signed-in
user's name is the annotator recorded with every label.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from dataclasses import dataclass

import streamlit as st
from sqlite_utils import Database

from core.data import users
from core.data.db import get_db
from core.errors import NerlabError
from core.ui.text import md_escape

#: Session-state keys (plain keys, kept across pages).
ANNOTATOR_KEY = "annotator"
TOKEN_KEY = "auth_token"
_COOKIE_PENDING = "auth_cookie_pending"
_NOTICE_KEY = "auth_notice"
SESSION_COOKIE = "nerlab_session"
#: Addresses that keep the server on this machine.
LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")
#: Pages (by title) each role may open besides the home page; no sign-in means every page.
ROLE_PAGES = {
    "annotator": {"Label"},
    "reviewer": {"Data", "Label", "Review", "Template", "Train", "Evaluate", "Compare"},
    "admin": {"Data", "Label", "Review", "Template", "Train", "Evaluate", "Compare"},
}


@dataclass(frozen=True)
class Visitor:
    """Who is using this tab: ``signed_in`` False means sign-in is off (a single user on
    localhost, role admin, named by the sidebar's field); ``via`` password, sso or local."""

    name: str
    role: str
    signed_in: bool
    via: str = "local"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_review(self) -> bool:
        return self.role in ("admin", "reviewer")


LOCAL = Visitor("", "admin", False)


def may_open(visitor: Visitor | None, title: str) -> bool:
    """Whether ``visitor`` may open the page called ``title`` (the home page always)."""
    if title == "Home" or visitor is None or not visitor.signed_in:
        return True
    return title in ROLE_PAGES.get(visitor.role, set())


# ------------------------------------------------------------------------------- conditions


def open_to_network() -> bool:
    """Whether the server listens beyond this machine (``server.address`` not localhost)."""
    address = st.get_option("server.address")
    return not address or str(address).strip().strip("[]") not in LOCAL_ADDRESSES


def sso_configured() -> bool:
    """Whether ``st.login`` can work: an ``[auth]`` section in ``.streamlit/secrets.toml``."""
    with contextlib.suppress(Exception):
        return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)
    return False


def required(db: Database) -> bool:
    """Sign-in is required once a user exists, on the network, or with single sign-on."""
    return users.any_users(db) or open_to_network() or sso_configured()


def _browser_is_local() -> bool:
    with contextlib.suppress(Exception):
        ip = st.context.ip_address  # Streamlit: None for localhost
        return not isinstance(ip, str)
    return True


# -------------------------------------------------------------------------------------- gate


def _cookie_token() -> str | None:
    with contextlib.suppress(Exception):  # no browser context (bare mode, AppTest)
        value = st.context.cookies.get(SESSION_COOKIE)
        if isinstance(value, str) and value:
            return urllib.parse.unquote(value)
    return None


def _sso_user(db: Database) -> dict | None:
    if not sso_configured():
        return None
    with contextlib.suppress(Exception):
        if st.user.is_logged_in:
            identity = st.user.get("email") or st.user.get("name") or st.user.get("sub")
            if identity:
                return users.single_sign_on_user(db, str(identity))
    return None


def gate(db: Database) -> Visitor | None:
    """Who uses this tab, or None when they must sign in first."""
    if not required(db):
        return LOCAL
    state = st.session_state
    token = state.get(TOKEN_KEY)
    user = users.session_user(db, token or _cookie_token())
    via = "password"
    if user is None:
        if token:  # this tab was signed in: the session expired or ended elsewhere
            state.pop(TOKEN_KEY, None)
            state[_NOTICE_KEY] = "Your session has ended: sign in again."
        user, via = _sso_user(db), "sso"
    elif not token:
        state[TOKEN_KEY] = token = _cookie_token()
    if user is None:
        return None
    state[ANNOTATOR_KEY] = user["name"]
    return Visitor(user["name"], user["role"], True, via)


# ---------------------------------------------------------------------------------- cookies


_COOKIE_JS = """
export default function (component) {
  const { data } = component;
  if (data && data.name) {
    const secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${data.name}=${encodeURIComponent(data.value)}; path=/; `
      + `max-age=${data.max_age}; SameSite=Strict${secure}`;
  }
}
"""
cookie_writer = st.components.v2.component("nerlab_cookie", html="<span></span>", js=_COOKIE_JS)


def write_pending_cookie() -> None:
    """Write (or clear) the session cookie a sign-in or sign-out left for this run."""
    pending = st.session_state.pop(_COOKIE_PENDING, None)
    if pending is not None:
        value, max_age = pending
        with st.sidebar:
            cookie_writer(key=f"auth_cookie_{max_age}_{len(value)}", height=0,
                          data={"name": SESSION_COOKIE, "value": value, "max_age": max_age})


# ---------------------------------------------------------------------------------- sign in


def _sign_in(db: Database, name: str, password: str) -> None:
    """Sign in and rerun; on a wrong name or password say so (the same words for both)."""
    try:
        user = users.authenticate(db, name, password)
    except NerlabError as exc:
        st.error(str(exc))
        return
    token = users.start_session(db, user["id"])
    st.session_state[TOKEN_KEY] = token
    st.session_state[_COOKIE_PENDING] = (token, int(users.session_hours() * 3600))
    st.session_state.pop(_NOTICE_KEY, None)
    st.rerun()


def sign_in_page(db: Database) -> None:
    """The only thing a signed-out browser sees: the sign-in form (and the first admin's)."""
    write_pending_cookie()
    st.title("🏷️ NERLab")
    if notice := st.session_state.pop(_NOTICE_KEY, None):
        st.error(notice)
    has_password_users = any(u["has_password"] for u in users.list_users(db))
    if sso_configured():
        st.button("Sign in with your organisation's account", key="auth_sso", type="primary",
                  on_click=_sso_login)
    if has_password_users:
        with st.form("auth_sign_in", clear_on_submit=True):
            st.markdown("#### Sign in")
            name = st.text_input("Name", key="auth_name", autocomplete="username")
            password = st.text_input("Password", type="password", key="auth_password",
                                     autocomplete="current-password")
            if st.form_submit_button("Sign in", type="primary"):
                _sign_in(db, name, password)
        st.caption("Forgot your password? An admin sets a new one with "
                   "`nerlab user passwd NAME`.")
    elif not users.any_users(db):
        st.info("This NERLab asks everybody to sign in "
                + ("(it is open to the network) " if open_to_network() else "")
                + "and has no users yet: create the admin account first.")
        if _browser_is_local():
            create_admin_form(db, "auth_first")
        else:
            st.markdown("The person who runs it creates the first account on the server: "
                        "`nerlab user add NAME` (the first user is an admin).")


def _sso_login() -> None:
    with contextlib.suppress(Exception):
        st.login()


def create_admin_form(db: Database, key: str) -> None:
    """The first launch's offer: create the admin account (sign-in is required from then on)."""
    with st.form(key, clear_on_submit=True):
        st.markdown("**Create the admin account**")
        name = st.text_input("Admin's name", key=f"{key}_name", autocomplete="username")
        password = st.text_input("Admin's password", type="password", key=f"{key}_password",
                                 autocomplete="new-password",
                                 help=f"At least {users.MIN_PASSWORD} characters.")
        again = st.text_input("The password again", type="password", key=f"{key}_again",
                              autocomplete="new-password")
        if st.form_submit_button("Create admin and sign in", type="primary"):
            if password != again:
                st.error("The two passwords differ.")
                return
            try:
                users.add_user(db, name, password, "admin")
            except NerlabError as exc:
                st.error(str(exc))
                return
            _sign_in(db, name, password)


# ---------------------------------------------------------------------------------- sidebar


def _sign_out(db_path: str, via: str) -> None:
    from_state = st.session_state.pop(TOKEN_KEY, None)
    with contextlib.suppress(Exception):
        users.end_session(get_db(db_path), from_state or _cookie_token())
    st.session_state[_COOKIE_PENDING] = ("", 0)
    st.session_state.pop(ANNOTATOR_KEY, None)
    if via == "sso":
        with contextlib.suppress(Exception):
            st.logout()


def account(db: Database, visitor: Visitor, db_path: str) -> None:
    """The sidebar's "Signed in as …" and Sign out."""
    write_pending_cookie()
    st.sidebar.markdown(f"Signed in as **{md_escape(visitor.name)}** · {visitor.role}")
    st.sidebar.button("Sign out", key="auth_sign_out", on_click=_sign_out,
                      args=(db_path, visitor.via))

