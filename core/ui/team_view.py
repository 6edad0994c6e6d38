"""The home page's team panels: how the project shares its sentences out, who annotated what,
how well the annotators agree, and (for an admin) who may sign in."""

from __future__ import annotations

import streamlit as st
from sqlite_utils import Database

from core.data import annotations, users
from core.errors import NerlabError
from core.evaluation import agreement
from core.ui.auth_view import Visitor, create_admin_form, open_to_network
from core.ui.text import md_escape

_SHARE_CHOICES = ("one", "n", "everyone")
_SHARE_TITLES = {"one": "One annotator per sentence", "n": "N annotators per sentence",
                 "everyone": "Everyone labels every sentence"}


def _share_form(db: Database, project_id: int, share: int) -> None:
    current = "one" if share == annotations.ONE else "everyone" if share == 0 else "n"
    with st.form("team_share"):
        choice = st.radio("How sentences are shared out", _SHARE_CHOICES,
                          index=_SHARE_CHOICES.index(current), format_func=_SHARE_TITLES.get,
                          key="team_share_choice", horizontal=True,
                          help="One: a sentence leaves everybody's queue once somebody labelled "
                          "it, and a later save corrects it. N / everyone: each annotator labels "
                          "on their own without seeing the others' labels; sentences where they "
                          "disagree wait on the Review page.")
        n = st.number_input("N", min_value=2, max_value=annotations.MAX_PER_SENTENCE,
                            value=max(2, share), step=1, key="team_share_n")
        if st.form_submit_button("Save"):
            value = {"one": annotations.ONE, "everyone": annotations.EVERYONE}.get(choice, int(n))
            try:
                annotations.set_share(db, project_id, value)
            except NerlabError as exc:
                st.error(str(exc))
            else:
                st.toast(f"Sentences are shared out: {annotations.describe_share(value)}.")
                st.rerun()


def _agreement_tables(rep: dict) -> None:
    fmt = agreement.fmt
    st.dataframe([
        {"Annotators": f"{p['a']} – {p['b']}", "Sentences": p["sentences"],
         "F1 exact": fmt(p["exact"]["f1"]), "F1 overlap": fmt(p["overlap"]["f1"])}
        for p in [*rep["pairs"], {"a": "all pairs", "b": "(micro)", **rep["all_pairs"]}]
    ], hide_index=True, width="stretch", key="team_pairs")
    per_type = rep["all_pairs"]["per_type"]
    if per_type:
        st.dataframe([
            {"Entity type": label, "F1 exact": fmt(t["exact"]["f1"]),
             "F1 overlap": fmt(t["overlap"]["f1"]),
             "Spans": t["exact"]["spans_a"] + t["exact"]["spans_b"]}
            for label, t in per_type.items()
        ], hide_index=True, width="stretch", key="team_types")
    if rep["vs_gold"]:
        st.caption(f"Against the adjudicated gold ({rep['gold_sentences']} sentence(s) reviewed "
                   "or agreed on):")
        st.dataframe([
            {"Annotator": g["annotator"], "Sentences": g["sentences"],
             "Precision": fmt(g["exact"]["precision"]), "Recall": fmt(g["exact"]["recall"]),
             "F1 exact": fmt(g["exact"]["f1"]), "F1 overlap": fmt(g["overlap"]["f1"])}
            for g in rep["vs_gold"]
        ], hide_index=True, width="stretch", key="team_gold")


