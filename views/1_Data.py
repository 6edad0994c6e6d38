"""Data: the project's sentences, entity types, import and export, and train/dev/test splits."""

import streamlit as st

from core import config
from core.data import io, labeling, projects
from core.errors import NerlabError
from core.evaluation import compare
from core.ui import init_page, show_error
from core.ui.predict_view import predict_tab

db, project = init_page("Data", icon="📥")

st.title("📥 Data")
if project is None:
    st.info("Create a project on the home page first.")
    st.stop()

pid = project["id"]
labels = projects.list_labels(db, pid)
label_names = [row["name"] for row in labels]
counts = projects.split_counts(db, pid)
total = sum(counts.values())

if notice := st.session_state.pop("data_notice", None):
    (st.success if notice[0] == "success" else st.error)(notice[1])

tab_sentences, tab_types, tab_import, tab_export, tab_splits, tab_predict = st.tabs(
    ["Sentences", "Entity types", "Import", "Export", "Splits", "Predict a file"]
)

# --- Sentences ---------------------------------------------------------------------------------
with tab_sentences:
    if st.session_state.get("data_entity", "any") not in ["any", *label_names]:
        st.session_state["data_entity"] = "any"
    f1, f2, f3, f4 = st.columns([1.1, 0.9, 1.1, 2])
    status = f1.selectbox(
        "Status", ["all", "unlabelled", "labelled"], key="data_status",
        format_func={"unlabelled": "Not done yet", "labelled": "Done", "all": "All"}.get,
    )
    split = f2.selectbox("Split", ["all", *config.SPLITS], key="data_split")
    entity = f3.selectbox(
        "Contains", ["any", *label_names], key="data_entity",
        format_func=lambda v: "any entity type" if v == "any" else v,
    )
    search = f4.text_input("Search text", key="data_search", placeholder="e.g. lithium")
    flt = labeling.QueueFilter(
        status=status, split=None if split == "all" else split,
        label=None if entity == "any" else entity, text=search,
    )
    matching = labeling.count(db, pid, flt)
    page_size = 50
    pages = labeling.page_count(matching, page_size)
    if st.session_state.get("data_page", 1) > pages:
        st.session_state["data_page"] = 1
    p1, p2 = st.columns([1, 4], vertical_alignment="bottom")
    page_no = p1.number_input("Page", min_value=1, max_value=pages, step=1, key="data_page")
    p2.caption(f"{matching} of {total} sentences match · page {page_no} of {pages} · {page_size} a page")
    rows = labeling.sentence_rows(db, pid, flt, offset=(page_no - 1) * page_size, limit=page_size)
    st.dataframe(
        [
            {
                "#": r["number"],
                "Sentence": r["text"],
                "Entities": r["entities"],
                "Split": r["split"],
                "Done": ("✓ reviewed" if r["gold_source"] == "review" else "✓ done")
                if r["status"] == "labelled"
                else "⚖ disputed" if r["gold_source"] == "disputed" else "–",
                "Annotators": r["annotations"],
                "By": (f"{r['annotator']}, " if r["annotator"] else "") + r["updated_at"][5:16].replace("T", " "),
                "Open": f"Label?sentence={r['id']}",
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
        column_order=["#", "Open", "Sentence", "Entities", "Split", "Done", "Annotators", "By"],
        column_config={
            "#": st.column_config.NumberColumn(width=45),
            "Sentence": st.column_config.TextColumn(help="Hover a cell to read it whole"),
            "Entities": st.column_config.TextColumn(width=200),
            "Split": st.column_config.TextColumn(width=55),
            "Done": st.column_config.TextColumn(
                width=80, help="Marked done on the Label page; disputed: annotators disagree "
                "(see the Review page); reviewed: a reviewer set the gold"),
            "Annotators": st.column_config.NumberColumn(
                width=70, help="How many annotators labelled it"),
            "By": st.column_config.TextColumn(
                width=130, help="Whose labels are the gold (the reviewer's, once reviewed), and "
                "when (UTC)"),
            "Open": st.column_config.LinkColumn("Open", display_text="label ↗", width=65,
                                                help="Open this sentence on the Label page"),
        },
        key="data_table",
    )

# --- Entity types ------------------------------------------------------------------------------
with tab_types:
    prog = labeling.progress(db, pid)
    if labels:
        st.dataframe(
            [
                {
                    "Entity type": row["name"],
                    "Colour": row["color"],
                    "Hotkey": row["hotkey"],
                    "Guideline": row["description"],
                    "Spans": prog.per_label.get(row["name"], {}).get("spans", 0),
                    "Sentences": prog.per_label.get(row["name"], {}).get("sentences", 0),
                }
                for row in labels
            ],
            hide_index=True,
            width="stretch",
        )
    else:
        st.info("No entity types yet: add the first one below.")
    if project["fixed_labels"]:
        st.caption("This project has a fixed label set: imports may not bring new entity types.")

    left, right = st.columns(2)
    with left, st.form("data_add_label", clear_on_submit=True):
        st.markdown("**Add an entity type**")
        new_name = st.text_input("Name", key="data_new_name", placeholder="e.g. Gene")
        c1, c2 = st.columns(2)
        new_color = c1.color_picker(
            "Colour", value=config.LABEL_COLOURS[len(labels) % len(config.LABEL_COLOURS)],
            key="data_new_color",
        )
        new_hotkey = c2.text_input(
            "Hotkey", key="data_new_hotkey", max_chars=1,
            help="One digit 1-9 or a letter; empty = the next free one.",
        )
        new_desc = st.text_input(
            "Guideline (one line)", key="data_new_desc",
            placeholder="What counts as this type, with an example",
        )
        if st.form_submit_button("Add entity type", type="primary"):
            try:
                added = projects.add_label(
                    db, pid, new_name, color=new_color, hotkey=new_hotkey or None, description=new_desc
                )
            except NerlabError as exc:
                show_error(exc)
            else:
                st.session_state["data_notice"] = (
                    "success", f"Added {added['name']} (hotkey {added['hotkey'] or 'none'}).",
                )
                st.rerun()

    with right:
        if labels:
            by_id = {row["id"]: row for row in labels}
            if st.session_state.get("data_edit_choice") not in by_id:
                st.session_state["data_edit_choice"] = labels[0]["id"]  # deleted, or new project
            chosen = st.selectbox(
                "Change or delete", list(by_id), format_func=lambda i: by_id[i]["name"],
                key="data_edit_choice",
            )
            row = by_id[chosen]
            with st.form(f"data_edit_{chosen}"):
                name = st.text_input("Name", value=row["name"], key=f"data_edit_name_{chosen}")
                c1, c2 = st.columns(2)
                color = c1.color_picker("Colour", value=row["color"], key=f"data_edit_color_{chosen}")
                hotkey = c2.text_input("Hotkey", value=row["hotkey"], max_chars=1,
                                       key=f"data_edit_hotkey_{chosen}")
                desc = st.text_input("Guideline (one line)", value=row["description"],
                                     key=f"data_edit_desc_{chosen}")
                if st.form_submit_button("Save changes"):
                    try:
                        projects.update_label(
                            db, chosen, name=name, color=color, hotkey=hotkey, description=desc
                        )
                    except NerlabError as exc:
                        show_error(exc)
                    else:
                        st.session_state["data_notice"] = ("success", f"Saved {name.strip()}.")
                        st.rerun()
            n_spans = projects.count_label_spans(db, chosen)
            if st.session_state.get("data_confirm_delete") != chosen:
                if st.button(f"Delete {row['name']}…", key="data_delete"):
                    st.session_state["data_confirm_delete"] = chosen
                    st.rerun()
            else:
                n_sentences = prog.per_label.get(row["name"], {}).get("sentences", 0)
                st.warning(
                    f"Delete **{row['name']}** and the {n_spans} span(s) labelled with it "
                    f"in {n_sentences} sentence(s)? This cannot be undone."
                )
                d1, d2 = st.columns(2)
                if d1.button("Yes, delete", key="data_delete_yes", type="primary"):
                    gone = projects.delete_label(db, chosen)
                    st.session_state.pop("data_confirm_delete", None)
                    st.session_state["data_notice"] = (
                        "success", f"Deleted {row['name']} and {gone} span(s).",
                    )
                    st.rerun()
                if d2.button("Cancel", key="data_delete_no"):
                    st.session_state.pop("data_confirm_delete", None)
                    st.rerun()

# --- Import ------------------------------------------------------------------------------------
with tab_import:
    st.markdown(
        "CoNLL/BIO (IOB1, IOB2, IOBES), JSONL with character spans (NERLab, spaCy, Prodigy), plain "
        "text (one sentence a line), Label Studio JSON or JSON-MIN, doccano JSONL, a Hugging Face "
        "dataset (zipped `save_to_disk` folder, parquet or JSON with `tokens` and `ner_tags`) or a "
        "spaCy `.spacy` file. The format is read from the content. A file with an error imports "
        "nothing and says which line is wrong."
    )
    upload = st.file_uploader(
        "File to import", key="data_upload",
        type=["conll", "tsv", "bio", "iob", "txt", "jsonl", "json", "parquet", "zip", "spacy"],
    )
    pasted = st.text_area("…or paste the file's content", key="data_import_paste", height=100)
    if upload is not None:
        payload, payload_name = upload.getvalue(), upload.name
    elif pasted.strip():
        payload, payload_name = pasted.encode("utf-8"), "pasted text"
    else:
        payload, payload_name = None, ""
    i1, i2, i3 = st.columns(3)
    fmt = i1.selectbox(
        "Format", ["auto", *io.IMPORT_FORMATS], key="data_import_format",
        format_func=lambda f: "from the content" if f == "auto" else io.FORMATS[f].title,
    )
    chosen_fmt = None if fmt == "auto" else fmt
    if payload is not None and fmt == "auto":
        try:
            chosen_fmt, why = io.detect(payload, payload_name)
        except NerlabError as exc:
            i1.caption(str(exc))
        else:
            i1.caption(f"{payload_name}: read as **{chosen_fmt}** ({why}).")
    target = i2.selectbox(
        "Split", ["file", *config.SPLITS], key="data_import_split",
        format_func=lambda s: "as in the file (else train)" if s == "file" else s,
    )
    allow_new = i3.checkbox(
        "Allow new entity types", value=not project["fixed_labels"], key="data_import_new",
        help="Off: a file with an entity type the project does not have is refused.",
    )
    update = i3.checkbox(
        "Update sentences already here", key="data_import_update",
        help="A labelled sentence of the file that is already in the project replaces its "
        "annotation there (the report says what changed). Off: such duplicates are skipped, and "
        "the report lists those whose labels differ.",
    )
    options: dict = {}
    if chosen_fmt == "labelstudio":
        field = st.text_input("Label Studio text field", key="data_import_text_field",
                              placeholder="text", help="The data field the labelling config's "
                              '<Text value="$field"> names; empty: text.')
        options["text_field"] = field.strip() or None
    if chosen_fmt == "hf":
        tags = st.text_input("Tag names (when ner_tags are numbers the dataset does not name)",
                             key="data_import_tags", placeholder="O,B-PER,I-PER,B-ORG,I-ORG")
        options["tags"] = tags.strip() or None
    if st.button("Import", key="data_import", type="primary", disabled=payload is None):
        try:
            result = io.import_bytes(
                db, pid, payload, chosen_fmt, name=payload_name,
                split=None if target == "file" else target, allow_new_labels=allow_new,
                update=update, **options,
            )
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback, whatever the file
            st.session_state["data_import_result"] = None
            show_error(exc)
        else:
            # Kept (not a one-shot notice) so that the outcome stays in view under the button
            # until the next import, whatever reruns come in between.
            st.session_state["data_import_result"] = {
                "summary": f"{payload_name}: {result.summary()} (read as {result.format})",
                "details": result.details(),
            }
            st.rerun()
    if last_import := st.session_state.get("data_import_result"):
        st.success(last_import["summary"])
        if last_import["details"]:
            st.warning("\n".join(f"- {line.strip()}" if not line.startswith("  ") else f"    - {line.strip()}"
                                 for line in last_import["details"]))

# --- Export ------------------------------------------------------------------------------------
with tab_export:
    e1, e2, e3 = st.columns(3)
    exp_fmt = e1.selectbox(
        "Format", io.EXPORT_FORMATS, key="data_export_format",
        format_func=lambda f: io.FORMATS[f].title,
    )
    exp_split = e2.selectbox("Split", ["all", *config.SPLITS], key="data_export_split")
    exp_unlabelled = e3.checkbox("Include sentences not done yet", key="data_export_unlabelled",
                                 help="They are marked as not done in the file, so that importing "
                                 "it back keeps them in the Label queue.")
    chosen_split = None if exp_split == "all" else exp_split
    exp_run = None
    if exp_fmt == "labelstudio":
        runs = compare.scored_runs(db, pid)
        by_run = {r["id"]: r for r in runs}
        exp_run = e1.selectbox(
            "Pre-annotations from a run", [None, *by_run], key="data_export_run",
            format_func=lambda r: "none" if r is None else compare.run_title(by_run[r]),
            help="The run's predictions become Label Studio pre-annotations to correct.",
        )
        with st.expander("Label Studio labelling config for these tasks"):
            st.code(io.labelstudio_config(label_names), language="xml")
    n_export = labeling.count(
        db, pid, labeling.QueueFilter(
            status="all" if exp_unlabelled else "labelled", split=chosen_split
        ),
    )
    blocked = exp_fmt == "spacy" and not io.spacy_available()
    if blocked:
        st.warning("The spaCy format needs spaCy, which is not installed here: "
                   "`pip install 'nerlab[spacy]'`.")
    st.caption(f"{n_export} sentence(s) will be exported.")
    st.download_button(
        "Download", key="data_download", type="primary", disabled=n_export == 0 or blocked,
        data=io.deferred_export(pid, exp_fmt, chosen_split, exp_unlabelled, exp_run),
        file_name=io.export_filename(project["name"], exp_fmt, chosen_split),
        mime=io.FORMATS[exp_fmt].mime,
    )

# --- Splits ------------------------------------------------------------------------------------
with tab_splits:
    s1, s2, s3 = st.columns(3)
    for col, name in zip((s1, s2, s3), config.SPLITS, strict=True):
        col.metric(name, counts[name])
    st.markdown(
        "**Draw dev (and test) sentences at random** (reproducible: the same seed gives the same "
        "split). Test sentences stay in test, and sentences placed by hand (or dev sentences "
        "placed by an import) stay where they are, unless you tick *also move*; sentences already "
        "scored as test data never leave test. An empty share is 0 for a split that an import "
        "or a person filled, else 0.1 for dev and 0.2 for test."
    )
    a1, a2, a3, a4 = st.columns([1, 1, 1, 1.2], vertical_alignment="bottom")
    dev = a1.number_input("Dev share", 0.0, 0.9, None, 0.05, key="data_dev_share", placeholder="auto")
    test = a2.number_input("Test share", 0.0, 0.9, None, 0.05, key="data_test_share",
                           placeholder="auto")
    seed = a3.number_input("Seed", 0, 10_000, 0, 1, key="data_seed")
    reassign = st.checkbox(
        "Also move test sentences and sentences placed by hand or by an import",
        key="data_reassign",
    )
    if a4.button("Assign splits", key="data_assign"):
        try:
            report = projects.split_project(db, pid, dev=dev, test=test, seed=int(seed),
                                            reassign=reassign)
        except NerlabError as exc:
            show_error(exc)
        else:
            st.session_state["data_notice"] = ("success", report.summary())
            st.rerun()
    st.markdown("**Move some sentences by hand** (by number, as in the Sentences table; a "
                "random split leaves them where you put them)")
    m1, m2, m3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    numbers = m1.text_input("Sentence numbers", key="data_move_numbers", placeholder="e.g. 1-50, 75")
    move_to = m2.selectbox("To split", config.SPLITS, key="data_move_split")
    if m3.button("Move", key="data_move"):
        try:
            ids = labeling.ids_for_numbers(db, pid, labeling.parse_numbers(numbers, total))
            moved = projects.set_split(db, ids, move_to)
        except NerlabError as exc:
            show_error(exc)
        else:
            st.session_state["data_notice"] = ("success", f"Moved {moved} sentence(s) to {move_to}.")
            st.rerun()

# --- Predict a file ----------------------------------------------------------------------------
with tab_predict:
    predict_tab(db, project)
