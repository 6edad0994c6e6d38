"""NERLab home: pick or create a project, see where it stands, and where to go next."""

import streamlit as st

from core import projects
from core.ui import PROJECT_KEY, init_page, show_error

db, project = init_page("Home", icon="🏷️")

st.title("🏷️ NERLab")
st.caption(
    "Label sentences, shape the instruction template, fine-tune an LLM with LoRA / LoRA+ / QLoRA / "
    "DoRA, and read per-class scores — all in one place, on your machine."
)

rows = projects.list_projects(db)
if rows:
    st.subheader("Projects")
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

if project is not None:
    st.subheader(f"Open project: {project['name']}")
    if project["description"]:
        st.caption(project["description"])
    s = projects.stats(db, project["id"])
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Sentences", s["sentences"])
    c2.metric("Labelled", s["labelled"])
    c3.metric("Entity types", len(s["spans_per_label"]))
    c4.metric("Runs", s["runs"])
    if s["sentences"] == 0:
        st.info("This project has no sentences yet: import a file on the **Data** page.")
        st.page_link("pages/1_Data.py", label="Import sentences", icon="📥")
    elif s["unlabelled"]:
        st.info(f"{s['unlabelled']} sentence(s) are waiting to be labelled.")
        st.page_link("pages/2_Label.py", label="Label sentences", icon="🖍️")

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
            except projects.NerlabError as exc:
                show_error(exc)
            else:
                st.session_state[PROJECT_KEY] = created["id"]
                st.rerun()
