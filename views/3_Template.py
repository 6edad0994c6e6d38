"""Template: shape the instruction the model learns from, see exactly what it gets, check that
every gold answer parses back."""

import streamlit as st

from core.ui import init_page
from core.ui import template_view as tv

db, project = init_page("Template", icon="📝")

st.title("📝 Template")
if project is None:
    st.info("Create a project on the home page first.")
    st.stop()

st.caption(
    "The template turns each labelled sentence into an instruction → sentence → answer example. "
    "Each save is a new version; every run records the version it used."
)
flash = st.session_state.pop("template_flash", None)
if flash:
    st.toast(flash)  # seen wherever the page is scrolled (Save sits below the fold)

tpl = tv.template_picker(db, project)
left, right = st.columns([1, 1], gap="large")
with left:
    st.subheader("Edit")
    edited, errors = tv.editor(tpl)
    tv.save_controls(db, project, tpl, edited, errors)

with right:
    st.subheader("Preview")
    model = tv.model_picker(db, project)
    tokenizer, problem = (None, None) if model is None else tv.load_tokenizer(model)
    if model is None:
        st.caption("No base model chosen: a plain prompt, lengths in characters.")
    elif problem:
        st.warning(f"{problem} The preview shows a plain prompt, lengths in characters.")
    shown = edited or tpl
    if edited is None:
        st.caption(f"The edit has errors: showing the saved {tpl.label}.")
    data = tv.preview_data(db, project)
    fingerprint = tv.data_fingerprint(db, project["id"])
    tv.sentence_preview(shown, data, tokenizer, project, fingerprint)
    tv.length_summary(shown, data, tokenizer, model, project, fingerprint)
    with st.expander("Try the parser on a model output"):
        tv.parser_tryout(shown, data)

st.divider()
c1, c2 = st.columns([3, 2], gap="large")
with c1:
    st.subheader("Round-trip check")
    tv.round_trip_check(db, project, edited or tpl)
with c2:
    st.subheader(f"Versions of {tpl.name!r}")
    tv.versions_table(db, project, tpl)
