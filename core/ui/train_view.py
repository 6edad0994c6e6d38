"""Widgets of the Train page: the settings form generated from the run config, pre-flight
checks, and the live view of a run (progress, curves, log, stop, merge).

Session-state and widget keys start with ``train_``. Settings live under ``train_f_<setting>``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import streamlit as st
from sqlite_utils import Database

from core import config
from core.data import phases
from core.data.db import get_db
from core.data.runs import plain_text, read_log, run_metrics
from core.errors import ConfigError
from core.jobs import launcher
from core.models import merging
from core.training import estimate
from core.training.checks import CARVE_DEV, DEV_SEED, DEV_SHARE, MEASURE, MEASURING, carve_dev_fix
from core.training.runconfig import (
    DEFAULT_TARGETS,
    FIELDS,
    METHOD_LABELS,
    PRESETS,
    RunConfig,
    get_preset,
)
from core.ui import charts, md_escape
from core.ui import run_progress as rp

SOURCE_BUNDLED = "Bundled SmolLM2-135M-Instruct"
SOURCE_HUB = "Hugging Face id"
SOURCE_FOLDER = "Local folder"
MODEL_SOURCES = (SOURCE_BUNDLED, SOURCE_HUB, SOURCE_FOLDER)
#: Settings shown in the form (the rest of the config comes from outside it).
FORM_SETTINGS = (
    ("Adapter", ("method", "rank", "alpha", "dropout", "loraplus_ratio", "targets")),
    ("Schedule", ("epochs", "max_steps", "lr", "warmup_ratio", "weight_decay", "max_grad_norm")),
    ("Batches and memory", ("batch_size", "grad_accum", "max_length", "gradient_checkpointing",
                            "precision", "gpus", "seed")),
    ("After training", ("dev_loss_sentences", "eval_after", "eval_limit", "constrained")),
)
_LABELS = {
    "method": "Method", "rank": "Rank r", "alpha": "Alpha", "dropout": "LoRA dropout",
    "loraplus_ratio": "LoRA+ ratio (B/A)", "targets": "Target modules", "epochs": "Epochs",
    "max_steps": "Max steps (0 = epochs)", "lr": "Learning rate", "warmup_ratio": "Warm-up ratio",
    "weight_decay": "Weight decay", "max_grad_norm": "Max grad norm", "batch_size": "Batch size",
    "grad_accum": "Gradient accumulation", "max_length": "Max length (tokens)",
    "gradient_checkpointing": "Gradient checkpointing", "precision": "Precision", "seed": "Seed",
    "gpus": "GPUs (one process each)",
    "dev_loss_sentences": "Dev sentences for the dev loss", "eval_after": "Predict and score dev/test",
    "eval_limit": "Max sentences per split to score (0 = all)",
    "constrained": "Constrained decoding",
}


def key(name: str) -> str:
    """The session-state key of a setting's widget."""
    return f"train_f_{name}"


# ---------------------------------------------------------------------------------------------
# Settings


def load_preset(name: str) -> None:
    """Put a preset's values into the form's widgets."""
    cfg = get_preset(name).config()
    for setting, value in cfg.flat().items():
        if setting in ("base_model", "template", "preset"):
            continue
        st.session_state[key(setting)] = list(value) if isinstance(value, tuple) else value
    st.session_state["train_loaded_preset"] = name


def _on_preset_change() -> None:
    load_preset(st.session_state["train_preset"])


def preset_picker(default: str) -> str:
    """The preset select box; choosing one loads its values into the form."""
    if "train_preset" not in st.session_state:
        st.session_state["train_preset"] = default
    if st.session_state.get("train_loaded_preset") is None:
        load_preset(st.session_state["train_preset"])
    name = st.selectbox("Preset", list(PRESETS), key="train_preset", on_change=_on_preset_change,
                        help="Starting points from the papers; every value stays adjustable below.")
    st.caption(PRESETS[name].description)
    return name


def base_model_picker() -> str:
    """Bundled model, Hugging Face id or local folder; returns the base-model string."""
    source = st.radio("Base model", MODEL_SOURCES, key="train_model_source", horizontal=True,
                      help=FIELDS["base_model"][1].metadata["help"])
    if source == SOURCE_HUB:
        return st.text_input("Hugging Face model id", key="train_model_id",
                             placeholder="Qwen/Qwen2.5-7B-Instruct").strip()
    if source == SOURCE_FOLDER:
        return st.text_input("Model folder (with config.json)", key="train_model_path",
                             placeholder="/models/Meta-Llama-3-8B-Instruct").strip()
    return config.BUNDLED_MODEL


