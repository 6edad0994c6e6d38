"""Fast batched generation and the predictions of a run on its dev and test sentences.

Generation for NER is short and bounded by the sentence, so :func:`generate`:

- sorts prompts by length (similar lengths share a batch: little padding, similar budgets),
- pads on the left (every row's next token sits in the last column),
- decodes greedily with the KV cache,
- caps each row's new tokens by its own budget (:func:`token_budget`, from the sentence), and
- stops a row at end-of-sequence; the batch ends when every row has stopped.

:func:`predict_run` renders each sentence with the run's template (and its examples, fixed or
retrieved), generates, parses the answers with :func:`core.templates.parse_output` and stores
them in ``predictions``. Heavy imports (torch, transformers, peft) happen inside functions.

``python -m core.inference try REQUEST_ID`` answers a Compare page "type a sentence" request in
its own process (see :func:`request_try`), so a page never loads a model in its thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlite_utils import Database

from core import config, projects
from core.db import now
from core.errors import NerlabError, NotFound
from core.jobs import pid_alive
from core.spans import Example, Span

#: Prompts generated together; lower it when a GPU runs out of memory.
DEFAULT_BATCH_SIZE = 16
#: Sentences generated (and stored) between two stop checks and progress rows.
CHUNK = 64
#: Answer budget per output format: ``factor × sentence tokens + extra`` new tokens.
BUDGETS = {"json_list": (2.0, 32), "json_dict": (1.6, 24), "inline_tags": (1.5, 24)}
MAX_BUDGET = 1024
TRY_KINDS = ("train", "zero-shot", "few-shot", "crf")


# ---------------------------------------------------------------------------------------------
# Generation


def token_budget(tokenizer: Any, text: str, output_format: str = "json_list") -> int:
    """Most new tokens an answer about ``text`` may need (the sentence bounds the answer).

    Every answer format repeats at most each word of the sentence once plus a little syntax per
    entity, so a multiple of the sentence's token count is enough (checked on the demo data).
    """
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    factor, extra = BUDGETS.get(output_format, BUDGETS["json_list"])
    return min(MAX_BUDGET, int(factor * n) + extra)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _encode(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    # A chat-templated prompt already holds its special tokens; a plain one gets BOS if the
    # tokenizer adds it (the same rule as training, which tokenizes build_chat's text).
    special = not getattr(tokenizer, "chat_template", None)
    return [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]


def _common_prefix(ids: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence shares (each keeps at least one own token)."""
    first = ids[0]
    n = min(len(x) for x in ids) - 1
    for k in range(max(n, 0)):
        t = first[k]
        if any(x[k] != t for x in ids):
            return k
    return max(n, 0)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: Sequence[int] | int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    prefix_cache: bool = True,
) -> list[str]:
    """Greedy answers to many prompts, batched; returned in the prompts' order.

    Args:
        model: a causal LM (optionally a peft model with an adapter), in eval mode or not.
        tokenizer: its tokenizer (a pad token is needed; EOS serves when there is none).
        prompts: complete prompts (e.g. from :func:`core.templates.build_chat`).
        max_new_tokens: one budget for all prompts, or one per prompt.
        batch_size: prompts per forward pass.
        progress: called with ``(done, total)`` after each batch.
        prefix_cache: compute the key/value cache of the instruction the prompts share once and
            reuse it for every batch (falls back to plain ``generate`` for models that refuse).

    Returns:
        The decoded new text of each prompt, cut at end-of-sequence, special tokens removed.
    """
    import torch

    n = len(prompts)
    if n == 0:
        return []
    caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
    if len(caps) != n:
        raise ValueError(f"{n} prompts but {len(caps)} token budgets")
    ids = _encode(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    # Longest first: a batch that does not fit in memory fails at once, not at the end.
    order = sorted(range(n), key=lambda i: (len(ids[i]), caps[i]), reverse=True)
    out: list[str] = [""] * n
    was_training = model.training
    model.eval()
    shared = None
    try:
        with torch.inference_mode():
            if prefix_cache and n > 1:
                shared = _prefix(model, ids)
            done = 0
            for b in range(0, n, max(1, batch_size)):
                rows = order[b : b + batch_size]
                budget = [caps[i] for i in rows]
                new = None
                if shared is not None:
                    try:
                        new = _greedy(model, [ids[i] for i in rows], budget, eos, pad_id, shared)
                    except Exception:  # noqa: BLE001 - architectures the manual loop cannot drive
                        shared = None
                if new is None:
                    new = _generate_hf(model, [ids[i] for i in rows], budget, eos, pad_id)
                for r, i in enumerate(rows):
                    tokens = new[r][: caps[i]]
                    for k, t in enumerate(tokens):
                        if t in eos:
                            tokens = tokens[:k]
                            break
                    out[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                done += len(rows)
                if progress is not None:
                    progress(done, n)
    finally:
        if was_training:
            model.train()
    return out


def _device(model: Any):
    return next(model.parameters()).device


def _prefix(model: Any, ids: Sequence[Sequence[int]]) -> tuple[int, Any] | None:
    """``(length, cache)`` of the prompts' shared prefix, or None when it is too short to pay."""
    import torch

    length = _common_prefix(ids)
    if length < 8:
        return None
    try:
        out = model(input_ids=torch.tensor([list(ids[0][:length])], device=_device(model)),
                    use_cache=True, logits_to_keep=1)
    except Exception:  # noqa: BLE001 - no cache support: plain generate
        return None
    cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return length, cache


def _greedy(model: Any, rows: Sequence[Sequence[int]], budget: Sequence[int], eos: Sequence[int],
            pad_id: int, shared: tuple[int, Any]) -> list[list[int]]:
    """Greedy decoding of one batch on top of the shared prefix's cache.

    The suffixes (what differs between prompts) are left-padded after the prefix; rows leave
    the batch (and its cache) as soon as they reach EOS or their budget.
    """
    import copy

    import torch

    device = _device(model)
    plen, prefix_cache = shared
    suffixes = [list(r[plen:]) for r in rows]
    width = max(len(s) for s in suffixes)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, plen + width), dtype=torch.long)
    mask[:, :plen] = 1
    for r, s in enumerate(suffixes):
        input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, plen + width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, plen:]
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(batch)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    results: list[list[int]] = [[] for _ in rows]
    alive = list(range(batch))  # original row of each batch position
    eos_set = set(eos)
    last_pos = positions[:, -1:]
    logits = out.logits[:, -1, :]
    while alive:
        nxt = logits.argmax(-1).tolist()
        keep = []
        for k, row in enumerate(alive):
            results[row].append(nxt[k])
            if nxt[k] not in eos_set and len(results[row]) < budget[row]:
                keep.append(k)
        if not keep:
            break
        tokens = torch.tensor([[nxt[k]] for k in keep], dtype=torch.long, device=device)
        if len(keep) != len(alive):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask, last_pos = mask[index], last_pos[index]
            alive = [alive[k] for k in keep]
        mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=tokens, attention_mask=mask, position_ids=last_pos,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :]
    return results


