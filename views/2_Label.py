"""Label: walk the queue of sentences and mark their entities; every change is saved at once."""

import streamlit as st

from core import config
from core.data import annotations, label_session, labeling, projects
from core.errors import NotFound
from core.ui import ANNOTATOR_KEY, current_visitor, init_page, may_link, md_escape
from core.ui import suggest_view as sv
from core.ui.label_widget import action_handler, button_handler, jump_handler, label_widget

db, project = init_page("Label", icon="🖍️")

st.title("🖍️ Label")
if project is None:
    st.info("Create a project on the home page first.")
    st.stop()

pid = project["id"]

session: label_session.LabelSession = st.session_state.setdefault("label_session", label_session.LabelSession())
annotator = str(st.session_state.get(ANNOTATOR_KEY) or "").strip() or label_session.ANONYMOUS
share = annotations.share(db, pid)
labels = projects.list_labels(db, pid)
label_names = [row["name"] for row in labels]

# --- Filters -----------------------------------------------------------------------------------
if st.session_state.get("label_entity", "any") not in ["any", *label_names]:
    st.session_state["label_entity"] = "any"  # the entity type was renamed or deleted
f1, f2, f3, f4 = st.columns([1.1, 0.9, 1.1, 2])
status = f1.selectbox(
    "Show", labeling.STATUSES, key="label_status",
    format_func={"unlabelled": "Not done yet", "labelled": "Done", "all": "All"}.get,
    help="The queue: sentences still to label (default), those done, or all.",
)
split = f2.selectbox("Split", ["all", *config.SPLITS], key="label_split")
entity = f3.selectbox(
    "Contains", ["any", *label_names], key="label_entity",
    format_func=lambda v: "any entity type" if v == "any" else v,
    help="Only sentences with at least one span of this entity type.",
)
search = f4.text_input("Search text", key="label_search", placeholder="e.g. lithium")
source, order = sv.controls(db, pid)
session.suggest_from = source
flt = labeling.QueueFilter(
    status=status,
    split=None if split == "all" else split,
    label=None if entity == "any" else entity,
    text=search,
    order=order,
    annotator=annotator,
    share=share,
)

# --- Which sentence ----------------------------------------------------------------------------
# Whose queue it is matters only where several annotators label each sentence.
filter_key = (pid, status, split, entity, search.strip(), order,
              annotator if share != annotations.ONE else None, share)
link = st.query_params.get("sentence")
acted, session.acted = session.acted, False
if link and link != session.link_handled and not acted:
    session.link_handled = link
    try:
        linked = projects.get_sentence(db, int(link)) if link.isdigit() else None
    except NotFound:
        linked = None
    if linked is None:
        st.warning(f"The link asks for sentence id {link!r}, which does not exist.")
    elif linked["project_id"] != pid:
        session.current = linked["id"]
        session.filter_key = None  # the project changes: keep this sentence, not the queue's first
        st.query_params["project"] = str(linked["project_id"])
        st.rerun()
    else:
        session.current = linked["id"]
        session.filter_key = filter_key

# A changed filter (or project) opens the first sentence of the new queue.
if session.filter_key != filter_key:
    session.focus += 1  # e.g. Enter in "Search text": the hotkeys go to the sentence again
    if session.filter_key is not None or session.current is None:
        session.current = labeling.first(db, pid, flt)
    session.filter_key = filter_key

sentence = None
if session.current is not None:
    try:
        sentence = projects.get_sentence(db, session.current)
    except NotFound:
        sentence = None
    if sentence is not None and sentence["project_id"] != pid:
        sentence = None
if sentence is None:
    session.current = labeling.first(db, pid, flt)
    sentence = projects.get_sentence(db, session.current) if session.current is not None else None

sv.prepare(db, pid, source, sentence)

# --- Progress ----------------------------------------------------------------------------------
prog = labeling.progress(db, pid)
st.progress(prog.fraction, text=prog.caption())
st.caption(prog.details())
if share != annotations.ONE:
    mine = labeling.count(db, pid, labeling.QueueFilter("labelled", annotator=annotator, share=share))
    todo = labeling.count(db, pid, labeling.QueueFilter(annotator=annotator, share=share))
    st.caption(f"Sentences are shared out: {annotations.describe_share(share)}. You, "
               f"{md_escape(annotator)}, have labelled {mine}; {todo} wait in your queue (“Not done "
               "yet”). You see your own labels only.")
