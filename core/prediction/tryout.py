"""The Compare page's 'type a sentence' requests, answered in a short process of their own."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from sqlite_utils import Database

from core import config
from core.data.db import get_db, now
from core.data.runs import get_run
from core.data.spans import Example, Span
from core.errors import NerlabError, NotFound
from core.models import adapters, loader
from core.prediction import baselines, crf
from core.prediction.predict import predict_examples
from core.procs import pid_alive, spawn

#: The module whose process answers a request (``python -m core.prediction.tryout try ID``).
TRYOUT = "core.prediction.tryout"
TRY_KINDS = ("train", "zero-shot", "few-shot", "crf")


def request_try(db: Database, project_id: int, text: str, run_ids: Sequence[int],
                start: bool = True) -> int:
    """Store a request to run ``text`` through each run's model and start its process.

    The page polls :func:`get_try` until the status is ``finished`` or ``failed``.
    """
    text = " ".join((text or "").split())
    if not text:
        raise NerlabError("Type a sentence first.")
    if len(text) > 2000:
        raise NerlabError(f"The sentence has {len(text)} characters; the limit is 2000.")
    if not run_ids:
        raise NerlabError("Pick at least one run.")
    cur = db.execute(
        "INSERT INTO try_requests (project_id, text, run_ids, status, created_at)"
        " VALUES (?, ?, ?, 'queued', ?)",
        [project_id, text, json.dumps([int(r) for r in run_ids]), now()],
    )
    db.conn.commit()
    request_id = int(cur.lastrowid)
    if start:
        pid = spawn(["-m", TRYOUT, "try", str(request_id)], config.runs_dir() / f"try-{request_id}.log")
        db.execute("UPDATE try_requests SET pid = ? WHERE id = ?", [pid, request_id])
        db.conn.commit()
    return request_id


def get_try(db: Database, request_id: int) -> dict:
    """A try request with ``outputs`` parsed; a request whose process died is marked failed."""
    rows = list(db.query("SELECT * FROM try_requests WHERE id = ?", [int(request_id)]))
    if not rows:
        raise NotFound(f"No request {request_id}.")
    row = dict(rows[0])
    if row["status"] in ("queued", "running") and row["pid"] and not pid_alive(row["pid"], TRYOUT):
        db.execute(
            "UPDATE try_requests SET status = 'failed', error_message = ?, finished_at = ?"
            " WHERE id = ? AND status IN ('queued', 'running')",
            ["The process answering the request ended without a result (see "
             f"{config.runs_dir() / f'try-{request_id}.log'}).", now(), request_id],
        )
        db.conn.commit()
        return get_try(db, request_id)
    row["outputs"] = json.loads(row["outputs"] or "{}")
    row["run_ids"] = json.loads(row["run_ids"] or "[]")
    return row


def load_run_model(db: Database, run: dict) -> tuple[Any, Any]:
    """The model a run predicts with: its base model, plus its saved adapter for a training run."""
    if run["kind"] == "train":

        model, tokenizer = adapters.load_adapter(adapters.adapter_path(db, run["id"]))
        tokenizer.padding_side = "left"
        return model, tokenizer
    cfg = run.get("config") or {}
    base = run.get("base_model") or cfg.get("base_model") or config.BUNDLED_MODEL
    model, tokenizer = loader.load_model(base)
    model.eval()
    return model, tokenizer


def answer_try(db: Database, request_id: int) -> dict:
    """Run a try request's sentence through each of its runs; store and return the outputs."""
    req = get_try(db, request_id)
    db.execute("UPDATE try_requests SET status = 'running' WHERE id = ?", [request_id])
    db.conn.commit()

    text = req["text"]
    example = Example(id=-1, text=text, spans=(), split="test")
    outputs: dict[str, dict] = {}
    for run_id in req["run_ids"]:
        started = time.perf_counter()
        try:
            run = get_run(db, run_id)
            if run["kind"] == "crf":

                spans = crf.crf_predict_text(run, text)
                result = {"spans": [s.to_dict() for s in spans], "raw": "", "status": "ok"}
            elif run["kind"] in TRY_KINDS:
                model, tokenizer = load_run_model(db, run)
                plan = baselines.run_plan(db, run)
                row = predict_examples(model, tokenizer, plan, [example], batch_size=1)[0]
                result = {"spans": [s.to_dict() for s in row["spans"]], "raw": row["raw_output"],
                          "status": row["parse_status"]}
                del model
            else:
                raise NerlabError(f"Runs of kind {run['kind']!r} cannot answer new sentences.")
        except Exception as exc:  # noqa: BLE001 - one run's failure must not hide the others
            message = str(exc) if isinstance(exc, NerlabError) else f"{type(exc).__name__}: {exc}"
            result = {"spans": [], "raw": "", "status": "error", "error": message}
        result["seconds"] = round(time.perf_counter() - started, 2)
        outputs[str(run_id)] = result
        db.execute("UPDATE try_requests SET outputs = ? WHERE id = ?",
                   [json.dumps(outputs), request_id])
        db.conn.commit()
    db.execute("UPDATE try_requests SET status = 'finished', finished_at = ? WHERE id = ?",
               [now(), request_id])
    db.conn.commit()
    return outputs


def spans_of(output: dict) -> list[Span]:
    """The spans of one try output (as stored: dicts)."""
    return [Span(int(s["start"]), int(s["end"]), str(s["label"])) for s in output.get("spans", [])]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.prediction.tryout try REQUEST_ID``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "try" or not argv[1].isdigit():
        print("usage: python -m core.prediction.tryout try REQUEST_ID", file=sys.stderr)
        return 2
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
    db = get_db()
    request_id = int(argv[1])
    try:
        answer_try(db, request_id)
    except Exception as exc:  # noqa: BLE001 - recorded for the page
        db.execute(
            "UPDATE try_requests SET status = 'failed', error_message = ?, finished_at = ?"
            " WHERE id = ?", [f"{type(exc).__name__}: {exc}", now(), request_id])
        db.conn.commit()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