def _generate_hf(model: Any, rows: Sequence[Sequence[int]], budget: Sequence[int],
                 eos: Sequence[int], pad_id: int) -> list[list[int]]:
    """One left-padded batch through ``model.generate`` (greedy, KV cache, per-row budgets)."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    device = _device(model)
    width = max(len(s) for s in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, seq in enumerate(rows):
        input_ids[r, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, width - len(seq):] = 1

    class _RowBudget(StoppingCriteria):
        """Stops each row at its own budget (generate already stops rows at EOS)."""

        def __init__(self) -> None:
            self.budgets = torch.tensor(list(budget), device=device)

        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - transformers' API
            return (input_ids.shape[1] - width) >= self.budgets

    gen_config = GenerationConfig(
        max_new_tokens=max(budget), do_sample=False, num_beams=1, use_cache=True,
        pad_token_id=pad_id, eos_token_id=list(eos) or None,
    )
    generated = model.generate(
        input_ids=input_ids.to(device), attention_mask=mask.to(device),
        generation_config=gen_config, stopping_criteria=StoppingCriteriaList([_RowBudget()]),
    )
    return generated[:, width:].tolist()


def generate_one_by_one(model: Any, tokenizer: Any, prompts: Sequence[str],
                        max_new_tokens: Sequence[int] | int) -> list[str]:
    """Plain ``generate`` on one prompt at a time: the reference the benchmark compares with."""
    import torch

    caps = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    eos = _eos_ids(model, tokenizer)
    out = []
    model.eval()
    for cap, seq in zip(caps, _encode(tokenizer, prompts), strict=True):
        with torch.inference_mode():
            generated = model.generate(
                input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long),
                max_new_tokens=cap, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos or None,
            )
        tokens = [t for t in generated[0, len(seq):].tolist()]
        for k, t in enumerate(tokens):
            if t in eos:
                tokens = tokens[:k]
                break
        out.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return out


# ---------------------------------------------------------------------------------------------
# Prompts of a run


@dataclasses.dataclass
class PromptPlan:
    """How a run asks its model: template, entity types, and where its examples come from."""

    template: Any  # core.templates.PromptTemplate
    labels: list[dict]
    shots: int = 0
    selection: str = "none"  # "none" | "fixed" | "retrieved"
    train: list[Example] = dataclasses.field(default_factory=list)
    fixed: list[Example] = dataclasses.field(default_factory=list)
    _retriever: Any = None

    @property
    def label_names(self) -> list[str]:
        return [r["name"] for r in self.labels]

    def shots_for(self, example_id: int | None, text: str) -> list[Example]:
        """The examples shown with one sentence (never the sentence itself)."""
        if self.shots <= 0:
            return []
        if self.selection == "fixed":
            return [e for e in self.fixed if e.id != example_id][: self.shots]
        if self._retriever is None:
            from core.retrieval import ExampleRetriever

            self._retriever = ExampleRetriever(self.train, method=self.template.retrieval)
        return list(self._retriever.top_k(text, self.shots, exclude_id=example_id))

    def prompt(self, tokenizer: Any, example_id: int | None, text: str) -> str:
        from core import templates

        prompt, _ = templates.build_chat(
            tokenizer, self.template, text, self.labels, shots=self.shots_for(example_id, text)
        )
        return prompt


def fixed_shots(train: Sequence[Example], k: int) -> list[Example]:
    """``k`` training examples that cover every entity type, shortest first (short prompts)."""
    if k <= 0:
        return []
    with_spans = sorted((e for e in train if e.spans), key=lambda e: (len(e.text), e.id))
    chosen: list[Example] = []
    covered: set[str] = set()
    for ex in with_spans:
        new = {s.label for s in ex.spans} - covered
        if new and 30 <= len(ex.text):
            chosen.append(ex)
            covered |= new
        if len(chosen) >= k:
            break
    for ex in [*with_spans, *(e for e in sorted(train, key=lambda e: len(e.text)) if not e.spans)]:
        if len(chosen) >= k:
            break
        if ex not in chosen and len(ex.text) >= 30:
            chosen.append(ex)
    return chosen[:k]


def run_template(db: Database, run: dict) -> Any:
    """The template version the run recorded, else the project's current default template."""
    from core import templates

    if run.get("template_id"):
        return templates.get_template_by_id(db, run["template_id"])
    name = (run.get("config") or {}).get("template") if isinstance(run.get("config"), dict) else None
    return templates.get_template(db, run["project_id"], name or "default")


