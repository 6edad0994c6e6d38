"""Drawing helpers shared by the Evaluate and Compare pages (Streamlit lives here, not in pages'
logic): highlighted sentences, the run picker, and the headline scores."""

from __future__ import annotations

import html
from collections.abc import Sequence

import streamlit as st

from core import config
from core.data import phases
from core.data.db import get_db
from core.data.runs import list_runs
from core.data.spans import Span
from core.evaluation import scoring
from core.jobs import launcher
from core.prediction import baselines
from core.prediction.encoder import BUNDLED_ENCODER, EncoderSettings, setting_help
from core.ui import md_escape, show_error
from core.ui import run_progress as rp

_FALLBACK = "#dddddd"


def colours(labels: Sequence[dict]) -> dict[str, str]:
    """Entity type name → its colour (from the project's label rows)."""
    return {row["name"]: row["color"] for row in labels}


def spans_html(text: str, spans: Sequence[Span], palette: dict[str, str],
               marks: dict[tuple[int, int, str], str] | None = None) -> str:
    """The sentence as HTML with each span highlighted in its type's colour and tagged.

    Args:
        marks: optional style per span: ``"bad"`` (red dashed outline) and/or ``"focus"``
            (a dark frame: the span an error is about).
    """
    out, pos = [], 0
    for s in sorted(spans):
        if s.start < pos:
            continue
        out.append(html.escape(text[pos:s.start]))
        colour = palette.get(s.label, _FALLBACK)
        style = f"background:{colour};padding:1px 3px;border-radius:4px;"
        mark = (marks or {}).get((s.start, s.end, s.label), "")
        if "bad" in mark:
            style += "outline:2px dashed #d62828;"
        if "focus" in mark:
            style += "box-shadow:0 0 0 3px #1d3557;font-weight:600;"
        out.append(
            f'<span style="{style}">{html.escape(text[s.start:s.end])}'
            f'<sup style="font-size:0.65em;margin-left:3px;opacity:0.75">{html.escape(s.label)}'
            "</sup></span>"
        )
        pos = s.end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def gold_pred_html(text: str, gold: Sequence[Span], rows: Sequence[tuple[str, Sequence[Span]]],
                   palette: dict[str, str], focus: Sequence[dict | None] = ()) -> str:
    """Gold on the first line, then one line per prediction; wrong spans get a dashed outline,
    and the spans in ``focus`` (dicts with start, end, label) a dark frame."""
    gold_set = set(gold)
    focused = {(f["start"], f["end"], f["label"]) for f in focus if f}
    gold_marks = {k: "focus" for k in focused}
    lines = [f'<div style="margin:2px 0"><b style="display:inline-block;width:7.5em">gold</b>'
             f"{spans_html(text, gold, palette, gold_marks)}</div>"]
    for name, spans in rows:
        marks = {}
        for s in spans:
            key = (s.start, s.end, s.label)
            marks[key] = ("ok" if s in gold_set else "bad") + (" focus" if key in focused else "")
        lines.append(
            f'<div style="margin:2px 0"><b style="display:inline-block;width:7.5em">'
            f"{html.escape(name)}</b>{spans_html(text, spans, palette, marks)}</div>"
        )
    return "".join(lines)


def show_html(markup: str) -> None:
    st.markdown(f'<div style="line-height:1.9">{markup}</div>', unsafe_allow_html=True)


def headline(metrics: dict, kind: str) -> None:
    """Micro/macro F1 with the bootstrap interval, P/R, and for runs that write answers as text
    (an LLM) how many could not be read, as st.metric."""
    ci = metrics.get("ci") or {}
    interval = (f"95% CI {ci['f1_low']:.3f}–{ci['f1_high']:.3f}"
                if ci.get("f1_low") is not None else "no interval")
    cols = st.columns(6)
    cols[0].metric("Micro-F1", f"{metrics['micro']['f1']:.3f}", help=(
        f"{interval} (bootstrap over sentences, {ci.get('samples', 0)} resamples). Every entity "
        "counts once, so frequent types dominate."))
    cols[1].metric("Macro-F1", f"{metrics['macro']['f1']:.3f}",
                   help="Mean of the per-type F1: rare types count as much as frequent ones.")
    cols[2].metric("Weighted-F1", f"{metrics['weighted']['f1']:.3f}",
                   help="Per-type F1 weighted by each type's number of gold entities.")
    cols[3].metric("Precision", f"{metrics['micro']['precision']:.3f}",
                   help="Share of predicted entities that are right (type and boundaries).")
    cols[4].metric("Recall", f"{metrics['micro']['recall']:.3f}",
                   help="Share of gold entities found (type and boundaries).")
    if baselines.writes_answers(kind):
        p = metrics["parse"]
        loose = metrics.get("loose") or {}
        cols[5].metric("Unparsable", f"{p['unparsable']} / {metrics['n_sentences']}", help=(
            f"Answers that could not be read at all ({p['partial']} more were read in part). "
            f"Entities not in the sentence: {metrics['hallucinated']}; unknown types: "
            f"{metrics['unknown_types']}; not copied exactly: "
            + (", ".join(f"{k} {n}" for k, n in loose.items()) or "none") + "."))
    else:
        cols[5].metric("Sentences", metrics["n_sentences"],
                       help="This model tags words directly: there is no text answer to read.")
    st.caption(f"{interval} · {metrics['n_sentences']} sentences · {metrics['n_gold']} gold and "
               f"{metrics['n_pred']} predicted entities · {metrics['mode']} scoring")


