"""Users and sessions: argon2 hashes (never a password in clear), one answer for a wrong name or
password, sessions that expire and end, roles, and ``nerlab user``."""

from __future__ import annotations

import io
import sys

import pytest

from core.cli.main import main
from core.data import users
from core.data.db import get_db
from core.errors import NerlabError

SECRET = "correct horse battery staple"


def test_passwords_are_not_in_the_database_in_clear(home, db):
    users.add_user(db, "alice", SECRET, "admin")
    token = users.start_session(db, users.get_user(db, "alice")["id"])
    db.conn.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in home.glob("nerlab.db*"))
    assert SECRET.encode() not in raw and token.encode() not in raw
    stored = db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and SECRET not in stored
    assert "password_hash" not in users.get_user(db, "alice")
    assert all("password_hash" not in u for u in users.list_users(db))


def test_a_wrong_name_or_password_gets_one_answer(db):
    users.add_user(db, "alice", SECRET)
    assert users.authenticate(db, "Alice", SECRET)["name"] == "alice"  # names ignore case
    for name, password in (("alice", "wrong password"), ("nobody", SECRET), ("", "")):
        with pytest.raises(users.AuthError) as err:
            users.authenticate(db, name, password)
        assert str(err.value) == "Wrong name or password."
    users.add_user(db, "sso@example.org", None)  # single sign-on: no password sign-in at all
    with pytest.raises(users.AuthError, match="Wrong name or password"):
        users.authenticate(db, "sso@example.org", "")


def test_sessions_expire_end_on_sign_out_and_on_a_new_password(db):
    user = users.add_user(db, "bob", SECRET)
    token = users.start_session(db, user["id"])
    assert users.session_user(db, token)["name"] == "bob"
    assert users.session_user(db, token + "x") is None and users.session_user(db, None) is None
    db.execute("UPDATE user_sessions SET expires_at = '2000-01-01T00:00:00+00:00'")
    assert users.session_user(db, token) is None  # expired
    token = users.start_session(db, user["id"])
    users.end_session(db, token)
    assert users.session_user(db, token) is None  # signed out
    token = users.start_session(db, user["id"])
    users.set_password(db, "bob", "another good password")
    assert users.session_user(db, token) is None
    assert users.authenticate(db, "bob", "another good password")["name"] == "bob"


def test_session_hours_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(users.SESSION_HOURS_ENV, "0.5")
    assert users.session_hours() == 0.5
    monkeypatch.setenv(users.SESSION_HOURS_ENV, "soon")
    assert users.session_hours() == users.DEFAULT_SESSION_HOURS


def test_names_passwords_and_roles_are_checked(db):
    with pytest.raises(NerlabError, match="at least 8"):
        users.add_user(db, "carol", "short")
    with pytest.raises(NerlabError, match="user's name"):
        users.add_user(db, "carolcarol", "CarolCarol")
    with pytest.raises(NerlabError, match="control"):
        users.add_user(db, "ca\x00rol", SECRET)
    with pytest.raises(NerlabError, match="Role 'boss'"):
        users.add_user(db, "carol", SECRET, "boss")
    users.add_user(db, "carol", SECRET, "admin")
    with pytest.raises(NerlabError, match="already exists"):
        users.add_user(db, "CAROL", SECRET)
    users.add_user(db, "dan", SECRET)
    with pytest.raises(NerlabError, match="only admin"):
        users.set_role(db, "carol", "annotator")
    with pytest.raises(NerlabError, match="only admin"):
        users.remove_user(db, "carol")
    users.set_role(db, "dan", "admin")
    users.remove_user(db, "carol")
    assert [u["name"] for u in users.list_users(db)] == ["dan"]


def test_nerlab_user_commands(home, capsys, monkeypatch):
    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(list(argv))

    assert run("user", "add", "alice", "--password-stdin", stdin=SECRET + "\n") == 0
    out = capsys.readouterr().out
    assert "Added alice (admin)" in out and "asks everybody to sign in" in out
    assert SECRET not in out
    assert run("user", "add", "bob", "--password-stdin", stdin="another secret pw\n") == 0
    assert "Added bob (annotator)" in capsys.readouterr().out
    assert run("user", "add", "bob", "--password-stdin", stdin="x" * 9) == 1
    assert "already exists" in capsys.readouterr().err
    assert run("user", "add", "eve") == 1  # no terminal to ask on
    assert "--password-stdin" in capsys.readouterr().err
    assert run("user", "add", "sso@example.org", "--sso", "--role", "reviewer") == 0
    assert run("user", "role", "bob", "reviewer") == 0
    assert run("user", "passwd", "bob", "--password-stdin", stdin="a new secret pw\n") == 0
    assert run("user", "list") == 0
    listed = capsys.readouterr().out
    assert "sso@example.org" in listed and "single sign-on" in listed and "a new secret" not in listed
    assert users.authenticate(get_db(), "bob", "a new secret pw")["role"] == "reviewer"
    assert run("user", "remove", "alice") == 1
    assert "only admin" in capsys.readouterr().err
    assert run("user", "remove", "bob") == 0
