"""The Data page's *Predict* tab: a file's sentences through a finished run's model, without
adding them to the project; the job runs in the background and its result downloads as JSONL or
CoNLL.

Session-state and widget keys start with ``data_predict_``.
"""

from __future__ import annotations

import re

import streamlit as st
from sqlite_utils import Database

from core.data import io, phases
from core.data.db import get_db
from core.data.runs import list_runs
from core.errors import NerlabError
from core.jobs import launcher
from core.jobs import suggest as jobs
from core.prediction import bulk
from core.ui import md_escape, show_error
from core.ui import run_progress as rp

#: Formats a prediction reads from an upload (text files holding sentences).
UPLOAD_TYPES = ["txt", "conll", "tsv", "bio", "iob", "jsonl", "json"]
#: Prediction jobs listed (newest first).
SHOWN = 5


def _runs(db: Database, project_id: int) -> dict[int, dict]:
    rows = jobs.model_runs(db, project_id)
    latest = jobs.auto_state(db, project_id)["latest"]
    if latest is not None:
        latest["f1"] = {}
        rows.append(latest)
    return {r["id"]: r for r in rows}


def _title(run: dict) -> str:
    score = ", ".join(f"{s} F1 {f:.2f}" for s, f in sorted((run.get("f1") or {}).items()))
    return f"#{run['id']} {run['name']} ({run['kind']}{', ' + score if score else ''})"


def predict_tab(db: Database, project: dict) -> None:
    """Choose a run and a file; start the job; list the recent jobs with their downloads."""
    pid = project["id"]
    st.markdown("Run a trained model (or a baseline) on new text: a text file with one sentence "
                "a line, CoNLL or JSONL. The sentences are **not** added to the project; the "
                "result downloads as JSONL (what the Import tab reads back) or CoNLL. Same as "
                "`nerlab predict RUN FILE --out OUT.jsonl`.")
    runs = _runs(db, pid)
    if not runs:
        st.info("No finished run can predict yet: train one on the Train page, or start a CRF "
                "baseline on the Evaluate page (seconds).")
    else:
        run_id = st.selectbox("Model", list(runs), key="data_predict_run",
                              format_func=lambda i: _title(runs[i]))
        upload = st.file_uploader("File to predict", key="data_predict_upload", type=UPLOAD_TYPES)
        pasted = st.text_area("…or paste sentences, one a line", key="data_predict_paste",
                              height=100)
        if upload is not None:
            payload, name = upload.getvalue(), upload.name
        elif pasted.strip():
            payload, name = pasted.encode("utf-8"), "pasted text"
        else:
            payload, name = None, ""
        fmt = "auto"
        if payload is not None:
            try:
                fmt, why = io.detect(payload, name)
                st.caption(f"{md_escape(name)}: read as **{fmt}** ({md_escape(why)}).")
            except NerlabError as exc:
                st.caption(md_escape(exc))
        if st.button("Predict", key="data_predict_start", type="primary",
                     disabled=payload is None):
            try:
                _fmt, records = io.parse_bytes(payload, None, name=name)
                job, started = jobs.submit_predict(db, run_id, records, name)
            except Exception as exc:  # noqa: BLE001 - a message, never a traceback
                show_error(exc)
            else:
                st.session_state["data_predict_job"] = job
                st.toast(f"Prediction job #{job} started." if started else
                         f"Prediction job #{job} waits for the active run to end.")
                st.rerun()
    _jobs(pid)


def _jobs(project_id: int) -> None:
    rows = [r for r in list_runs(get_db(), project_id) if r["kind"] == bulk.PREDICT][:SHOWN]
    if not rows:
        return
    poll = 2 if any(r["status"] in ("queued", "running") for r in rows) else None

    @st.fragment(run_every=poll)
    def live() -> None:
        fdb = get_db()
        launcher.refresh(fdb)
        fresh = [r for r in list_runs(fdb, project_id) if r["kind"] == bulk.PREDICT][:SHOWN]
        st.markdown("**Recent predictions**")
        for r in fresh:
            _job(fdb, r)
        if poll and not any(r["status"] in ("queued", "running") for r in fresh):
            st.rerun()  # the last job ended: stop polling

    live()


def _job(db: Database, run: dict) -> None:
    cfg = run["config"]
    head = (f"#{run['id']} {md_escape(cfg.get('input_name') or '')} · "
            f"{cfg.get('sentences', '?')} sentence(s) · {rp.status_text(run)}")
    if run["status"] in ("queued", "running"):
        row = phases.current(db, [run["id"]]).get(run["id"])
        st.caption(head + (f" · {md_escape(phases.describe(row, launcher.format_duration))}"
                           if row else ""))
        return
    if run["status"] != "finished":
        reason = f": {run['error_message']}" if run["status"] == "failed" else ""
        st.caption(head + md_escape(reason))
        return
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="center")
    c1.caption(head)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.get("input_name") or "input").strip("_")
    stem = re.sub(r"\.(txt|conll|tsv|bio|iob|jsonl|json)$", "", stem) or "input"
    for col, fmt in ((c2, "jsonl"), (c3, "conll")):
        col.download_button(
            fmt.upper(), key=f"data_predict_dl_{run['id']}_{fmt}",
            data=_deferred(run["id"], fmt), file_name=f"{stem}.predicted.{fmt}",
            mime="application/jsonl" if fmt == "jsonl" else "text/plain")


def _deferred(job_id: int, fmt: str):
    def build() -> bytes:
        return bulk.output_text(job_id, fmt).encode("utf-8")

    return build