def plan_for_run(db: Database, run: dict, cfg: dict | None = None) -> PromptPlan:
    """Template, entity types and examples of a run.

    The run's config may set ``shots`` (number of examples) and ``selection`` (``fixed`` or
    ``retrieved``); otherwise the template's own ``n_examples`` are retrieved, as in training.
    """
    cfg = cfg if cfg is not None else (run.get("config") or {})
    if isinstance(cfg, str):
        cfg = json.loads(cfg or "{}")
    tpl = run_template(db, run)
    shots = int(cfg.get("shots", tpl.n_examples) or 0)
    selection = cfg.get("selection") or ("retrieved" if shots else "none")
    if shots and selection not in ("fixed", "retrieved"):
        raise NerlabError(f"Example selection {selection!r} is not 'fixed' or 'retrieved'.")
    if shots != tpl.n_examples:
        if shots and "examples" not in tpl.placeholders:
            raise NerlabError(
                f"Template {tpl.label} has no {{examples}} placeholder, so it cannot show "
                f"{shots} example(s). Add {{examples}} to it on the Template page."
            )
        tpl = dataclasses.replace(tpl, n_examples=shots)
    train = projects.examples(db, run["project_id"], split="train") if shots else []
    if shots and not train:
        raise NerlabError("Few-shot prompts need labelled training sentences; there are none.")
    return PromptPlan(
        template=tpl,
        labels=projects.list_labels(db, run["project_id"]),
        shots=shots,
        selection=selection if shots else "none",
        train=train,
        fixed=fixed_shots(train, shots) if selection == "fixed" else [],
    )