def _widget(name: str, container: Any) -> None:
    section, f = FIELDS[name]
    meta = f.metadata
    label = _LABELS.get(name, name)
    k = key(name)
    help_text = meta.get("help")
    kind = str(f.type)
    if name == "method":
        container.selectbox(label, meta["options"], key=k, help=help_text,
                            format_func=lambda m: METHOD_LABELS.get(m, m))
    elif "options" in meta:
        container.selectbox(label, meta["options"], key=k, help=help_text)
    elif "bool" in kind:
        container.checkbox(label, key=k, help=help_text)
    elif name == "targets":
        current = list(st.session_state.get(k) or DEFAULT_TARGETS)
        options = list(dict.fromkeys(list(DEFAULT_TARGETS) + current))
        container.multiselect(label, options, key=k, help=help_text + " Type to add another.",
                              accept_new_options=True)
    elif "int" in kind:
        container.number_input(label, min_value=int(meta.get("min", 0)),
                               max_value=int(meta.get("max", 10**9)), step=int(meta.get("step", 1)),
                               key=k, help=help_text)
    else:
        kwargs: dict[str, Any] = {"min_value": float(meta.get("min", 0.0)),
                                  "max_value": float(meta.get("max", 1e9)), "key": k,
                                  "help": help_text}
        if "format" in meta:
            kwargs["format"] = meta["format"]
            kwargs["step"] = 1e-5
        else:
            kwargs["step"] = float(meta.get("step", 0.01))
        container.number_input(label, **kwargs)


def settings_form_fields() -> None:
    """The settings, grouped, generated from the dataclass fields (call inside ``st.form``)."""
    for title, names in FORM_SETTINGS:
        st.markdown(f"**{title}**")
        cols = st.columns(3)
        for i, name in enumerate(names):
            _widget(name, cols[i % 3])


def config_from_state(base_model: str, template: str, preset: str) -> RunConfig:
    """The run config from the form's values (raises ConfigError naming a bad value)."""
    values: dict[str, Any] = {}
    for name, (_section, f) in FIELDS.items():
        if name in ("base_model", "template", "preset"):
            continue
        if key(name) in st.session_state:
            value = st.session_state[key(name)]
            if name == "targets":
                value = tuple(value)
            elif "int" in str(f.type) and "bool" not in str(f.type):
                value = int(value)
            elif "float" in str(f.type):
                value = float(value)
            values[name] = value
    if not base_model:
        raise ConfigError("Give a Hugging Face model id or a local model folder.")
    return RunConfig(base_model=base_model, template=template, preset=preset).with_overrides(**values)


def show_issues(issues: list, db: Database | None = None, project_id: int | None = None) -> None:
    """Pre-flight findings: errors red, warnings amber, the rest as notes. A finding the page
    can fix in one click (no dev split) gets its button (inside the settings form)."""
    for issue in issues:
        text = f"**{issue.title}.** {issue.msg}"
        if issue.level == "error":
            st.error(text, icon="🛑")
        elif issue.level == "warning":
            st.warning(text, icon="⚠️")
        else:
            st.caption(f"✓ {issue.title}: {issue.msg}")
        if issue.action == CARVE_DEV and db is not None and project_id is not None:
            st.form_submit_button(
                f"Set aside {DEV_SHARE:.0%} of the training sentences as dev", key="train_carve_dev",
                on_click=_carve_dev, args=(project_id,),
                help=f"Moves a seeded {DEV_SHARE:.0%} of the labelled training sentences to dev "
                f"(seed {DEV_SEED}; the same as `{issue.command}`). Test sentences are not touched.",
            )
        if issue.action == MEASURE and db is not None and project_id is not None:
            st.form_submit_button(
                "Time one step (about a minute)", key="train_measure", on_click=_measure,
                args=(project_id,),
                help="Loads the model, trains two steps and predicts a few dev sentences in a "
                f"background process, then estimates the whole run (the same as `{issue.command}`).")
        if issue.action == MEASURING:
            _poll_measurement()
    outcome = st.session_state.pop("train_carved", None)
    if outcome:
        (st.success if outcome[0] == "ok" else st.error)(outcome[1])


def current_config() -> RunConfig:
    """The config the New run form holds now (base model, template and preset included)."""
    state = st.session_state
    source = state.get("train_model_source", SOURCE_BUNDLED)
    base = {SOURCE_HUB: state.get("train_model_id", ""), SOURCE_FOLDER: state.get("train_model_path", "")
            }.get(source, config.BUNDLED_MODEL)
    return config_from_state((base or "").strip(), state.get("train_template", "default"),
                             state.get("train_preset", ""))


