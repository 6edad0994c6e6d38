"""Compare: two to four runs (baselines included) side by side, overall, per type and per sentence."""

import pandas as pd
import streamlit as st

from core.data import projects
from core.data.db import get_db
from core.evaluation import compare, scoring
from core.prediction import tryout
from core.ui import charts, init_page, md_escape, show_error
from core.ui import eval_view as ev

db, project = init_page("Compare", icon="⚖️")
st.title("Compare runs")
if project is None:
    st.stop()
pid = project["id"]
labels = projects.list_labels(db, pid)
palette = ev.colours(labels)

runs = compare.scored_runs(db, pid)
if len(runs) < 2:
    st.info(
        "Comparing needs at least two runs with predictions. Fine-tune on the **Train** page or "
        "start baselines (zero-shot, few-shot, CRF) on the **Evaluate** page."
    )
    st.markdown("[Evaluate and start baselines ↗](Evaluate)")
    st.stop()

by_id = {r["id"]: r for r in runs}
chosen = [i for i in st.session_state.get("compare_runs", []) if i in by_id]
st.session_state["compare_runs"] = chosen or [r["id"] for r in runs[:2]]
run_ids = st.multiselect(
    "Runs (two to four)", list(by_id), key="compare_runs", max_selections=4,
    format_func=lambda i: compare.run_title(by_id[i]),
    help="The first run is the reference: deltas are measured against it.",
)
if len(run_ids) < 2:
    st.info("Pick at least two runs.")
    st.stop()
short = {i: f"#{i} {by_id[i]['name'] or by_id[i]['kind']}" for i in run_ids}

common_splits = [s for s in ("test", "dev", "train")
                 if all(s in by_id[i]["predicted"] for i in run_ids)]
if not common_splits:
    st.warning("These runs have no split in common: pick runs predicted on the same split.")
    st.stop()
if st.session_state.get("compare_split") not in common_splits:
    st.session_state["compare_split"] = common_splits[0]
split = st.radio("Split", common_splits, horizontal=True, key="compare_split")

try:
    rows, items = compare.side_by_side(db, run_ids, split)
except Exception as exc:  # noqa: BLE001 - shown to the user
    show_error(exc)
    st.stop()
if not rows:
    st.warning("No sentence was predicted by every one of these runs on this split.")
    st.stop()
label_names = [r["name"] for r in labels]
scores = {i: scoring.score(items[i], labels=label_names) for i in run_ids}
counts = {i: by_id[i]["predicted"].get(split, 0) for i in run_ids}
if any(c != len(rows) for c in counts.values()):
    st.caption(f"Scored on the {len(rows)} {split} sentences every selected run predicted.")

# --- Metrics side by side ---------------------------------------------------------------------
st.subheader("Scores")


def _metric_rows(m: dict) -> dict[str, float]:
    out = {
        "micro F1": m["micro"]["f1"],
        "micro precision": m["micro"]["precision"],
        "micro recall": m["micro"]["recall"],
        "macro F1": m["macro"]["f1"],
        "weighted F1": m["weighted"]["f1"],
    }
    for name in label_names:
        out[f"F1 {name}"] = m["per_class"].get(name, {}).get("f1", 0.0)
    ci = m.get("ci") or {}
    if ci.get("f1_low") is not None:
        out["micro F1 95% low"] = ci["f1_low"]
        out["micro F1 95% high"] = ci["f1_high"]
    out["unparsable answers"] = float(m["parse"]["unparsable"])
    return out


per_run = {i: _metric_rows(scores[i]) for i in run_ids}
table = pd.DataFrame({"metric": list(per_run[run_ids[0]])})
ref = run_ids[0]
for i in run_ids:
    table[short[i]] = [per_run[i][k] for k in table["metric"]]
for i in run_ids[1:]:
    table[f"Δ {short[i]}"] = [per_run[i][k] - per_run[ref][k] for k in table["metric"]]
