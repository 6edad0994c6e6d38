"""Train: pick a base model and a preset, adjust, check, start — then watch the run live."""

import pandas as pd
import streamlit as st

from core import config
from core.data import phases
from core.data.db import get_db
from core.data.runs import list_runs
from core.errors import ConfigError
from core.jobs import launcher
from core.models import loader
from core.prompts.store import list_templates
from core.training.checks import check_run
from core.training.runconfig import default_preset_for
from core.ui import init_page, show_error
from core.ui import run_progress as rp
from core.ui import train_view as tv

db, project = init_page("Train", icon="🏋️")
st.title("Train")
if project is None:
    st.stop()
pid = project["id"]


@st.cache_resource(show_spinner="Looking for a GPU…")
def device():
    """What runs here (:class:`core.models.loader.DeviceInfo`), looked up once per server process."""

    return loader.device_info()


machine = device()
cuda = machine.device == "cuda"
launcher.refresh(db)
runs = list_runs(db, pid)
active = rp.active_banner(db, pid, hint="Its phases, the log and Stop are on the **Runs** tab. "
                          "It goes on if you close the browser.")

# A page opened (or reloaded) while a run is active opens on that run; after that the tab is the
# user's choice (it stays on Runs when the run ends).
if active and "train_tabs" not in st.session_state:
    st.session_state["train_tabs"] = "Runs"
tab_new, tab_runs = st.tabs(["New run", "Runs"], key="train_tabs", on_change="rerun")

with tab_new:
    st.caption(f"Runs on: {machine.describe()}. A run is a background process: close the browser and it "
               "goes on; one run at a time, the others wait in a queue.")
    base_model = tv.base_model_picker()
    c1, c2 = st.columns([2, 1])
    with c1:
        preset = tv.preset_picker(default_preset_for(base_model, cuda))
    with c2:
        names = [t["name"] for t in list_templates(db, pid)] or ["default"]
        template = st.selectbox("Template", names, key="train_template",
                                help="The instruction template (its latest version is recorded "
                                "with the run). Edit it on the Template page.")
    with st.form("train_form", border=True):
        tv.settings_form_fields()
        run_name = st.text_input("Run name (optional)", key="train_run_name",
                                 placeholder="e.g. loraplus-r16-5e-4")
        try:
            cfg = tv.config_from_state(base_model, template, preset)
            issues = check_run(db, pid, cfg, cuda=cuda, bf16_supported=machine.bf16,
                               gpu_count=machine.count)
            cfg_error = None
        except (ConfigError, Exception) as exc:  # noqa: BLE001 - shown to the user
            cfg, issues, cfg_error = None, [], exc
        blocked = cfg_error is not None or any(i.level == "error" for i in issues)
        st.markdown("**Pre-flight checks**")
        if cfg_error is not None:
            show_error(cfg_error)
        tv.show_issues(issues, db, pid)
        submitted = st.form_submit_button(
            "Start training", type="primary", key="train_start", disabled=blocked,
            help="Checks the settings again and starts the run in the background."
            + (" Fix the errors above first." if blocked else ""),
        )
    if submitted:
        # The form's values arrive with this rerun: check them again before starting.
        try:
            cfg = tv.config_from_state(base_model, template, preset)
            issues = check_run(db, pid, cfg, cuda=cuda, bf16_supported=machine.bf16,
                               gpu_count=machine.count)
            errors = [i for i in issues if i.level == "error"]
            if errors:
                st.error("Not started: " + "; ".join(f"{i.title}: {i.msg}" for i in errors))
            else:
                run_id, started = launcher.submit_training(db, pid, cfg, name=run_name.strip())
                st.session_state["train_run"] = run_id
                if started:
                    st.success(f"Run #{run_id} started. Follow it on the Runs tab.")
                else:
                    st.info(f"Run #{run_id} is queued: it starts when the active run ends.")
                runs = list_runs(db, pid)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            show_error(exc)

with tab_runs:
    if not runs:
        st.info("No runs yet: start one on the New run tab.")
    else:
        ids = [r["id"] for r in runs]
        if st.session_state.get("train_run") not in ids:
            st.session_state["train_run"] = (active[0] if active else runs[0])["id"]
        poll = 2 if any(r["status"] in ("queued", "running") for r in runs) else None

        @st.fragment(run_every=poll)
        def live() -> None:
            """Re-read the runs every few seconds while one is active (not a loop)."""

            fdb = get_db()
            launcher.refresh(fdb)
            rows = list_runs(fdb, pid)
            by_id = {r["id"]: r for r in rows}
            now_doing = phases.current(fdb, [r["id"] for r in rows])
            st.dataframe(pd.DataFrame(tv.runs_table(rows, now_doing)), hide_index=True,
                         key="train_runs_df", width="stretch")
            run_id = st.selectbox("Run", list(by_id), key="train_run",
                                  format_func=lambda i: tv.run_label(by_id[i]))
            run = by_id[run_id]
            tv.run_details(fdb, run, project)
            with st.expander("Settings of this run"):
                st.dataframe(pd.DataFrame(tv.config_rows(run["config"])), hide_index=True)
            was_active = st.session_state.get("train_was_active", False)
            now_active = any(r["status"] in ("queued", "running") for r in rows)
            st.session_state["train_was_active"] = now_active
            if was_active and not now_active:
                st.rerun()  # a run ended: redraw the page (stop polling)
            elif now_active and poll is None:
                st.rerun()  # a run started from elsewhere: start polling

        live()

st.caption(f"Data directory: {config.home()}")
