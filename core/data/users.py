"""The people who may sign in: names, roles, password hashes, and their sessions.

Passwords are hashed with argon2id (``argon2-cffi``, its default parameters) and never stored,
logged or shown in clear; a wrong name and a wrong password get the same answer
(:class:`AuthError`), after the same work. A session is a random token (256 bits) that the
browser keeps; the database keeps only its SHA-256 and when it expires, so a stolen database
holds no usable token, signing out ends it for good, and a new password ends every session of
its user.

Roles: ``admin`` manages projects, users and how sentences are shared out, and reviews;
``reviewer`` reviews, trains and evaluates; ``annotator`` labels. A user created for single
sign-on (``st.login``, OpenID Connect) has no password: the identity provider vouches for them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlite_utils import Database

from core.data.db import now
from core.errors import NerlabError

ROLES = ("admin", "reviewer", "annotator")
ROLE_TITLES = {"admin": "admin (projects, users, review)", "reviewer": "reviewer (review, train,"
               " evaluate)", "annotator": "annotator (labels)"}
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_NAME = 64
#: Hours a sign-in lasts (environment variable ``NERLAB_SESSION_HOURS``, default 12).
SESSION_HOURS_ENV = "NERLAB_SESSION_HOURS"
DEFAULT_SESSION_HOURS = 12.0
WRONG = "Wrong name or password."


class AuthError(NerlabError):
    """A sign-in that failed; the message never says whether the name or the password was wrong."""


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so both failures take the same time."""
    return _hasher().hash(secrets.token_urlsafe(16))


def _public(row: dict | None) -> dict | None:
    if row is None:
        return None
    out = {k: v for k, v in row.items() if k != "password_hash"}
    out["has_password"] = bool(row.get("password_hash"))
    return out