st.dataframe(
    table, hide_index=True, key="compare_table",
    column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns[1:]},
)
st.caption(f"Δ: difference from {md_escape(short[ref])}. With {len(rows)} sentences, differences inside the "
           "95% intervals may be chance.")
st.plotly_chart(charts.compare_per_class({short[i]: scores[i] for i in run_ids}),
                key="compare_bars")

# --- Sentence by sentence ---------------------------------------------------------------------
st.subheader("Sentence by sentence")
c1, c2 = st.columns([3, 1])
which = c1.radio("Show", ("all", "runs disagree", "any run wrong"), horizontal=True,
                 key="compare_filter")
shown = [r for r in rows if which == "all" or (which == "runs disagree" and r["disagree"])
         or (which == "any run wrong" and r["any_wrong"])]
PAGE = 15
pages = max(1, (len(shown) + PAGE - 1) // PAGE)
page = c2.number_input("Page", 1, pages, 1, key="compare_page")
st.caption(f"{len(shown)} of {len(rows)} sentence(s)" + (f"; page {page} of {pages}" if pages > 1 else "")
           + ". Dashed outline: a span that is not in the gold labels.")
for r in shown[(page - 1) * PAGE : page * PAGE]:
    with st.container(border=True):
        ev.show_html(ev.gold_pred_html(r["text"], r["gold"],
                                       [(short[i], r["preds"][i]) for i in run_ids], palette))
        st.markdown(ev.label_link(r["sentence_id"], pid))

# --- Try a new sentence -----------------------------------------------------------------------
st.subheader("Try a new sentence")
st.caption("Each selected run reads the sentence in a background process. The first sentence "
           "loads each run's model (seconds for the bundled model, minutes for a large one); the "
           f"process keeps them in memory for {tryout.IDLE_S / 60:.0f} minutes after the last "
           "sentence, so the next ones take only the generation time.")
text = st.text_input("Sentence", key="compare_try_text",
                     placeholder="e.g. Lithium-induced hypotension was reversed by naloxone .")
if st.button("Run the selected models", key="compare_try_go", type="primary"):
    try:
        st.session_state["compare_try_id"] = tryout.request_try(db, pid, text, run_ids)
    except Exception as exc:  # noqa: BLE001 - shown to the user
        show_error(exc)


def _show_try(request_id: int) -> None:
    fresh = get_db()
    req = tryout.get_try(fresh, request_id)
    pending = req["status"] in ("queued", "running")
    for rid in req["run_ids"]:
        out = req["outputs"].get(str(rid))
        name = f"#{rid} {by_id[rid]['name']}" if rid in by_id else f"#{rid}"
        if out is None:
            st.caption(f"{name}: {'waiting for its turn…' if pending else 'no answer'}")
        elif "stage" in out and "status" not in out:
            st.caption(f"{name}: {tryout.stage_text(out)}")
        elif out["status"] == "error":
            st.error(f"{name}: {out.get('error')}")
        else:
            st.markdown(f"**{name}** · {tryout.timing_text(out)}" +
                        (f" · answer {out['status']}" if out["status"] != "ok" else ""))
            ev.show_html(ev.spans_html(req["text"], tryout.spans_of(out), palette))
    if req["status"] == "failed":
        st.error(req["error_message"] or "The request failed.")
    if pending and st.session_state.get("compare_try_polling"):
        return
    if not pending and st.session_state.get("compare_try_polling"):
        st.session_state["compare_try_polling"] = False
        st.rerun()


request_id = st.session_state.get("compare_try_id")
if request_id:
    try:
        status = tryout.get_try(db, request_id)["status"]
    except Exception as exc:  # noqa: BLE001 - shown to the user
        show_error(exc)
        status = "failed"
    if status in ("queued", "running"):
        st.session_state["compare_try_polling"] = True
        st.fragment(run_every="1s")(_show_try)(request_id)
    else:
        _show_try(request_id)
