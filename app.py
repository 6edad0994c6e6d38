"""NERLab's entrypoint and home page: pick or create a project, see where it stands, and where to
go next.

``streamlit run app.py`` runs this file on every interaction: it finds out who is here (a
signed-out browser gets the sign-in page and nothing else), registers the pages their role opens,
draws the sidebar every page shares (the open project, the user's name) and runs the page the
user is on.
"""

import streamlit as st

from core.data import overview, projects
from core.data.db import get_db
from core.errors import NerlabError
from core.ui import (
    PROJECT_KEY,
    draw_shell,
    may_link,
    navigation,
    open_project,
    serving,
    show_error,
    who,
)
from core.ui.team_view import team_panel, users_panel


def home() -> None:
    db, project, visitor = shell.db, shell.project, shell.visitor
    st.title("🏷️ NERLab")
    st.caption(
        "Label sentences, shape the instruction template, fine-tune an LLM with LoRA / LoRA+ / "
        "QLoRA / DoRA, and read per-class scores — all in one place, on your machine."
    )

    if project is not None:
        s = projects.stats(db, project["id"])
        best = overview.best_run(db, project["id"])
        st.subheader(project["name"])
        if project["description"]:
            st.caption(project["description"])
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Sentences", s["sentences"])
        c2.metric("Labelled", s["labelled"], help="Sentences marked done, with or without entities.")
        c3.metric("Runs", s["runs"])
        c4.metric("Best micro-F1 (test)", f"{best['micro_f1']:.3f}" if best else "—",
                  help="The best stored score of any run or baseline on the test split.")

        steps = overview.steps(db, project["id"])
        upcoming = overview.next_step(steps)
        if upcoming is not None:
            st.info(f"**Next: {upcoming.title}.** {upcoming.action}")
            if may_link(visitor, upcoming.page):
                st.page_link(upcoming.page, label=f"Go to {upcoming.title}", icon="➡️")
        else:
            st.success("Every step is done. Label more, try other presets, or compare runs.")
            if may_link(visitor, "views/6_Compare.py"):
                st.page_link("views/6_Compare.py", label="Compare runs side by side", icon="⚖️")

        st.markdown("#### Your path")
        for i, step in enumerate(steps, start=1):
            col_mark, col_text, col_link = st.columns([0.12, 0.58, 0.30], vertical_alignment="center")
            col_mark.markdown("✅ done" if step.done else "⬜ to do")
            col_text.markdown(f"**{i}. {step.title}** — {step.detail}")
            if may_link(visitor, step.page):
                col_link.page_link(step.page, label=f"Open {step.page.split('_', 1)[1][:-3]}")

    rows = projects.list_projects(db)
    if rows:
        st.markdown("#### All projects")
        st.dataframe(
            [
                {
                    "Project": r["name"],
                    "Sentences": r["sentences"],
                    "Labelled": r["labelled"],
                    "Runs": r["runs"],
                    "Created": r["created_at"][:10],
                }
                for r in rows
            ],
            hide_index=True,
            width="stretch",
        )
        st.caption("Switch the open project in the sidebar.")
    else:
        st.info("There is no project yet. Create one below, then import or type the sentences to label.")

    if project is not None:
        team_panel(db, project, visitor)
    users_panel(db, visitor)
    if not visitor.is_admin:
        st.caption("An admin creates, renames and deletes projects.")
        return
    if project is not None:
        manage(db, project)

    with st.expander("Create a new project", expanded=not rows):
        with st.form("home_create"):
            name = st.text_input("Name", key="home_new_name", placeholder="e.g. Contracts 2026")
            labels = st.text_input(
                "Entity types (comma-separated)", key="home_new_labels", placeholder="PARTY, DATE, AMOUNT"
            )
            description = st.text_area("Description", key="home_new_description", height=80)
            if st.form_submit_button("Create project", type="primary"):
                try:
                    created = projects.create_project(
                        db, name, labels=[x.strip() for x in labels.split(",") if x.strip()],
                        description=description,
                    )
                except NerlabError as exc:
                    show_error(exc)
                else:
                    open_project(created["id"])


def manage(db, project: dict) -> None:
    """Rename the open project, or delete it after saying what goes with it."""
    with st.expander(f"Rename or delete {project['name']}"):
        with st.form("home_rename"):
            new_name = st.text_input("New name", value=project["name"], key="home_rename_name")
            if st.form_submit_button("Rename"):
                try:
                    projects.rename_project(db, project["id"], new_name)
                except projects.NerlabError as exc:
                    show_error(exc)
                else:
                    st.toast(f"Renamed to {new_name.strip()}.")
                    st.rerun()
        if st.session_state.get("home_confirm_delete") != project["id"]:
            if st.button(f"Delete {project['name']}…", key="home_delete"):
                st.session_state["home_confirm_delete"] = project["id"]
                st.rerun()
            return
        gone = projects.footprint(db, project["id"])
        st.warning(
            f"Delete **{project['name']}** with its {gone['sentences']} sentence(s) "
            f"({gone['labelled']} labelled, {gone['spans']} span(s)), {gone['templates']} template "
            f"version(s) and {gone['runs']} run(s) with their files ({gone['run_files_mb']} MB)? "
            "This cannot be undone; export the data first if you may need it."
        )
        c1, c2 = st.columns(2)
        if c1.button("Yes, delete", key="home_delete_yes", type="primary"):
            st.session_state.pop("home_confirm_delete", None)
            try:
                projects.delete_project(db, project["id"])
            except projects.NerlabError as exc:
                show_error(exc)
            else:
                st.session_state.pop(PROJECT_KEY, None)
                st.toast(f"Deleted {project['name']}.")
                st.rerun()
        if c2.button("Cancel", key="home_delete_no"):
            st.session_state.pop("home_confirm_delete", None)
            st.rerun()


st.set_page_config(page_title="NERLab", page_icon="🏷️", layout="wide")
_db = get_db()
_visitor = who(_db)
page = navigation(home, _visitor)
shell = draw_shell(_db, _visitor)
with serving(shell):
    page.run()