sv.status(pid, source)
queue_total = labeling.count(db, pid, flt)

if sentence is None:
    if prog.total == 0:
        st.info("This project has no sentences yet: import some on the **Data** page.")
        if may_link(current_visitor(), "views/1_Data.py"):
            st.page_link("views/1_Data.py", label="Import sentences", icon="📥")
    else:
        st.success(
            f"No sentence matches this queue ({flt.describe()}). "
            "Change the filters above to see others."
        )
else:
    work = label_session.working(db, sentence, annotator)
    session.seen({"id": sentence["id"], "version": work["version"]})
    in_queue = labeling.matches(db, pid, flt, sentence["id"])
    data = label_session.widget_data(
        db, sentence, labels,
        queue_index=labeling.rank(db, pid, flt, sentence["position"], sentence["id"])
        if in_queue else None,
        queue_total=queue_total, ack=session.ack, focus=session.focus, suggest_from=source,
        work=work,
    )
    label_widget(data, on_action=action_handler(session, pid, flt, ANNOTATOR_KEY))

    sid = sentence["id"]
    b1, b2, b3, b4, b5 = st.columns(5)
    b1.button("← Previous", key="label_prev", width="stretch",
              help="Back to the sentence you came from, else the one before in the queue (↑).",
              on_click=button_handler(session, pid, flt, ANNOTATOR_KEY, "prev", sid))
    b2.button("✓ Accept and next", key="label_accept", type="primary", width="stretch",
              help="Done: this sentence has all its entities, the suggestions shown included "
              "(Enter).",
              on_click=button_handler(session, pid, flt, ANNOTATOR_KEY, "accept", sid))
    b3.button("Next →", key="label_next", width="stretch",
              help="The next sentence in the queue, leaving this one as it is (↓).",
              on_click=button_handler(session, pid, flt, ANNOTATOR_KEY, "next", sid))
    b4.button("↶ Undo", key="label_undo", width="stretch", disabled=not session.undo,
              help="Undo this tab's last change (Ctrl+Z).",
              on_click=button_handler(session, pid, flt, ANNOTATOR_KEY, "undo", sid))
    b5.button("Mark not done", key="label_reopen", width="stretch",
              disabled=work["status"] != "labelled",
              help="Put this sentence back in the queue of sentences to label.",
              on_click=button_handler(session, pid, flt, ANNOTATOR_KEY, "reopen", sid))

    # What the last action did: successes as a toast, problems under the buttons, so that the
    # sentence never moves down the page.
    notice = session.notice
    session.notice = None
    if notice is not None and notice.level in ("success", "info"):
        st.toast(notice.text)
    elif notice is not None:
        {"warning": st.warning, "error": st.error}.get(notice.level, st.error)(notice.text)
        if notice.unsaved is not None:
            with st.expander("Your change that was not saved"):
                st.write(
                    ", ".join(f"{s.label}: “{sentence['text'][s.start:s.end]}”" for s in notice.unsaved)
                    or "no entities"
                )

    st.query_params["sentence"] = str(sid)
    session.link_handled = str(sid)


if st.session_state.get("label_jump", 1) > max(prog.total, 1):
    st.session_state["label_jump"] = 1  # another, smaller project is open now
j1, j2, _ = st.columns([1, 0.6, 3], vertical_alignment="bottom")
j1.number_input(
    "Jump to sentence number", min_value=1, max_value=max(prog.total, 1), step=1,
    key="label_jump", help="Sentence numbers follow the project's order (1 = first imported).",
)
j2.button("Go", key="label_go", on_click=jump_handler(session, pid, "label_jump"))

with st.expander("Progress in detail", expanded=False):
    c1, c2 = st.columns(2)
    c1.dataframe(
        [
            {"Split": name, "Labelled": v["labelled"], "Sentences": v["sentences"],
             "Done": f"{v['labelled'] / v['sentences']:.0%}" if v["sentences"] else "–"}
            for name, v in prog.splits.items()
        ],
        hide_index=True, width="stretch",
    )
    c2.dataframe(
        [{"Entity type": name, "Spans": v["spans"], "Sentences": v["sentences"]}
         for name, v in prog.per_label.items()],
        hide_index=True, width="stretch",
    )
    if outcome := sv.outcome_caption(db, pid):
        st.caption(outcome)