def team_panel(db: Database, project: dict, visitor: Visitor) -> None:
    """Sharing, annotators and agreement for the open project (editable by an admin)."""
    pid = project["id"]
    rep = agreement.report(db, pid)
    people = rep["annotators"]
    title = "Team: annotators and agreement"
    if rep["disputed"]:
        title += f" · {rep['disputed']} to review"
    with st.expander(title, expanded=bool(rep["pairs"])):
        st.caption(f"Sentences are shared out: **{annotations.describe_share(rep['share'])}**.")
        if visitor.is_admin:
            _share_form(db, pid, rep["share"])
        if people:
            st.dataframe([{"Annotator": p["annotator"], "Labelled": p["labelled"],
                           "In progress": p["drafts"], "Last saved": (p["last_at"] or "")[:16]}
                          for p in people], hide_index=True, width="stretch", key="team_people")
        st.markdown(f"**Agreement** — {rep['multi']} sentence(s) labelled by two or more "
                    f"annotators, {rep['disputed']} disagreeing and not reviewed, "
                    f"{rep['reviewed']} reviewed.")
        if rep["pairs"]:
            _agreement_tables(rep)
            st.caption("Span-level F1 between two annotators over the sentences both labelled: "
                       "exact (same start, end and type) and overlap (same type, sharing a "
                       "character). – : neither marked a span. The same figures: "
                       f"`nerlab agreement \"{project['name']}\"`.")
        else:
            st.caption("No two annotators have labelled the same sentence yet.")
        if rep["disputed"] and visitor.may_review:
            st.page_link("views/7_Review.py", label=f"Review {rep['disputed']} disagreement(s)",
                         icon="⚖")


def users_panel(db: Database, visitor: Visitor) -> None:
    """With sign-in off: the offer to create the admin account; for an admin: the users."""
    if not visitor.signed_in:
        if not open_to_network():
            with st.expander("Working in a team? Create an admin account (turns sign-in on)"):
                st.caption("NERLab listens on this machine only and nobody needs to sign in. "
                           "Once an account exists, everybody signs in and their name is the "
                           "annotator; the README says how to open NERLab to your team.")
                create_admin_form(db, "home_first_admin")
        return
    if not visitor.is_admin:
        return
    with st.expander("Users (admin)"):
        rows = users.list_users(db)
        st.dataframe([{"Name": u["name"], "Role": u["role"],
                       "Signs in with": "password" if u["has_password"] else "single sign-on",
                       "Last sign-in": (u["last_sign_in_at"] or "–")[:16]} for u in rows],
                     hide_index=True, width="stretch", key="users_table")
        left, right = st.columns(2)
        with left, st.form("users_add", clear_on_submit=True):
            st.markdown("**Add a user**")
            name = st.text_input("Name", key="users_new_name")
            role = st.selectbox("Role", users.ROLES, index=users.ROLES.index("annotator"),
                                format_func=users.ROLE_TITLES.get, key="users_new_role")
            password = st.text_input("Password", type="password", key="users_new_password",
                                     help=f"At least {users.MIN_PASSWORD} characters; tell it "
                                     "to the user, who can have it changed later.")
            if st.form_submit_button("Add user"):
                _act(lambda: users.add_user(db, name, password, role), f"Added {name.strip()}.")
        with right, st.form("users_change", clear_on_submit=True):
            st.markdown("**Change a user**")
            names = [u["name"] for u in rows]
            who = st.selectbox("User", names, key="users_pick")
            new_role = st.selectbox("New role", ["(keep)", *users.ROLES], key="users_role")
            new_password = st.text_input("New password (ends their sessions)", type="password",
                                         key="users_password")
            remove = st.checkbox("Remove this user (their annotations stay)", key="users_remove")
            if st.form_submit_button("Apply") and who:
                _act(lambda: _change(db, who, new_role, new_password, remove, visitor),
                     f"{who} changed.")


def _change(db: Database, name: str, role: str, password: str, remove: bool,
            visitor: Visitor) -> None:
    if remove:
        if name.lower() == visitor.name.lower():
            raise NerlabError("You cannot remove yourself; another admin can.")
        users.remove_user(db, name)
        return
    if role != "(keep)":
        users.set_role(db, name, role)
    if password:
        users.set_password(db, name, password)


def _act(action, done: str) -> None:
    try:
        action()
    except NerlabError as exc:
        st.error(str(exc))
    else:
        st.toast(md_escape(done))
        st.rerun()
