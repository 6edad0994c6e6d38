"""A run's predictions on its dev/test sentences, stored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from core.data import projects
from core.data.db import now
from core.data.phases import predict_phase
from core.data.runs import RunContext
from core.data.spans import Example
from core.errors import StopRequested
from core.prediction.constrain import constraints_for
from core.prediction.decoding import DEFAULT_BATCH_SIZE, generate_details, token_budget
from core.prompts.formats import parse_output
from core.prompts.plan import PromptPlan


def store_predictions(db: Database, run_id: int, split: str, rows: Sequence[dict]) -> None:
    """Insert or replace predictions (one per sentence) in one transaction.

    Each row has ``sentence_id``, ``raw_output``, ``spans`` (list of Span), ``parse_status`` and
    optionally ``details`` (dict: hallucinated, unknown_types).
    """
    stamp = now()
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO predictions (run_id, sentence_id, split, raw_output, spans, parse_status,"
            " details, created_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (run_id, sentence_id) DO"
            " UPDATE SET split = excluded.split, raw_output = excluded.raw_output, spans ="
            " excluded.spans, parse_status = excluded.parse_status, details = excluded.details,"
            " created_at = excluded.created_at",
            [
                (run_id, r["sentence_id"], split, r.get("raw_output", ""),
                 json.dumps([s.to_dict() for s in r["spans"]]), r.get("parse_status", "ok"),
                 json.dumps(r.get("details") or {}), stamp)
                for r in rows
            ],
        )


def predict_examples(
    model: Any, tokenizer: Any, plan: PromptPlan, examples: Sequence[Example],
    batch_size: int = DEFAULT_BATCH_SIZE, progress: Callable[[int, int], None] | None = None,
    max_new_tokens: int | None = None, constrained: bool = True,
) -> list[dict]:
    """Generate and parse answers for examples; returns prediction rows for :func:`store_predictions`.

    ``max_new_tokens`` lowers every sentence's budget (a quick look; answers may be cut short).
    ``constrained`` decodes with :mod:`core.prediction.constrain` (well-formed answers, entities
    only whole tokens of the sentence); the spans are then the constraint's, which the parser
    reads back identically. ``details`` holds the answer tokens' mean and minimum
    log-probability (``mean_logprob``, ``min_logprob``): the model's confidence.
    """
    prompts = [plan.prompt(tokenizer, ex.id, ex.text) for ex in examples]
    caps = [token_budget(tokenizer, ex.text, plan.template.output_format) for ex in examples]
    if max_new_tokens:
        caps = [min(c, int(max_new_tokens)) for c in caps]
    constraints = (constraints_for(tokenizer, examples, plan.label_names,
                                   plan.template.output_format) if constrained else None)
    gens = generate_details(model, tokenizer, prompts, caps, batch_size=batch_size,
                            progress=progress, constraints=constraints)
    rows = []
    for ex, gen in zip(examples, gens, strict=True):
        parsed = parse_output(plan.template, gen.text, ex.text, plan.label_names, ex.token_offsets())
        details = {**parsed.details(), "mean_logprob": gen.mean_logprob,
                   "min_logprob": gen.min_logprob, "constrained": constrained}
        if constrained:
            details["completed"] = gen.completed
        rows.append({"sentence_id": ex.id, "raw_output": gen.text,
                     "spans": list(gen.spans) if gen.spans is not None else list(parsed.spans),
                     "parse_status": parsed.status, "details": details})
    return rows


def deal(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Process ``rank``'s share of ``items``: every ``world``-th one from ``rank`` on (sorted by
    length beforehand, so every process gets sentences of about the same lengths)."""
    return list(items[rank::world])


