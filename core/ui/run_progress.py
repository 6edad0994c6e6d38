"""A run's life on a page: its phases with progress and ETA, "stopping…" the moment Stop is
clicked, and a banner for the active run that every reload shows.

Session-state and widget keys start with ``run_``.
"""

from __future__ import annotations

import datetime as _dt

import streamlit as st
from sqlite_utils import Database

from core.data import phases
from core.data.db import get_db
from core.data.runs import list_runs
from core.jobs import launcher
from core.ui import md_escape, show_error

STATUS_ICONS = {"queued": "⏳", "running": "🏃", "stopping": "⏹️", "finished": "✅",
                "failed": "❌", "stopped": "⏹️"}
PHASE_ICONS = {"pending": "○", "running": "▶", "done": "✓", "stopped": "■", "failed": "✗",
               "skipped": "–"}
_TOAST_KEY = "run_stop_toast"


def status_of(run: dict) -> str:
    """The status to show: "stopping" for a running run asked to stop."""
    if run["status"] in ("running", "queued") and run.get("stop_requested"):
        return "stopping"
    return run["status"]


def status_text(run: dict) -> str:
    status = status_of(run)
    return f"{STATUS_ICONS.get(status, '')} {status}"


def _describe(row: dict) -> str:
    return phases.describe(row, launcher.format_duration)


def phase_fraction(row: dict) -> float:
    """How far a phase is (0..1; 0 when it has no size)."""
    if not row.get("total"):
        return 0.0
    return max(0.0, min(1.0, (row.get("done") or 0) / row["total"]))


def progress_text(run: dict, rows: list[dict]) -> str | None:
    """``Phase 3 of 8 · Train · 2 / 4 steps · ETA 20 s`` for the running phase, or None."""
    for i, row in enumerate(rows, 1):
        if row["status"] == "running":
            return f"Phase {i} of {len(rows)} · {_describe(row)}"
    return None


def phases_block(db: Database, run: dict) -> bool:
    """The run's phases: a progress bar for the one running, then the list with times.
    Returns False when the run recorded no phases (a run from before they existed)."""
    rows = phases.list_phases(db, run["id"])
    if not rows:
        return False
    if run["status"] in ("running", "queued"):
        current = next((r for r in rows if r["status"] == "running"), None)
        if current is not None:
            st.progress(phase_fraction(current), text=md_escape(progress_text(run, rows)))
        elif run["status"] == "queued":
            st.progress(0.0, text="Waiting to start…")
        else:
            st.progress(0.0, text="Starting the worker…")
    lines = []
    for row in rows:
        icon = PHASE_ICONS.get(row["status"], "·")
        text = md_escape(_describe(row))
        if row["status"] == "running":
            text = f"**{text}**"
        elif row["status"] in ("pending", "skipped"):
            text = f":gray[{text}]"
        suffix = f" ({row['status']})" if row["status"] in ("stopped", "failed", "skipped") else ""
        lines.append(f"{icon} {text}{suffix}")
    st.markdown("  \n".join(lines))
    return True


def _ago(stamp: str | None) -> str:
    if not stamp:
        return ""
    then = _dt.datetime.fromisoformat(stamp)
    seconds = (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()
    return f" {launcher.format_duration(max(0.0, seconds))} ago"


def stopping_note(db: Database, run: dict) -> None:
    """What happens now that a stop was asked for (shown the moment Stop is clicked)."""
    current = phases.current(db, [run["id"]]).get(run["id"])
    st.warning(f"**Stopping…** (asked{_ago(run.get('stop_requested_at'))}): "
               + launcher.stop_outcome(current), icon="⏹️")


def _stop(run_id: int) -> None:
    """The Stop button's callback: runs before the rerun, so the page shows "stopping" at once."""
    st.session_state[_TOAST_KEY] = launcher.request_stop(get_db(), run_id)


def stop_button(run: dict, key: str) -> None:
    """Stop for a queued or running run; "stopping…" instead once asked."""
    message = st.session_state.pop(_TOAST_KEY, None)
    if message:
        st.toast(message)
    if run["status"] not in ("queued", "running") or run.get("stop_requested"):
        return
    st.button("Stop this run", key=key, type="secondary", on_click=_stop, args=(run["id"],),
              help="While the model loads or the run predicts, it ends at once (keeping what it "
              "stored); while it trains, dropping the step in progress and saving the adapter as "
              "the last whole step left it.")


def active_banner(db: Database, project_id: int, hint: str = "") -> list[dict]:
    """A line per queued or running run of the project, live, above everything else: a reload
    during training shows at once that a run is active and how far it is. Returns those runs."""
    active = [r for r in list_runs(db, project_id) if r["status"] in ("queued", "running")]
    if not active:
        return []

    @st.fragment(run_every=2)
    def _banner() -> None:
        try:
            _banner_lines(project_id)
        except Exception as exc:  # noqa: BLE001 - a busy database must not break the page
            show_error(exc)

    with st.container(border=True, key="run_banner"):
        _banner()
        if hint:
            st.caption(hint)
    return active


def _banner_lines(project_id: int) -> None:
    """The banner's lines: each queued or running run, with its phase."""
    fresh = get_db()
    rows = [r for r in list_runs(fresh, project_id) if r["status"] in ("queued", "running")]
    now_doing = phases.current(fresh, [r["id"] for r in rows])
    for run in rows:
        head = (f"{STATUS_ICONS.get(status_of(run), '')} **Run #{run['id']} "
                f"{md_escape(run['name'])}** is {status_of(run)}")
        current = now_doing.get(run["id"])
        if current is not None:
            st.progress(phase_fraction(current), text=f"{head} · {md_escape(_describe(current))}")
        else:
            st.caption(head + (" · waiting for the active run to end" if run["status"] == "queued"
                               else " · starting"))
