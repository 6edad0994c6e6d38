"""Where a project stands and what to do next: the home page's guide, computed from SQLite."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from core.config import MIN_TRAIN
from core.data import projects


@dataclass(frozen=True)
class Step:
    """One step of the user's path, with whether it is done and what to do about it."""

    key: str
    title: str
    page: str
    done: bool
    detail: str
    action: str


def best_run(db: Database, project_id: int, split: str = "test") -> dict | None:
    """The run with the highest stored micro-F1 on ``split`` (default scoring mode), if any."""
    rows = list(
        db.query(
            "SELECT r.id, r.name, r.kind, json_extract(e.metrics, '$.micro.f1') AS micro_f1,"
            " json_extract(e.metrics, '$.macro.f1') AS macro_f1 FROM evaluations e"
            " JOIN runs r ON r.id = e.run_id WHERE r.project_id = ? AND e.split = ?"
            " AND e.mode = 'default' AND json_extract(e.metrics, '$.micro.f1') IS NOT NULL"
            " ORDER BY micro_f1 DESC, r.id DESC LIMIT 1",
            [project_id, split],
        )
    )
    return rows[0] if rows else None


def run_counts(db: Database, project_id: int) -> dict[str, int]:
    counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0, "stopped": 0}
    for r in db.query(
        "SELECT status, COUNT(*) AS n FROM runs WHERE project_id = ? GROUP BY status", [project_id]
    ):
        counts[r["status"]] = r["n"]
    return counts


def steps(db: Database, project_id: int) -> list[Step]:
    """The path from data to scores, each step marked done or not, with the next action."""
    s = projects.stats(db, project_id)
    n_labels = len(s["spans_per_label"])
    train = s["splits"]["train"]["labelled"]
    dev = s["splits"]["dev"]["labelled"]
    test = s["splits"]["test"]["labelled"]
    templates = db["templates"].count_where("project_id = ?", [project_id])
    runs = run_counts(db, project_id)
    best = best_run(db, project_id)
    train_runs = db["runs"].count_where("project_id = ? AND kind = 'train'", [project_id])
    out = [
        Step(
            "data", "Import sentences", "views/1_Data.py", s["sentences"] > 0 and n_labels > 0,
            f"{s['sentences']} sentences, {n_labels} entity types",
            "Import a CoNLL, JSONL, Label Studio, doccano or plain-text file, and name your "
            "entity types." if s["sentences"] == 0 or n_labels == 0 else
            "Add more sentences or entity types any time.",
        ),
        Step(
            "label", "Label", "views/2_Label.py", s["unlabelled"] == 0 and s["labelled"] > 0,
            f"{s['labelled']} of {s['sentences']} labelled (train {train}, dev {dev}, test {test})",
            f"{s['unlabelled']} sentences are waiting to be labelled." if s["unlabelled"] else
            "Everything is labelled.",
        ),
        Step(
            "splits", "Split train / dev / test", "views/1_Data.py",
            train >= MIN_TRAIN and dev > 0 and test > 0,
            f"train {train}, dev {dev}, test {test} labelled",
            f"Label at least {MIN_TRAIN} training sentences and keep some labelled dev and test "
            "sentences to score on." if not (train >= MIN_TRAIN and dev > 0 and test > 0) else
            "Enough labelled data in every split.",
        ),
        Step(
            "template", "Check the template", "views/3_Template.py", templates > 0,
            f"{templates} saved version(s)" if templates else "the default template",
            "See the exact prompt and answer the model gets, and check every sentence "
            "round-trips." if not templates else "Edit it any time; each run records its version.",
        ),
        Step(
            "train", "Fine-tune", "views/4_Train.py", runs["finished"] > 0 and train_runs > 0,
            f"{train_runs} training run(s); {runs['running']} running, {runs['queued']} queued",
            "Start a LoRA+ run on the bundled model (minutes on a CPU) or a bigger model on your "
            "GPU." if not train_runs else "Compare presets or base models with more runs.",
        ),
        Step(
            "evaluate", "Read the scores", "views/5_Evaluate.py", best is not None,
            (f"best: {best['name'] or 'run ' + str(best['id'])} — micro-F1 {best['micro_f1']:.3f}, "
             f"macro-F1 {best['macro_f1']:.3f} on test") if best else "no scored run yet",
            "Per-class precision, recall and F1, the confusion matrix and every error; then "
            "compare runs and baselines side by side.",
        ),
    ]
    return out


def next_step(all_steps: list[Step]) -> Step | None:
    """The first step that is not done yet."""
    return next((st for st in all_steps if not st.done), None)