def per_class_frame(metrics: dict):
    """Per-type table (precision, recall, F1, support, predicted) for st.dataframe."""
    import pandas as pd

    rows = [{"type": name, **{k: row[k] for k in ("precision", "recall", "f1", "support", "predicted")}}
            for name, row in metrics["per_class"].items()]
    for avg in ("micro", "macro", "weighted"):
        rows.append({"type": f"{avg} avg", **{k: metrics[avg][k] for k in ("precision", "recall", "f1")},
                     "support": metrics[avg]["support"], "predicted": metrics["n_pred"]})
    return pd.DataFrame(rows)


def label_link(sentence_id: int, project_id: int) -> str:
    """Markdown link to the Label page on this sentence (it reads ``?sentence=`` and ``?project=``)."""
    return f"[✏️ Fix gold label](Label?sentence={int(sentence_id)}&project={int(project_id)})"


def error_label(kind: str) -> str:
    return scoring.ERROR_KIND_NAMES.get(kind, kind)


def baseline_form(db, project: dict) -> None:
    """An expander to start a baseline run (zero-shot, few-shot, CRF, encoder) like any other
    run."""
    with st.expander("Start a baseline run", expanded=False):
        st.caption(
            "Baselines are what fine-tuning has to beat: the base model without examples "
            "(zero-shot), with a few examples in the prompt (few-shot), a classic CRF and a small "
            "encoder (MiniLM) fine-tuned to tag words, both trained on the same labelled training "
            "sentences. They run in the background like training runs (one run at a time; the "
            "CRF starts at once) and are scored on dev and test."
        )
        # Outside the form: the form's fields depend on the kind.
        kind = st.selectbox("Kind", baselines.KINDS, format_func=baselines.KIND_TITLES.get,
                            key="eval_bl_kind")
        with st.form("eval_baseline_form"):
            cfg: dict = {}
            if kind == "few-shot":
                c1, c2 = st.columns(2)
                cfg["shots"] = int(c1.number_input("Examples per prompt", 1, 20, 5,
                                                   key="eval_bl_shots"))
                cfg["selection"] = c2.selectbox(
                    "Which examples", ("fixed", "retrieved"), key="eval_bl_selection",
                    help="fixed: the same short examples covering every type for each sentence; "
                    "retrieved: the most similar labelled training sentences (the template's "
                    "retrieval).")
            if kind == "encoder":
                encoder_fields(cfg)
            limit = st.number_input(
                "At most N sentences per split (0 = all)", 0, 100_000, 0, key="eval_bl_limit",
                help=LIMIT_HELP[kind])
            if limit:
                cfg["limit"] = int(limit)
            if kind in baselines.PROMPTED:
                cfg["base_model"] = st.text_input("Base model", config.BUNDLED_MODEL,
                                                  key="eval_bl_base").strip()
                cfg["constrained"] = st.checkbox(
                    "Constrained decoding", value=True, key="eval_bl_constrained",
                    help="Every answer well-formed, every entity whole words of its sentence. "
                    "Off: free generation, to compare.")
            submitted = st.form_submit_button("Start baseline", type="primary")
        if submitted:
            try:
                run_id, started = launcher.submit_baseline(db, project["id"], kind, cfg)
                st.success(f"Run #{run_id} ({kind}) " + ("started." if started else
                           "queued: it starts when the active run ends."))
            except Exception as exc:  # noqa: BLE001 - shown to the user
                show_error(exc)
    active_runs(db, project)


LIMIT_HELP = {
    "zero-shot": "A quick look on CPU: the bundled model answers about one sentence a second.",
    "few-shot": "A quick look on CPU: the bundled model answers about one sentence a second.",
    "crf": "The CRF predicts thousands a second.",
    "encoder": "The encoder predicts about 50 sentences a second on 2 CPU cores; its training "
               "takes the time.",
}


def encoder_fields(cfg: dict) -> None:
    """The encoder's settings a person may want to change (the others keep their defaults,
    chosen on dev data)."""
    defaults = EncoderSettings()
    c1, c2, c3 = st.columns(3)
    cfg["epochs"] = int(c1.number_input("Epochs", 1, 100, defaults.epochs, key="eval_bl_epochs",
                                        help=setting_help("epochs")))
    cfg["lr"] = float(c2.number_input("Learning rate", 1e-6, 1e-2, defaults.lr, step=1e-5,
                                      format="%.0e", key="eval_bl_lr", help=setting_help("lr")))
    cfg["batch_size"] = int(c3.number_input("Batch size", 1, 256, defaults.batch_size,
                                            key="eval_bl_batch", help=setting_help("batch_size")))
    st.caption(f"Fine-tunes {BUNDLED_ENCODER} to tag each word: about 4 minutes for 300 "
               "sentences and 10 epochs on 2 CPU cores.")


def active_runs(db, project: dict) -> None:
    """Progress of the project's queued and running runs, refreshed every few seconds."""
    def active() -> list[dict]:
        return [r for r in list_runs(db, project["id"]) if r["status"] in ("queued", "running")]

    if not active():
        return

    @st.fragment(run_every="3s")
    def _poll() -> None:
        fresh = get_db()
        launcher.refresh(fresh)
        rows = [r for r in list_runs(fresh, project["id"]) if r["status"] in ("queued", "running")]
        if not rows:
            st.rerun()
        now_doing = phases.current(fresh, [r["id"] for r in rows])
        for r in rows:
            text = f"#{r['id']} {md_escape(r['name'])} ({r['kind']}): {rp.status_of(r)}"
            current = now_doing.get(r["id"])
            if current is not None:
                st.progress(rp.phase_fraction(current),
                            text=f"{text} · {md_escape(phases.describe(current, launcher.format_duration))}")
            else:
                st.caption(text)

    _poll()