def _measure(project_id: int) -> None:
    try:
        estimate.start(get_db(), project_id, current_config())
    except Exception as exc:  # noqa: BLE001 - shown to the user
        st.session_state["train_carved"] = ("error", f"Could not time a step: {exc}")


@st.fragment(run_every=3)
def _poll_measurement() -> None:
    """While a step is being timed: rerun the page once it is done (or failed)."""
    st.caption("Timing one step in the background… the estimate appears here when it is done.")
    project_id = st.session_state.get("project_id")
    try:
        busy = project_id is not None and estimate.measuring(get_db(), project_id, current_config())
    except Exception:  # noqa: BLE001 - the settings changed to something invalid: stop polling
        busy = False
    if not busy:
        st.rerun()


def _carve_dev(project_id: int) -> None:
    try:
        moved = carve_dev_fix(get_db(), project_id)
        st.session_state["train_carved"] = ("ok", f"{moved} training sentence(s) moved to dev; "
                                                  "the test split is as it was.")
    except Exception as exc:  # noqa: BLE001 - shown to the user
        st.session_state["train_carved"] = ("error", str(exc))


# ---------------------------------------------------------------------------------------------
# Runs


def run_label(run: dict) -> str:
    """``#12 train-12 · loraplus`` for select boxes. No status: a select box keeps showing the
    label it had when the option was picked, so a status there goes stale while the run moves
    on (the heading under it and the table above say the status)."""
    cfg = run["config"] if isinstance(run.get("config"), dict) else {}
    return f"#{run['id']} {plain_text(run['name'], 60)} · {cfg.get('method') or run['kind']}"


def runs_table(runs: list[dict], now_doing: dict[int, dict] | None = None) -> list[dict]:
    """Rows for the run list (plain text: a data frame renders no Markdown). ``now_doing``:
    the running phase of each active run (:func:`core.data.phases.current`)."""
    rows = []
    for r in runs:
        m = r.get("last_metrics") or {}
        progress = ""
        current = (now_doing or {}).get(r["id"])
        if current is not None:
            progress = phases.describe(current, launcher.format_duration)
        elif m.get("total_steps") and r["kind"] == "train":
            progress = f"{m['step']}/{m['total_steps']}"
        cfg = r["config"] if isinstance(r["config"], dict) else {}
        loss = r.get("last_loss")
        rows.append({
            "id": r["id"],
            "run": plain_text(r["name"], 60),
            "kind": r["kind"],
            "status": rp.status_text(r),
            "method": cfg.get("method", ""),
            "progress": progress,
            "loss": f"{loss:.4f}" if loss is not None else "—",
            "created": (r["created_at"] or "")[:16].replace("T", " "),
            "problem": (f"{r['error_kind']}: {r['error_message']}" if r["status"] == "failed" else ""),
        })
    return rows


def progress_block(db: Database, run: dict, metrics: list[dict]) -> None:
    """Every phase with its progress and ETA (or, for a run from before phases were recorded,
    the training steps), and the latest training figures."""
    steps = [m for m in metrics if m.get("loss") is not None]
    last = steps[-1] if steps else None
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    if not rp.phases_block(db, run):
        if last and last.get("total_steps"):
            frac = min(1.0, last["step"] / last["total_steps"])
            eta = ("" if run["status"] != "running"
                   else f" · ETA {launcher.format_duration(last.get('eta_s'))}")
            st.progress(frac, text=f"Step {last['step']} / {last['total_steps']}{eta}")
        elif run["status"] == "running":
            st.progress(0.0, text="Loading the model and preparing the data…")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Train loss", f"{last['loss']:.4f}" if last else "–")
    c2.metric("Dev loss", f"{evals[-1]['eval_loss']:.4f}" if evals else "–")
    c3.metric("Tokens / s", f"{last['tokens_per_s']:.0f}" if last and last.get("tokens_per_s") else "–")
    gpu = last.get("gpu_mem_mb") if last else None
    c4.metric("Peak GPU memory", f"{gpu / 1024:.1f} GB" if gpu else "– (CPU)")


