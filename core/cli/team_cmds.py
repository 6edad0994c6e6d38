"""``nerlab user ...``, ``nerlab team`` and ``nerlab agreement``: the people who may sign in, how a
project shares its sentences out, and how well its annotators agree.

Passwords are read from the terminal (asked twice, not echoed) or, for scripts, from standard
input with ``--password-stdin``; never from the command line, where ``ps`` and the shell's
history would keep them.
"""

from __future__ import annotations

import getpass
import json
import sys

from core.data import annotations, projects, users
from core.data.db import get_db
from core.errors import NerlabError
from core.evaluation import agreement


def _read_password(args, prompt: str = "Password") -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise NerlabError("--password-stdin: standard input is empty.")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise NerlabError("No terminal to ask for the password: pipe it with --password-stdin.")
    first = getpass.getpass(f"{prompt} for {args.user_name}: ")
    users.check_password(first, args.user_name)
    if getpass.getpass("Again: ") != first:
        raise NerlabError("The two passwords differ; nothing was changed.")
    return first


def cmd_user_add(args) -> int:
    db = get_db()
    first = not users.any_users(db)
    role = args.role or ("admin" if first else "annotator")
    if args.sso:
        user = users.add_user(db, args.user_name, None, role)
        print(f"Added {user['name']} ({role}) for single sign-on: they sign in through your "
              "identity provider (st.login), not with a password.")
        return 0
    users.check_name(args.user_name)
    if users.get_user(db, args.user_name) is not None:
        raise NerlabError(f"A user called {args.user_name.strip()!r} already exists.")
    user = users.add_user(db, args.user_name, _read_password(args), role)
    print(f"Added {user['name']} ({role}).")
    if first:
        print("This is the first user: from now on the app asks everybody to sign in.")
    return 0


def cmd_user_list(args) -> int:
    rows = users.list_users(get_db())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No users: the app opens without sign-in on this machine (localhost). Add one with:"
              " nerlab user add NAME")
    for u in rows:
        how = "password" if u["has_password"] else "single sign-on"
        print(f"{u['name']:24} {u['role']:10} {how:15} last sign-in {u['last_sign_in_at'] or '–'}")
    return 0


def cmd_user_passwd(args) -> int:
    db = get_db()
    user = users.get_user(db, args.user_name)
    if user is None:
        raise NerlabError(f"No user {args.user_name!r}.")
    users.set_password(db, user["name"], _read_password(args, "New password"))
    print(f"New password for {user['name']}; their open sessions have ended.")
    return 0


def cmd_user_role(args) -> int:
    user = users.set_role(get_db(), args.user_name, args.new_role)
    print(f"{user['name']} is now {user['role']}.")
    return 0


def cmd_user_remove(args) -> int:
    db = get_db()
    users.remove_user(db, args.user_name)
    print(f"Removed {args.user_name}; their annotations stay under their name."
          + ("" if users.any_users(db) else " No user is left: the app opens without sign-in "
             "on localhost again."))
    return 0


def cmd_team(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    if args.everyone:
        annotations.set_share(db, project["id"], annotations.EVERYONE)
    elif args.per_sentence is not None:
        if args.per_sentence < 1:
            raise NerlabError("--per-sentence takes 1 or more; use --everyone for everyone.")
        annotations.set_share(db, project["id"], args.per_sentence)
    share = annotations.share(db, project["id"])
    people = annotations.annotators(db, project["id"])
    if args.json:
        print(json.dumps({"project": project["name"], "per_sentence": share,
                          "annotators": people}, indent=2))
        return 0
    print(f"{project['name']}: {annotations.describe_share(share)}.")
    for p in people:
        print(f"  {p['annotator']:24} {p['labelled']:>6} labelled  {p['drafts']:>4} in progress")
    return 0


def cmd_agreement(args) -> int:
    db = get_db()
    project = projects.get_project(db, args.name)
    rep = agreement.report(db, project["id"])
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
        return 0
    print("\n".join(agreement.lines(rep)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("user", help="people who may sign in (add, list, passwd, role, remove)",
                       description="Once a user exists, the app asks everybody to sign in. "
                       "Passwords are asked on the terminal or read with --password-stdin.")
    users_sub = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    q = users_sub.add_parser("add", help="add a user (the first one is an admin)")
    q.add_argument("user_name", metavar="NAME")
    q.add_argument("--role", choices=users.ROLES,
                   help="default: admin for the first user, annotator after")
    q.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    q.add_argument("--sso", action="store_true",
                   help="no password: the user signs in through the identity provider (st.login)")
    q.set_defaults(func=cmd_user_add)
    q = users_sub.add_parser("list", help="list users and roles")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_user_list)
    q = users_sub.add_parser("passwd", help="set a user's password (ends their sessions)")
    q.add_argument("user_name", metavar="NAME")
    q.add_argument("--password-stdin", action="store_true")
    q.set_defaults(func=cmd_user_passwd)
    q = users_sub.add_parser("role", help="change a user's role")
    q.add_argument("user_name", metavar="NAME")
    q.add_argument("new_role", metavar="ROLE", choices=users.ROLES)
    q.set_defaults(func=cmd_user_role)
    q = users_sub.add_parser("remove", help="remove a user (their annotations stay)")
    q.add_argument("user_name", metavar="NAME")
    q.set_defaults(func=cmd_user_remove)

    p = sub.add_parser("team", help="how a project shares its sentences out, and its annotators")
    p.add_argument("name", help="project")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--per-sentence", type=int, metavar="N",
                       help="N annotators label each sentence (1: one annotator, the default)")
    group.add_argument("--everyone", action="store_true", help="everyone labels every sentence")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_team)

    p = sub.add_parser("agreement", help="inter-annotator agreement (span F1, exact and overlap)",
                       description="Pairwise span-level F1 (exact and overlap) between annotators, "
                       "per entity type, and each annotator against the adjudicated gold.")
    p.add_argument("name", help="project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agreement)

