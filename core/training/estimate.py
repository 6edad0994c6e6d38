"""How long a run will take on this machine, from a timed step, before it is started.

:func:`measure` loads the base model with the run's adapter, encodes the project's training
sentences exactly as the run will (so the token count is exact), times two optimiser steps (the
second one counts: the first pays for warm-up) and one batch of constrained predictions, and
stores what it measured under a key of the machine, the data and the settings. :func:`stored`
reads it back and :func:`wall_time` turns it into seconds per phase for the pre-flight check.

The Train page starts the measurement in a short process of its own (``python -m
core.training.estimate PROJECT_ID``, the config on stdin) so that the page never loads a model;
``nerlab train --estimate`` starts the same process and waits for it (:func:`measure_apart`).
Either way the step is timed as a run's worker computes (:func:`core.procs.compute_env`: the
allocator and OpenMP settings), not as the calling process happens to. torch & co are imported
inside functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlite_utils import Database

from core import config
from core.data import projects
from core.data.db import get_db
from core.errors import NerlabError
from core.models import loader, quiet
from core.prediction.decoding import DEFAULT_BATCH_SIZE
from core.prediction.predict import predict_examples
from core.procs import pid_alive, spawn
from core.prompts.plan import plan_for_template
from core.prompts.store import get_template
from core.training.batches import encode_examples, plan_steps
from core.training.fine_tune import prepare_for_prediction
from core.training.loop import Hooks, build_model, train_loop
from core.training.runconfig import RunConfig

#: The module that measures (its command line marks its process).
MEASURER = "core.training.estimate"
#: Dev sentences predicted to time the predictions.
PREDICT_SAMPLE = DEFAULT_BATCH_SIZE


@dataclass
class Measurement:
    """What one timed step on this machine found."""

    key: str
    device: str
    load_s: float
    tokens_per_epoch: int
    train_sentences: int
    tokens_per_s: float
    step_s: float
    predict_s_per_sentence: float
    measured_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class WallTime:
    """Seconds per phase of a run, from a :class:`Measurement`."""

    load_s: float
    train_s: float
    dev_loss_s: float
    predict_s: float
    steps: int

    @property
    def total_s(self) -> float:
        return self.load_s + self.train_s + self.dev_loss_s + self.predict_s

    def describe(self) -> str:
        return (f"about {_minutes(self.total_s)} on this machine: loading {_minutes(self.load_s)}, "
                f"training {_minutes(self.train_s)} ({self.steps} steps), dev loss "
                f"{_minutes(self.dev_loss_s)}, predicting dev and test {_minutes(self.predict_s)}")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def key(db: Database, project_id: int, cfg: RunConfig) -> str:
    """What a measurement depends on: the machine's device, the labelled data and the settings
    that change a step's cost (not the name, seed or number of epochs)."""
    counts = projects.split_counts(db, project_id)
    labelled = db.execute("SELECT COUNT(*), COALESCE(SUM(version), 0) FROM sentences WHERE "
                          "project_id = ? AND status = 'labelled'", [project_id]).fetchone()
    tpl = get_template(db, project_id, cfg.template)
    shape = cfg.to_dict()
    for name in ("epochs", "max_steps", "seed", "dev_loss_sentences", "eval_after", "eval_limit"):
        shape["train"].pop(name, None)
    shape.pop("preset", None)
    raw = json.dumps([os.cpu_count(), counts, list(labelled), tpl.id, shape], sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _folder() -> Path:
    path = config.home() / "estimates"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stored(db: Database, project_id: int, cfg: RunConfig) -> Measurement | None:
    """The measurement for these data and settings on this machine, if one was taken."""
    return _stored(key(db, project_id, cfg))


def _stored(k: str) -> Measurement | None:
    path = _folder() / f"{k}.json"
    if not path.is_file():
        return None
    try:
        return Measurement(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def status(db: Database, project_id: int, cfg: RunConfig
           ) -> tuple[Measurement | None, bool, str | None]:
    """What the pre-flight check shows, from one look at the data: the stored measurement,
    whether one is being taken now, and why the last attempt failed (if it did)."""
    k = key(db, project_id, cfg)
    return _stored(k), _measuring(k), _failure(k)


def wall_time(db: Database, project_id: int, cfg: RunConfig, m: Measurement) -> WallTime:
    """Seconds per phase of a run with ``cfg`` on the project, from measurement ``m``."""
    per_epoch, steps = plan_steps(m.train_sentences, cfg)
    per_step_tokens = m.tokens_per_epoch / max(1, m.train_sentences) * (
        cfg.train.batch_size * cfg.train.grad_accum)
    train_s = steps * per_step_tokens / max(m.tokens_per_s, 1e-9)
    counts = projects.split_counts(db, project_id)
    n_dev, n_test = counts["dev"], counts["test"]
    dev_loss_n = min(n_dev, cfg.train.dev_loss_sentences)
    epochs = -(-steps // per_epoch)  # a dev-loss pass after each epoch
    # A dev-loss pass is a forward pass only: about a third of a training step's cost.
    dev_loss_s = dev_loss_n * (m.tokens_per_epoch / max(1, m.train_sentences)) / (
        3 * max(m.tokens_per_s, 1e-9)) * epochs if dev_loss_n else 0.0
    predicted = 0
    if cfg.train.eval_after:
        limit = cfg.train.eval_limit or None
        predicted = sum(min(n, limit or n) for n in (n_dev, n_test))
    return WallTime(m.load_s, train_s, dev_loss_s, predicted * m.predict_s_per_sentence, steps)


def measure(db: Database, project_id: int, cfg: RunConfig, log=print) -> Measurement:
    """Time two optimiser steps and a batch of predictions of a run with ``cfg`` here."""
    import torch

    tpl = get_template(db, project_id, cfg.template)
    plan = plan_for_template(db, project_id, tpl)
    train = projects.examples(db, project_id, split="train")
    dev = projects.examples(db, project_id, split="dev")[:PREDICT_SAMPLE]
    if not train:
        raise NerlabError("The project has no labelled training sentences to time a step on.")
    loader.set_threads()
    started = time.perf_counter()
    device = loader.device_info().device
    model, tokenizer, dtype = build_model(cfg, device, log=lambda _msg: None)
    load_s = time.perf_counter() - started
    shots = (lambda ex: plan.shots_for(ex.id, ex.text)) if plan.shots else None
    encoded, _stats = encode_examples(tokenizer, tpl, train, plan.labels, cfg.train.max_length,
                                      shots)
    tokens_per_epoch = sum(len(e.ids) for e in encoded)
    timed: list[float] = []

    def progress(_step, _total, tokens_per_s=None, **_metrics) -> None:
        if tokens_per_s:
            timed.append(float(tokens_per_s))

    steps_cfg = cfg.with_overrides(max_steps=2, dev_loss_sentences=0)
    torch.manual_seed(cfg.train.seed)
    train_loop(model, tokenizer, encoded, [], steps_cfg, device, dtype,
               Hooks(log=lambda _msg: None, progress=progress))
    tokens_per_s = timed[-1] if timed else 0.0
    predict_s = 0.0
    if dev:
        # As the run predicts: float32 on a CPU, the adapter folded in, a full batch of rows.
        prepare_for_prediction(model, tokenizer, cfg, device, dtype, lambda _msg: None)
        # Two steps in, the model does not yet stop where a trained one does: cap its answers at
        # the length of the gold answers (plus a margin), which is what a trained model writes.
        answer = sum(e.n_answer for e in encoded) / max(1, len(encoded))
        started = time.perf_counter()
        predict_examples(model, tokenizer, plan, dev, constrained=cfg.train.constrained,
                         max_new_tokens=max(8, round(answer * 1.2)))
        predict_s = (time.perf_counter() - started) / len(dev)
    per_step = tokens_per_epoch / max(1, len(encoded)) * cfg.train.batch_size * cfg.train.grad_accum
    m = Measurement(key(db, project_id, cfg), device, round(load_s, 2), tokens_per_epoch,
                    len(encoded), round(tokens_per_s, 2),
                    round(per_step / max(tokens_per_s, 1e-9), 2), round(predict_s, 3),
                    time.strftime("%Y-%m-%d %H:%M:%S"))
    (_folder() / f"{m.key}.json").write_text(m.to_json())
    log(f"Measured: {tokens_per_s:.0f} tokens/s, {m.step_s:.1f} s a step, "
        f"{predict_s:.1f} s a predicted sentence, model loaded in {load_s:.1f} s.")
    return m


def _pid_file(k: str) -> Path:
    return _folder() / f"{k}.pid"


def measuring(db: Database, project_id: int, cfg: RunConfig) -> bool:
    """Whether a measurement of these data and settings is being taken now."""
    return _measuring(key(db, project_id, cfg))


def _measuring(k: str) -> bool:
    path = _pid_file(k)
    return path.is_file() and pid_alive(int(path.read_text() or 0), MEASURER)


def start(db: Database, project_id: int, cfg: RunConfig) -> int:
    """Take the measurement in a process of its own (about a minute); return its pid."""
    k = key(db, project_id, cfg)
    if _measuring(k):
        return int(_pid_file(k).read_text())
    folder = _folder()
    request = folder / f"{k}.request.json"
    request.write_text(json.dumps(cfg.to_dict()))
    pid = spawn(["-m", MEASURER, str(project_id), str(request)], folder / "measure.log")
    _pid_file(k).write_text(str(pid))
    return pid


def measure_apart(db: Database, project_id: int, cfg: RunConfig, log=print,
                  timeout_s: float = 1800.0) -> Measurement:
    """:func:`measure` in a process of its own (:func:`start`), waited for; its log lines go to
    ``log``. Raises :class:`NerlabError` with the reason when it ends without a measurement."""
    k = key(db, project_id, cfg)
    log_file = _folder() / "measure.log"
    seen = log_file.stat().st_size if log_file.is_file() else 0
    pid = start(db, project_id, cfg)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid, MEASURER):
        if time.monotonic() > deadline:
            raise NerlabError(f"Timing these settings took over {timeout_s / 60:.0f} min "
                              f"(process {pid} goes on; its log: {log_file}).")
        time.sleep(0.3)
    if log_file.is_file():
        with open(log_file, "rb") as fh:
            fh.seek(seen)
            for line in fh.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log(line)
    m = _stored(k)
    if m is None:
        raise NerlabError("Could not time these settings: "
                          + (_failure(k) or f"the measuring process ended without a result "
                                            f"(its log: {log_file})."))
    return m


def main(argv: list[str] | None = None) -> int:
    """``python -m core.training.estimate PROJECT_ID CONFIG_JSON_FILE``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m core.training.estimate PROJECT_ID CONFIG_JSON_FILE", file=sys.stderr)
        return 2
    db = get_db()
    cfg = RunConfig.from_dict(json.loads(Path(argv[1]).read_text()))
    error = _folder() / f"{key(db, int(argv[0]), cfg)}.error"
    error.unlink(missing_ok=True)
    quiet.quiet_libraries()  # its own lines in its log, not the libraries' bars
    try:
        measure(db, int(argv[0]), cfg)
    except Exception as exc:  # noqa: BLE001 - kept for the page, which says why
        reason = str(exc) if isinstance(exc, NerlabError) else f"{type(exc).__name__}: {exc}"
        error.write_text(reason)
        print(f"Not measured: {reason}", flush=True)
        return 1
    return 0


def _failure(k: str) -> str | None:
    """Why the last attempt to time the settings of key ``k`` failed, if it did."""
    path = _folder() / f"{k}.error"
    return path.read_text() if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
