"""Evaluate: how good is a run, on which entity types, and where does it go wrong."""

import streamlit as st

from core.data import projects
from core.evaluation import compare, run_scores, scoring
from core.ui import charts, init_page, show_error
from core.ui import eval_view as ev

db, project = init_page("Evaluate", icon="📊")
st.title("Evaluate")
if project is None:
    st.stop()
pid = project["id"]
labels = projects.list_labels(db, pid)
palette = ev.colours(labels)

ev.baseline_form(db, project)

runs = compare.scored_runs(db, pid)
if not runs:
    st.info(
        "No run has predictions yet. Fine-tune a model on the **Train** page (it predicts dev "
        "and test when it ends), or start a baseline above."
    )
    st.stop()

by_id = {r["id"]: r for r in runs}
wanted = st.query_params.get("run")
if wanted and wanted.isdigit() and int(wanted) in by_id:
    st.session_state["eval_run"] = int(wanted)
if st.session_state.get("eval_run") not in by_id:
    st.session_state["eval_run"] = runs[0]["id"]

c1, c2, c3 = st.columns([3, 2, 2])
run_id = c1.selectbox("Run", list(by_id), format_func=lambda i: compare.run_title(by_id[i]),
                      key="eval_run")
run = by_id[run_id]
splits = [s for s in ("test", "dev", "train") if s in run["predicted"]]
split_key = f"eval_split_{run_id}"  # one per run: their splits and counts differ
if st.session_state.get(split_key) not in splits:
    st.session_state[split_key] = splits[0]
split = c2.radio("Split", splits, horizontal=True, key=split_key,
                 format_func=lambda s: f"{s} ({run['predicted'][s]})")
mode = c3.radio(
    "Scoring", scoring.MODES, horizontal=True, key="eval_mode",
    help="default: conlleval's reading of the tags; strict: seqeval's strict IOB2 mode. On tags "
    "derived from spans both agree; they differ on malformed tag sequences.",
)
if run["status"] != "finished":
    st.warning(f"This run is {run['status']}: the scores cover the predictions stored so far.")

try:
    if st.button("Re-score", key="eval_rescore",
                 help="Scores refresh by themselves when a gold label changes; this forces it."):
        run_scores.evaluate_run(db, run_id, splits=[split])
    metrics = run_scores.metrics_for(db, run_id, split, mode)
except Exception as exc:  # noqa: BLE001 - shown to the user
    show_error(exc)
    st.stop()
if metrics is None:
    st.info("No predictions on this split.")
    st.stop()

ev.headline(metrics, run["kind"])

st.subheader("Per entity type")
left, right = st.columns([1, 1])
with left:
    st.plotly_chart(charts.per_class_bars(metrics), key="eval_bars")
with right:
    st.dataframe(
        ev.per_class_frame(metrics), hide_index=True, key="eval_table", width="stretch",
        column_config={**{k: st.column_config.NumberColumn(format="%.3f", width=70)
                          for k in ("precision", "recall", "f1")},
                       "support": st.column_config.NumberColumn("gold", width=55),
                       "predicted": st.column_config.NumberColumn(width=75)},
    )
    rare = [n for n, r in metrics["per_class"].items() if 0 < r["support"] < 10]
    if rare:
        st.caption(f"Few gold examples of {', '.join(rare)}: their scores move a lot with one "
                   "sentence more or less.")

st.subheader("Span confusion")
st.caption(
    "Rows: the gold type of each entity (and spurious predictions); columns: what the run "
    "predicted with exactly the same boundaries, an overlapping prediction with other "
    "boundaries (boundary), or nothing (missed). Each row sums to the type's gold count."
)
st.plotly_chart(charts.confusion_heatmap(metrics["confusion"]), key="eval_confusion")
errors = metrics["errors"]
st.caption(" · ".join(f"{ev.error_label(k)}: {errors[k]}" for k in scoring.ERROR_KINDS))

st.subheader("Errors")
items = run_scores.load_scored(db, run_id, split)
error_kinds = [k for k in scoring.ERROR_KINDS if k != "correct"]
f1, f2, f3 = st.columns([3, 2, 1])
kinds = f1.multiselect("Kinds", error_kinds, default=error_kinds, key="eval_kinds",
                       format_func=ev.error_label)
type_names = [r["name"] for r in labels]
type_filter = f2.selectbox("Entity type", ["All types", *type_names], key="eval_type",
                           help="Errors where the gold or the predicted entity has this type.")
found = scoring.error_list(items, kinds or error_kinds,
                            None if type_filter == "All types" else type_filter)
PAGE = 20
pages = max(1, (len(found) + PAGE - 1) // PAGE)
page = f3.number_input("Page", 1, pages, 1, key="eval_page", help=f"{PAGE} errors per page")
st.caption(f"{len(found)} error(s)" + (f"; page {page} of {pages}" if pages > 1 else ""))
raw_by_id = {it.example.id: it for it in items}
for err in found[(page - 1) * PAGE : page * PAGE]:
    with st.container(border=True):
        gold, pred = err["gold"], err["pred"]
        what = ev.error_label(err["kind"])
        detail = []
        if gold:
            detail.append(f"gold **{gold['text']}** ({gold['label']})")
        if pred:
            detail.append(f"predicted **{pred['text']}** ({pred['label']})")
        head, link = st.columns([5, 1])
        head.markdown(f":red[{what}] — " + "; ".join(detail))
        link.markdown(ev.label_link(err["sentence_id"], pid))
        ev.show_html(ev.gold_pred_html(err["text"], err["gold_spans"],
                                       [("predicted", err["pred_spans"])], palette,
                                       focus=[gold, pred]))
        it = raw_by_id.get(err["sentence_id"])
        if it is not None and it.parse_status != "ok":
            st.caption(f"Model answer ({it.parse_status}): `{it.raw_output[:300]}`")
