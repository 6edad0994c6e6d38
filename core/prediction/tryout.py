"""The Compare page's 'type a sentence' requests, answered by a process that keeps the models
it loaded for a few minutes.

The first request starts ``python -m core.prediction.tryout serve``; it answers every request
in turn and keeps each base model it loads in memory (a fine-tuned run's adapter is attached to
its base model, so runs on the same base share one copy), so later sentences for the same runs
take the generation time only. It ends after :data:`IDLE_S` seconds without a request. While it
works, each run's output says its stage (loading the model, generating) and when it began; done,
it holds the time of each stage.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import config
from core.data.db import get_db, now
from core.data.runs import get_run
from core.data.spans import Example, Span, tokenize
from core.errors import NerlabError, NotFound
from core.models import adapters, loader, quiet
from core.prediction import baselines, crf, predictors, run_folder
from core.prediction.predict import predict_examples
from core.procs import file_lock, pid_alive, spawn

#: The module whose process answers requests (``python -m core.prediction.tryout serve``).
TRYOUT = "core.prediction.tryout"
TRY_KINDS = ("train", "zero-shot", "few-shot", "crf", "encoder")
#: Seconds the answering process waits for another request before it ends (and frees memory).
IDLE_S = float(os.environ.get("NERLAB_TRY_IDLE_S") or 300)
#: Base models kept loaded at once (each with the adapters of its runs).
MAX_BASES = int(os.environ.get("NERLAB_TRY_MODELS") or 1)
POLL_S = 0.2
#: Stages of a run's answer, as the page shows them.
LOADING, GENERATING = "loading the model", "generating"


def _server_file() -> Path:
    return config.runs_dir() / "try-server.pid"


def _lock() -> Any:
    return file_lock(config.home() / ".try.lock")


def server_pid() -> int | None:
    """The pid of the process answering requests, if one runs."""
    path = _server_file()
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or 0)
        if pid_alive(pid, TRYOUT):
            return pid
    return None


def request_try(db: Database, project_id: int, text: str, run_ids: Sequence[int],
                start: bool = True) -> int:
    """Store a request to run ``text`` through each run's model, for the answering process
    (started now if none runs). The page polls :func:`get_try` until the status is
    ``finished`` or ``failed``."""
    text = " ".join((text or "").split())
    if not text:
        raise NerlabError("Type a sentence first.")
    if len(text) > 2000:
        raise NerlabError(f"The sentence has {len(text)} characters; the limit is 2000.")
    if not run_ids:
        raise NerlabError("Pick at least one run.")
    with _lock():  # the answering process ends only under this lock, after a last look
        cur = db.execute(
            "INSERT INTO try_requests (project_id, text, run_ids, status, created_at)"
            " VALUES (?, ?, ?, 'queued', ?)",
            [project_id, text, json.dumps([int(r) for r in run_ids]), now()],
        )
        db.conn.commit()
        request_id = int(cur.lastrowid)
        if start:
            pid = server_pid()
            if pid is None:
                pid = spawn(["-m", TRYOUT, "serve"], config.runs_dir() / "try-server.log")
                _server_file().write_text(str(pid))
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
             f"{config.runs_dir() / 'try-server.log'}).", now(), request_id],
        )
        db.conn.commit()
        return get_try(db, request_id)
    row["outputs"] = json.loads(row["outputs"] or "{}")
    row["run_ids"] = json.loads(row["run_ids"] or "[]")
    return row


class ModelCache:
    """What the answering process keeps between requests: base models (least recently used
    dropped beyond :data:`MAX_BASES`) with the adapters of fine-tuned runs attached, each run's
    tokenizer and prompt plan, CRF models and encoders."""

    def __init__(self, max_bases: int = MAX_BASES) -> None:
        self.max_bases = max(1, max_bases)
        self.bases: OrderedDict[str, dict] = OrderedDict()
        self.plans: dict[int, Any] = {}
        self.crfs: dict[int, Any] = {}
        self.encoders: dict[int, Any] = {}

    def has(self, run: dict) -> bool:
        """True when the run's model is loaded (its answer needs no loading)."""
        if run["kind"] == "crf":
            return run["id"] in self.crfs
        if run["kind"] == "encoder":
            return run["id"] in self.encoders
        entry = self.bases.get(_base_of(run))
        return entry is not None and (run["kind"] != "train" or run["id"] in entry["adapters"])

    def crf(self, run: dict) -> Any:
        if run["id"] not in self.crfs:
            self.crfs[run["id"]] = crf.load_crf(crf._crf_path(run))
        return self.crfs[run["id"]]

    def encoder(self, db: Database, run: dict) -> Any:
        """An encoder run's predictor, from its run folder."""
        if run["id"] not in self.encoders:
            self.encoders[run["id"]] = predictors.load_predictor(run_folder.ensure_card(db, run))
        return self.encoders[run["id"]]

    def plan(self, db: Database, run: dict) -> Any:
        if run["id"] not in self.plans:
            self.plans[run["id"]] = baselines.run_plan(db, run)
        return self.plans[run["id"]]

    def model(self, db: Database, run: dict) -> tuple[Any, Any, str | None]:
        """``(model, tokenizer, adapter name or None for the bare base model)``."""
        base = _base_of(run)
        entry = self.bases.get(base)
        if entry is None:
            while len(self.bases) >= self.max_bases:
                self.bases.popitem(last=False)
            model, tokenizer = loader.load_model(base)
            model.eval()
            entry = {"model": model, "tokenizer": tokenizer, "adapters": {}, "tokenizers": {}}
        self.bases[base] = entry
        self.bases.move_to_end(base)
        if run["kind"] != "train":
            return entry["model"], entry["tokenizer"], None
        folder = adapters.adapter_path(db, run["id"])
        stamp = (folder / adapters.META_FILE).stat().st_mtime
        name = f"run{run['id']}"
        known = entry["adapters"].get(run["id"])
        if known != stamp:
            entry["model"] = _attach(entry["model"], folder, name, replace=known is not None)
            entry["adapters"][run["id"]] = stamp
            entry["tokenizers"][run["id"]] = _tokenizer(folder, entry["tokenizer"])
        return entry["model"], entry["tokenizers"][run["id"]], name