def merge(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Undo :func:`deal`: ``parts[r]`` was process r's share; the items in their first order."""
    out: list[Any] = []
    for i in range(max((len(p) for p in parts), default=0)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def sharded_rounds(group: Any, ordered: Sequence[Any], step: int,
                   predict: Callable[[list[Any]], list[dict]],
                   should_stop: Callable[[], bool]) -> Iterator[tuple[list[Any], list[dict]]]:
    """Predict ``ordered`` over the run's processes, ``step`` sentences per process per round.

    Each round takes the next ``step × world`` sentences, deals them out (:func:`deal`), and
    gathers every process's rows on rank 0, merged back into the round's order: rank 0 gets
    ``(chunk, rows)`` with one row per sentence of the chunk, in order; the other processes get
    ``(chunk, [])``. The processes agree on a stop before each round (StopRequested on all of
    them). ``group`` is a :class:`core.training.distributed.Group` (None: this process alone).
    """
    world = group.world if group is not None and group.enabled else 1
    rank = group.rank if world > 1 else 0
    size = max(1, step) * world
    for start in range(0, len(ordered), size):
        if (group.any_true(should_stop()) if world > 1 else should_stop()):
            raise StopRequested()
        chunk = list(ordered[start : start + size])
        mine = deal(chunk, rank, world)
        rows = predict(mine) if mine else []
        if world > 1:
            parts = group.gather_object(rows)
            rows = merge(parts) if parts is not None else []
        yield chunk, rows


#: Batches of sentences handed to one generation call when a run predicts its splits.
CALL_BATCHES = 4


@dataclass(frozen=True)
class PredictSettings:
    """What a run predicts after its model is ready, and how.

    Attributes:
        splits: the splits whose labelled sentences are predicted.
        limit: at most this many sentences per split (None = all).
        batch_size: prompts generated together.
        max_new_tokens: a cap on every answer's length (None = from the sentence).
        progress_rows: write a progress row per batch (a training run keeps its rows for its
            loss curve and only beats the heartbeat).
        constrained: decode with the answer constraint (on by default; off to compare).
    """

    splits: tuple[str, ...] = ("dev", "test")
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    max_new_tokens: int | None = None
    progress_rows: bool = True
    constrained: bool = True


def predict_run(ctx: RunContext, model: Any, tokenizer: Any, plan: PromptPlan,
                settings: PredictSettings) -> None:
    """Predict the labelled sentences of the settings' splits and store them.

    Called by the worker after training (with the trained model still in memory and the prompt
    plan it was trained with) and by the LLM baselines. Each split is a phase of the run with
    its progress and ETA. The sentences go longest first, :data:`CALL_BATCHES` batches per call,
    and every call's rows are stored as soon as they are generated: a stop (checked between
    calls, or raised inside one by the worker) keeps everything stored so far.

    In a run over several processes (``ctx.group``) every process calls this with its copy of
    the model: each predicts its share of every batch, and rank 0 gathers and stores the rows
    (:func:`sharded_rounds`); a stop is agreed on between batches.
    """
    db, run = ctx.db, ctx.run
    group = getattr(ctx, "group", None)
    main = group is None or group.main
    todo = {}
    for split in settings.splits:
        items = projects.examples(db, run["project_id"], split=split)
        todo[split] = items[: settings.limit] if settings.limit else items
    total = sum(len(v) for v in todo.values())
    if total == 0:
        ctx.log(f"No labelled sentences in {', '.join(settings.splits)} to predict.")
        return
    shots = f", {plan.shots} {plan.selection} example(s)" if plan.shots else ""
    ctx.log(f"Predicting {total} sentence(s) with template {plan.template.label}{shots}, "
            f"batch size {settings.batch_size}.")
    done = 0
    started = time.perf_counter()
    # A few batches per call: rows join the batch as others finish (continuous batching), so
    # only the call's last passes run with few rows; rows are stored at the end of each call.
    step = max(1, settings.batch_size) * CALL_BATCHES
    for split, items in todo.items():
        if not items:
            continue
        ctx.phase(predict_phase(split, len(items)))
        split_started = time.perf_counter()
        ordered = sorted(items, key=lambda e: len(e.text), reverse=True)
        chars_left = sum(len(e.text) for e in ordered)
        chars_done, split_done, failed = 0, 0, 0
        def predict_chunk(chunk: list[Example]) -> list[dict]:
            def within(k: int, _n: int) -> None:  # progress inside the call (one process)
                if group is None or not group.enabled:
                    # the split's count so far, read when called (late binding on purpose)
                    ctx.phase_progress(split_done + k, len(items))  # noqa: B023

            return predict_examples(model, tokenizer, plan, chunk, batch_size=settings.batch_size,
                                    max_new_tokens=settings.max_new_tokens,
                                    constrained=settings.constrained, progress=within)

        for chunk, rows in sharded_rounds(group, ordered, step, predict_chunk, ctx.should_stop):
            if main:
                store_predictions(db, run["id"], split, rows)
            done += len(chunk)
            split_done += len(chunk)
            size = sum(len(e.text) for e in chunk)
            chars_done, chars_left = chars_done + size, chars_left - size
            failed += sum(r["parse_status"] == "unparsable" for r in rows)
            # Answers are about as long as their sentences: the ETA goes by characters left.
            took = time.perf_counter() - split_started
            eta = took / max(chars_done, 1) * chars_left
            if settings.progress_rows:
                rate = done / max(time.perf_counter() - started, 1e-9)
                ctx.progress(done, total, eta_s=(total - done) / rate if rate else None)
            else:
                ctx.heartbeat()
            ctx.phase_progress(split_done, len(items), eta_s=eta)
        took = time.perf_counter() - split_started
        ctx.log(f"  {split}: {len(items)} sentences in {took:.1f} s "
                f"({len(items) / max(took, 1e-9):.2f} sentences/s; {failed} unparsable)")