# ---------------------------------------------------------------------------------------------
# Predictions of a run


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


def _check_stop(ctx: Any) -> None:
    check = getattr(ctx, "check_stop", None)
    if check is not None:
        check()
    elif getattr(ctx, "should_stop", lambda: False)():
        raise NerlabError("Stopped on request.")


def predict_examples(
    model: Any, tokenizer: Any, plan: PromptPlan, examples: Sequence[Example],
    batch_size: int = DEFAULT_BATCH_SIZE, progress: Callable[[int, int], None] | None = None,
    max_new_tokens: int | None = None,
) -> list[dict]:
    """Generate and parse answers for examples; returns prediction rows for :func:`store_predictions`.

    ``max_new_tokens`` lowers every sentence's budget (a quick look; answers may be cut short).
    """
    from core import templates

    prompts = [plan.prompt(tokenizer, ex.id, ex.text) for ex in examples]
    caps = [token_budget(tokenizer, ex.text, plan.template.output_format) for ex in examples]
    if max_new_tokens:
        caps = [min(c, int(max_new_tokens)) for c in caps]
    raws = generate(model, tokenizer, prompts, caps, batch_size=batch_size, progress=progress)
    rows = []
    for ex, raw in zip(examples, raws, strict=True):
        parsed = templates.parse_output(plan.template, raw, ex.text, plan.label_names)
        rows.append({
            "sentence_id": ex.id,
            "raw_output": raw,
            "spans": list(parsed.spans),
            "parse_status": parsed.status,
            "details": {"hallucinated": list(parsed.hallucinated),
                        "unknown_types": list(parsed.unknown_types)},
        })
    return rows


def predict_run(
    ctx: Any,
    model: Any,
    tokenizer: Any,
    splits: Sequence[str] = ("dev", "test"),
    limit: int | None = None,
    report_progress: bool | None = None,
) -> None:
    """Predict the labelled sentences of ``splits`` with the run's template and store them.

    Called by the worker after training (with the trained model still in memory) and by the
    LLM baselines. Checks for a stop request between chunks; what was stored stays stored.

    Args:
        ctx: the worker's RunContext (``db``, ``run``, ``config``, ``log``...).
        limit: predict at most this many sentences per split (``config["limit"]`` too).
            ``config["max_new_tokens"]`` caps the answers' length (default: from the sentence).
        report_progress: write progress rows (default: for every kind but ``train``, whose
            progress rows are its loss curve).
    """
    db, run = ctx.db, ctx.run
    cfg = dict(getattr(ctx, "config", None) or run.get("config") or {})
    plan = plan_for_run(db, run, cfg)
    limit = limit if limit is not None else cfg.get("limit")
    batch_size = int(cfg.get("eval_batch_size") or DEFAULT_BATCH_SIZE)
    if report_progress is None:
        report_progress = run.get("kind") != "train"
    todo = {}
    for split in splits:
        items = projects.examples(db, run["project_id"], split=split)
        todo[split] = items[: int(limit)] if limit else items
    total = sum(len(v) for v in todo.values())
    if total == 0:
        ctx.log(f"No labelled sentences in {', '.join(splits)} to predict.")
        return
    shots = f", {plan.shots} {plan.selection} example(s)" if plan.shots else ""
    ctx.log(f"Predicting {total} sentence(s) with template {plan.template.label}{shots}, "
            f"batch size {batch_size}.")
    done = 0
    started = time.perf_counter()
    for split, items in todo.items():
        for c in range(0, len(items), CHUNK):
            _check_stop(ctx)
            chunk = items[c : c + CHUNK]

            def batch_done(k: int, _n: int, before: int = done) -> None:
                now_done = before + k
                rate = now_done / max(time.perf_counter() - started, 1e-9)
                if report_progress:
                    ctx.progress(now_done, total, eta_s=(total - now_done) / rate if rate else None)
                else:
                    ctx.heartbeat()
                _check_stop(ctx)  # between batches: a stop does not wait for the whole chunk

            rows = predict_examples(model, tokenizer, plan, chunk, batch_size=batch_size,
                                    max_new_tokens=cfg.get("max_new_tokens"), progress=batch_done)
            store_predictions(db, run["id"], split, rows)
            done += len(chunk)
            rate = done / max(time.perf_counter() - started, 1e-9)
            failed = sum(r["parse_status"] == "unparsable" for r in rows)
            ctx.log(f"  {split}: {min(c + CHUNK, len(items))}/{len(items)} sentences "
                    f"({rate:.2f} sentences/s; {failed} unparsable in this chunk)")