def run_details(db: Database, run: dict, project: dict) -> None:
    """Everything about one run: progress, curves, problem, stop, CLI, adapter, log."""
    metrics = run_metrics(db, run["id"])
    status = run["status"]
    st.markdown(f"#### {rp.STATUS_ICONS.get(rp.status_of(run), '')} Run #{run['id']} · "
                f"{md_escape(run['name'])} · {rp.status_of(run)}")
    cfg = run["config"]
    if run["kind"] == "train":
        try:
            st.caption(RunConfig.from_dict(cfg).summary() + f" · base model {run['base_model']}")
        except ConfigError:
            pass
    if status == "queued":
        busy = launcher.active_run(db)
        st.info(f"Waiting for run #{busy['id']} to end." if busy and busy["id"] != run["id"]
                else "Starting…")
    if status == "failed":
        kinds = {"oom": "Out of memory", "data": "Bad data", "model": "Model not loadable",
                 "other": "Error"}
        st.error(f"**{kinds.get(run['error_kind'], 'Error')}.** {md_escape(run['error_message'])}")
    if status == "stopped":
        kept = ("the adapter saved last is kept" if run["kind"] == "train" else "its model is kept")
        st.warning(f"Stopped on request; {kept}." if run["artifact_path"]
                   else "Stopped before an adapter was saved." if run["kind"] == "train"
                   else "Stopped on request.")
        if run.get("error_message"):
            st.caption(md_escape(run["error_message"]))
    if status in ("queued", "running") and run.get("stop_requested"):
        rp.stopping_note(db, run)
    if run["kind"] == "train":
        progress_block(db, run, metrics)
        if metrics:
            st.plotly_chart(charts.loss_curves(metrics), key=f"train_loss_chart_{run['id']}",
                            width="stretch")
            if any(m.get("tokens_per_s") for m in metrics):
                st.plotly_chart(charts.throughput_chart(metrics), key=f"train_tps_chart_{run['id']}",
                                width="stretch")
    else:
        rp.phases_block(db, run)
    rp.stop_button(run, key=f"train_stop_{run['id']}")
    if run["kind"] == "train":
        st.markdown("**The same run from the command line**")
        try:
            st.code(launcher.cli_command(run, project["name"]) + " --wait", language="bash")
        except ConfigError:
            pass
    if run["artifact_path"]:
        adapter_block(run)
    if status == "finished" and run["kind"] == "train":
        st.markdown(f"📊 [See this run's scores on the Evaluate page]"
                    f"(Evaluate?run={run['id']}&project={project['id']})")
    st.markdown("**Log**")
    log = read_log(run["id"], 80) or run.get("log_tail") or "(no log yet)"
    st.code(log, language=None, height=300)


def adapter_block(run: dict) -> None:
    """Where the adapter is, and merging it into the base model (in the dtype chosen)."""
    st.markdown(f"**Adapter** (PEFT format, with tokenizer, config and template version): "
                f"`{run['artifact_path']}`")
    state = launcher.merge_state(run["id"])
    merged = config.runs_dir() / str(run["id"]) / "merged"
    if state == "done":
        info = merging.merged_info(merged) or {}
        st.success(f"Merged model saved: `{merged}` ({merging.short_name(info.get('dtype', ''))}, "
                   f"{merging.format_bytes(info.get('bytes', 0))}; load it with `from_pretrained`).")
    elif state == "running":
        st.info("Merging the adapter into the base model…")
    elif state == "failed":
        log = (config.runs_dir() / str(run["id"]) / "merge.log").read_text(errors="replace")
        st.error("Merging failed: " + (log.strip().splitlines() or ["see merge.log"])[-1])
    try:
        meta = json.loads((Path(run["artifact_path"]) / "nerlab.json").read_text())
    except (OSError, ValueError):
        meta = {}
    options = dict(merging.merge_options(meta, run.get("base_model") or ""))
    dtype = None
    if state != "running":
        dtype = st.selectbox("Merged weights", list(options), format_func=options.get,
                             key=f"train_merge_dtype_{run['id']}",
                             help="Merged in float32 and cast at the end. Expected file size = "
                             "parameters × 2 bytes (bf16, fp16) or × 4 (fp32).")
    if state != "running" and st.button(
        "Merge adapter into the base model" if state != "done" else "Merge again",
        key=f"train_merge_{run['id']}",
        help="Saves a standalone model (base + adapter) next to the adapter; needs the base "
        "model's size in RAM (~16 GB for an 8B model in bf16) and a few minutes.",
    ):
        try:
            launcher.launch_merge(run["id"], dtype)
            st.toast("Merging started.")
        except Exception as exc:  # noqa: BLE001 - shown to the user
            st.error(str(exc))
    command = ["nerlab", "merge", str(run["id"])] + (["--dtype", dtype] if dtype else [])
    st.caption("Or from a shell: " + shlex.join(command) + " · for llama.cpp / Ollama: "
               + shlex.join(["nerlab", "export-model", str(run["id"]), "--format", "gguf"]))


def config_rows(cfg: dict) -> list[dict]:
    """The stored config as setting/value rows."""
    try:
        flat = RunConfig.from_dict(cfg).flat()
    except ConfigError:
        return [{"setting": k, "value": str(v)} for k, v in cfg.items()]
    return [{"setting": k, "value": ", ".join(v) if isinstance(v, tuple) else str(v)}
            for k, v in flat.items()]