def check_name(name: str) -> str:
    """A user name as stored: stripped, 1-64 visible characters (e-mail addresses welcome)."""
    if not isinstance(name, str) or not name.strip():
        raise NerlabError("A user needs a name.")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise NerlabError(f"A user name has at most {MAX_NAME} characters.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise NerlabError("A user name may not contain control or invisible characters.")
    return name


def check_password(password: str, name: str = "") -> None:
    """At least 8 characters, and not the user's name."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise NerlabError(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise NerlabError(f"A password has at most {MAX_PASSWORD} characters.")
    if name and password.strip().lower() == name.strip().lower():
        raise NerlabError("A password may not be the user's name.")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise NerlabError(f"Role {role!r} is not one of {', '.join(ROLES)}.")
    return role


def any_users(db: Database) -> bool:
    """Whether anybody can sign in (then signing in is required)."""
    return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def list_users(db: Database) -> list[dict]:
    """Every user without the password hash (``has_password`` instead), by name."""
    return [_public(dict(r)) for r in db.query(
        "SELECT * FROM users ORDER BY name COLLATE NOCASE")]


def get_user(db: Database, name: str) -> dict | None:
    rows = list(db.query("SELECT * FROM users WHERE name = ?", [str(name).strip()]))
    return _public(dict(rows[0])) if rows else None


def _require(db: Database, name: str) -> dict:
    user = get_user(db, name)
    if user is None:
        names = ", ".join(u["name"] for u in list_users(db)) or "none"
        raise NerlabError(f"No user {name!r}. Users: {names}.")
    return user


def add_user(db: Database, name: str, password: str | None, role: str = "annotator") -> dict:
    """Create a user; ``password`` None makes a single-sign-on user (no password sign-in)."""
    name = check_name(name)
    _check_role(role)
    if password is not None:
        check_password(password, name)
    if get_user(db, name) is not None:
        raise NerlabError(f"A user called {name!r} already exists.")
    stamp = now()
    db.execute("INSERT INTO users (name, password_hash, role, created_at, updated_at)"
               " VALUES (?, ?, ?, ?, ?)",
               [name, None if password is None else _hasher().hash(password), role, stamp, stamp])
    db.conn.commit()
    return get_user(db, name)


def _admins(db: Database) -> int:
    return db.execute("SELECT COUNT(*) FROM users WHERE role = 'admin'").fetchone()[0]


def set_password(db: Database, name: str, password: str) -> None:
    """Give a user a new password; their sessions end."""
    user = _require(db, name)
    check_password(password, user["name"])
    with db.atomic():
        db.execute("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
                   [_hasher().hash(password), now(), user["id"]])
        db.execute("DELETE FROM user_sessions WHERE user_id = ?", [user["id"]])


def set_role(db: Database, name: str, role: str) -> dict:
    """Change a user's role (the last admin stays an admin)."""
    user = _require(db, name)
    _check_role(role)
    if user["role"] == "admin" and role != "admin" and _admins(db) == 1:
        raise NerlabError(f"{user['name']} is the only admin: make somebody else an admin first.")
    db.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", [role, now(), user["id"]])
    db.conn.commit()
    return get_user(db, user["name"])


def remove_user(db: Database, name: str) -> None:
    """Delete a user and their sessions; their annotations stay (under their name)."""
    user = _require(db, name)
    others = db.execute("SELECT COUNT(*) FROM users WHERE id != ?", [user["id"]]).fetchone()[0]
    if user["role"] == "admin" and _admins(db) == 1 and others:
        raise NerlabError(f"{user['name']} is the only admin: make somebody else an admin first.")
    db.execute("DELETE FROM users WHERE id = ?", [user["id"]])
    db.conn.commit()


def authenticate(db: Database, name: str, password: str) -> dict:
    """The user whose name and password these are, else :class:`AuthError` (the same message
    and about the same time whether the name or the password was wrong)."""
    dummy = _dummy_hash()  # made before the lookup, so that no first failure takes longer
    rows = list(db.query("SELECT * FROM users WHERE name = ?", [str(name or "").strip()]))
    row = dict(rows[0]) if rows else None
    stored = row["password_hash"] if row and row["password_hash"] else None
    try:
        _hasher().verify(stored or dummy, str(password or ""))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        raise AuthError(WRONG) from None
    if stored is None:  # unknown name, or a single-sign-on user (no password)
        raise AuthError(WRONG)
    updates = {"last_sign_in_at": now()}
    if _hasher().check_needs_rehash(stored):
        updates["password_hash"] = _hasher().hash(password)
    db["users"].update(row["id"], updates)
    return get_user(db, row["name"])


# ------------------------------------------------------------------------------------ sessions


def session_hours() -> float:
    """How long a sign-in lasts, from ``NERLAB_SESSION_HOURS`` (default 12)."""
    raw = os.environ.get(SESSION_HOURS_ENV, "")
    try:
        hours = float(raw) if raw.strip() else DEFAULT_SESSION_HOURS
    except ValueError:
        hours = DEFAULT_SESSION_HOURS
    return hours if hours > 0 else DEFAULT_SESSION_HOURS


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _later(hours: float) -> str:
    moment = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=hours)
    return moment.isoformat(timespec="seconds")


def start_session(db: Database, user_id: int, hours: float | None = None) -> str:
    """A new session for a user; returns the token the browser keeps (shown nowhere else)."""
    token = secrets.token_urlsafe(32)
    stamp = now()
    with db.atomic():
        db.execute("DELETE FROM user_sessions WHERE expires_at <= ?", [stamp])
        db.execute("INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at)"
                   " VALUES (?, ?, ?, ?)",
                   [_digest(token), user_id, stamp, _later(hours or session_hours())])
    return token


def session_user(db: Database, token: str | None) -> dict | None:
    """The user a token signs in, or None (unknown, ended or expired)."""
    if not token or not isinstance(token, str) or len(token) > 200:
        return None
    rows = list(db.query(
        "SELECT u.*, s.expires_at AS session_expires_at FROM user_sessions s JOIN users u"
        " ON u.id = s.user_id WHERE s.token_hash = ? AND s.expires_at > ?",
        [_digest(token), now()]))
    return _public(dict(rows[0])) if rows else None


def end_session(db: Database, token: str | None) -> None:
    """Sign out: the token no longer signs anybody in."""
    if token:
        db.execute("DELETE FROM user_sessions WHERE token_hash = ?", [_digest(token)])
        db.conn.commit()


def single_sign_on_user(db: Database, identity: str) -> dict:
    """The user an identity provider vouched for (``st.login``): their row when an admin created
    one (with its role), else a new annotator without a password."""
    name = check_name(identity)
    user = get_user(db, name)
    if user is None:
        user = add_user(db, name, None, "annotator")
    db.execute("UPDATE users SET last_sign_in_at = ? WHERE id = ?", [now(), user["id"]])
    db.conn.commit()
    return get_user(db, name)