# ---------------------------------------------------------------------------------------------
# "Type a sentence": the Compare page's requests, answered in a short worker process


def request_try(db: Database, project_id: int, text: str, run_ids: Sequence[int],
                spawn: bool = True) -> int:
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
    if spawn:
        env = dict(os.environ)
        root = str(config.project_root())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[config.HOME_ENV] = str(config.home())
        log = config.runs_dir() / f"try-{request_id}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - an argument list, never a shell
                [sys.executable, "-m", "core.inference", "try", str(request_id)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env,
                start_new_session=True, close_fds=True,
            )
        db.execute("UPDATE try_requests SET pid = ? WHERE id = ?", [proc.pid, request_id])
        db.conn.commit()
    return request_id


def get_try(db: Database, request_id: int) -> dict:
    """A try request with ``outputs`` parsed; a request whose process died is marked failed."""
    rows = list(db.query("SELECT * FROM try_requests WHERE id = ?", [int(request_id)]))
    if not rows:
        raise NotFound(f"No request {request_id}.")
    row = dict(rows[0])
    if row["status"] in ("queued", "running") and row["pid"] and not pid_alive(row["pid"], b"core.inference"):
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
    from core import models

    if run["kind"] == "train":
        from core import train

        model, tokenizer = train.load_adapter(train.adapter_path(db, run["id"]))
        tokenizer.padding_side = "left"
        return model, tokenizer
    cfg = run.get("config") or {}
    base = run.get("base_model") or cfg.get("base_model") or config.BUNDLED_MODEL
    model, tokenizer = models.load_model(base)
    model.eval()
    return model, tokenizer


def answer_try(db: Database, request_id: int) -> dict:
    """Run a try request's sentence through each of its runs; store and return the outputs."""
    req = get_try(db, request_id)
    db.execute("UPDATE try_requests SET status = 'running' WHERE id = ?", [request_id])
    db.conn.commit()
    from core import evaluate

    text = req["text"]
    example = Example(id=-1, text=text, spans=(), split="test")
    outputs: dict[str, dict] = {}
    for run_id in req["run_ids"]:
        started = time.perf_counter()
        try:
            run = evaluate.get_run(db, run_id)
            run = dict(run, config=json.loads(run["config"] or "{}"))
            if run["kind"] == "crf":
                from core import baselines

                spans = baselines.crf_predict_text(run, text)
                result = {"spans": [s.to_dict() for s in spans], "raw": "", "status": "ok"}
            elif run["kind"] in TRY_KINDS:
                model, tokenizer = load_run_model(db, run)
                plan = plan_for_run(db, run)
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
    """``python -m core.inference try REQUEST_ID``."""
    from core.db import get_db

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "try" or not argv[1].isdigit():
        print("usage: python -m core.inference try REQUEST_ID", file=sys.stderr)
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