def _base_of(run: dict) -> str:
    cfg = run.get("config") or {}
    return run.get("base_model") or cfg.get("base_model") or config.BUNDLED_MODEL


def _attach(model: Any, folder: Path, name: str, replace: bool) -> Any:
    """Attach a run's adapter to the cached base model under ``name`` (a newer save of the same
    run replaces it)."""
    from peft import PeftModel

    with adapters._peft_quietly():
        if isinstance(model, PeftModel):
            if replace:
                model.delete_adapter(name)
            model.load_adapter(str(folder), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    model.eval()
    return model


def _tokenizer(folder: Path, fallback: Any) -> Any:
    if not (folder / "tokenizer_config.json").is_file():
        return fallback
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _generate(model: Any, adapter: str | None, *args: Any, **kwargs: Any) -> list[dict]:
    """predict_examples with the run's adapter switched on (or every adapter off)."""
    if adapter is None and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return predict_examples(model, *args, **kwargs)
    if adapter is not None:
        model.set_adapter(adapter)
    return predict_examples(model, *args, **kwargs)


def answer_try(db: Database, request_id: int, cache: ModelCache | None = None) -> dict:
    """Run a try request's sentence through each of its runs; store and return the outputs.

    Each run's output shows its stage while it works (``stage``, ``stage_since``) and, once
    done, ``seconds`` with ``load_s`` (0 when the model was in memory: ``cached``) and
    ``generate_s``."""
    cache = cache if cache is not None else ModelCache()
    req = get_try(db, request_id)
    db.execute("UPDATE try_requests SET status = 'running' WHERE id = ?", [request_id])
    db.conn.commit()
    text = req["text"]
    example = Example(id=-1, text=text, spans=(), split="test")
    outputs: dict[str, dict] = {}

    def show(run_id: int, out: dict) -> None:
        outputs[str(run_id)] = out
        db.execute("UPDATE try_requests SET outputs = ? WHERE id = ?", [json.dumps(outputs), request_id])
        db.conn.commit()

    for run_id in req["run_ids"]:
        started = time.perf_counter()
        load_s = generate_s = 0.0
        cached = False
        try:
            run = get_run(db, run_id)
            if run["kind"] not in TRY_KINDS:
                raise NerlabError(f"Runs of kind {run['kind']!r} cannot answer new sentences.")
            cached = cache.has(run)
            if not cached:
                show(run_id, {"stage": LOADING, "stage_since": now()})
            if run["kind"] == "crf":
                model = cache.crf(run)
                load_s = time.perf_counter() - started
                tick = time.perf_counter()
                spans = crf.crf_predict(model, [Example(id=-1, text=text, spans=(),
                                                        tokens=tuple(tokenize(text)))])[0]
                generate_s = time.perf_counter() - tick
                result = {"spans": [s.to_dict() for s in spans], "raw": "", "status": "ok"}
            elif run["kind"] == "encoder":
                predictor = cache.encoder(db, run)
                load_s = time.perf_counter() - started
                tick = time.perf_counter()
                found = predictor.predict([Example(id=-1, text=text, spans=(),
                                                   tokens=tuple(tokenize(text)))])[0]
                generate_s = time.perf_counter() - tick
                result = {"spans": [s.to_dict() for s in found.spans], "raw": found.raw,
                          "status": "ok"}
            else:
                model, tokenizer, adapter = cache.model(db, run)
                plan = cache.plan(db, run)
                load_s = time.perf_counter() - started
                show(run_id, {"stage": GENERATING, "stage_since": now(), "load_s": round(load_s, 2),
                              "cached": cached})
                tick = time.perf_counter()
                row = _generate(model, adapter, tokenizer, plan, [example], batch_size=1)[0]
                generate_s = time.perf_counter() - tick
                result = {"spans": [s.to_dict() for s in row["spans"]], "raw": row["raw_output"],
                          "status": row["parse_status"]}
        except Exception as exc:  # noqa: BLE001 - one run's failure must not hide the others
            message = str(exc) if isinstance(exc, NerlabError) else f"{type(exc).__name__}: {exc}"
            result = {"spans": [], "raw": "", "status": "error", "error": message}
        result.update(seconds=round(time.perf_counter() - started, 2), load_s=round(load_s, 2),
                      generate_s=round(generate_s, 2), cached=cached)
        show(run_id, result)
    db.execute("UPDATE try_requests SET status = 'finished', finished_at = ? WHERE id = ?",
               [now(), request_id])
    db.conn.commit()
    return outputs


def _claim_next(db: Database) -> int | None:
    row = db.execute("SELECT id FROM try_requests WHERE status = 'queued' ORDER BY id LIMIT 1"
                     ).fetchone()
    if row is None:
        return None
    cursor = db.execute("UPDATE try_requests SET status = 'running', pid = ? WHERE id = ?"
                        " AND status = 'queued'", [os.getpid(), row[0]])
    db.conn.commit()
    return int(row[0]) if cursor.rowcount == 1 else None


def serve(idle_s: float = IDLE_S) -> int:
    """Answer requests as they come, keeping the models loaded; end after ``idle_s`` seconds
    without one (or when the data directory is gone)."""
    db_file = config.db_path()
    db = get_db(db_file)
    cache = ModelCache()
    last = time.monotonic()
    print(f"Answering 'try a sentence' requests (pid {os.getpid()}); ending after {idle_s:.0f} s "
          "without one.", flush=True)
    while True:
        if not db_file.exists():  # the data directory was deleted (a test's temporary one)
            return 0
        request_id = _claim_next(db)
        if request_id is not None:
            started = time.perf_counter()
            try:
                answer_try(db, request_id, cache)
            except Exception as exc:  # noqa: BLE001 - recorded for the page; serve the next one
                _fail(db, request_id, exc)
            print(f"Request {request_id} answered in {time.perf_counter() - started:.1f} s.",
                  flush=True)
            last = time.monotonic()
            continue
        if time.monotonic() - last > idle_s:
            with _lock():  # request_try queues under it: no request can slip in unanswered
                waiting = db.execute("SELECT 1 FROM try_requests WHERE status = 'queued'"
                                     " LIMIT 1").fetchone()
                if waiting is None:
                    with contextlib.suppress(OSError):
                        if _server_file().read_text().strip() == str(os.getpid()):
                            _server_file().unlink()
                    print("No request for a while: ending (the models are freed).", flush=True)
                    return 0
            continue
        time.sleep(POLL_S)


def _fail(db: Database, request_id: int, exc: BaseException) -> None:
    db.execute("UPDATE try_requests SET status = 'failed', error_message = ?, finished_at = ?"
               " WHERE id = ?", [f"{type(exc).__name__}: {exc}", now(), request_id])
    db.conn.commit()


def stage_text(output: dict) -> str:
    """``loading the model… 12 s`` for a run's output still in the works."""
    since = output.get("stage_since")
    took = ""
    if since:
        seconds = (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(since)).total_seconds()
        took = f" {max(0, int(seconds))} s"
    loaded = (f" (model loaded in {output['load_s']:.1f} s)"
              if output.get("stage") == GENERATING and not output.get("cached") else "")
    return f"{output.get('stage', 'working')}…{took}{loaded}"


def timing_text(output: dict) -> str:
    """``14.2 s: loading the model 13.0 s, generating 1.2 s`` or ``1.1 s (model in memory)``."""
    total = f"{output.get('seconds', 0):.1f} s"
    if output.get("cached"):
        return f"{total} (model in memory)"
    if "load_s" not in output:
        return total
    parts = [f"{LOADING} {output['load_s']:.1f} s"]
    if output.get("generate_s"):
        parts.append(f"{GENERATING} {output['generate_s']:.1f} s")
    return f"{total}: " + ", ".join(parts)


def spans_of(output: dict) -> list[Span]:
    """The spans of one try output (as stored: dicts)."""
    return [Span(int(s["start"]), int(s["end"]), str(s["label"])) for s in output.get("spans", [])]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.prediction.tryout serve`` (answer requests until idle) or
    ``python -m core.prediction.tryout try REQUEST_ID`` (answer one, then end)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    one = len(argv) == 2 and argv[0] == "try" and argv[1].isdigit()
    if not one and argv != ["serve"]:
        print("usage: python -m core.prediction.tryout serve | try REQUEST_ID", file=sys.stderr)
        return 2
    quiet.quiet_libraries()
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
    if not one:
        return serve()
    db = get_db()
    request_id = int(argv[1])
    try:
        answer_try(db, request_id)
    except Exception as exc:  # noqa: BLE001 - recorded for the page
        _fail(db, request_id, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
