"""Fast batched greedy generation with the shared-prefix cache, free or constrained.

Generation for NER is short and bounded by the sentence, so :func:`generate_details`:

- sorts prompts by length (similar lengths share a batch: little padding, similar budgets),
- pads on the left (every row's next token sits in the last column),
- computes the key/value cache of the instruction every prompt shares once per call,
- decodes greedily, each row capped by its own budget (:func:`token_budget`, from the sentence),
- stops a row at end-of-sequence, and lets the next prompt take its place (continuous
  batching: a batch never runs its last passes with a few rows while prompts wait).

With ``constraints`` (one :class:`core.prediction.constrain.AnswerConstraint` per prompt, or
None) a row only takes tokens its constraint allows (the argmax when allowed, else the best
allowed token), stops as soon as its answer is closed, and is completed by the constraint when
its budget runs out; its answer is then the constraint's text and its spans the constraint's.
Each chosen token's log-probability under the model (the unconstrained distribution) is kept:
a confidence for "least confident first" labelling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from core.data.spans import Span
from core.prediction import kvcache, lookup
from core.prompts import formats

#: Prompts generated together; lower it when a GPU runs out of memory. On 2 CPU cores a drafted,
#: constrained batch of 32 made 10-25% more sentences per second than one of 16 (the cost of a
#: forward pass beyond its tokens is shared by twice the rows); the demo run's prediction peak
#: was ~430 MB higher (the larger key/value cache).
DEFAULT_BATCH_SIZE = 32


#: The most new tokens any answer gets.
MAX_BUDGET = 1024


def token_budget(tokenizer: Any, text: str, output_format: str = "json_list") -> int:
    """Most new tokens an answer about ``text`` may need (the sentence bounds the answer).

    Every answer format repeats at most each word of the sentence once plus a little syntax per
    entity, so a multiple of the sentence's token count is enough (checked on the demo data).
    """
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    factor, extra = formats.get_format(output_format).budget
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


@dataclasses.dataclass
class Generation:
    """One generated answer.

    Attributes:
        text: the answer (decoded, or the constraint's text when constrained), stripped.
        tokens: the generated token ids, end-of-sequence excluded.
        logprobs: the model's log-probability of each of those tokens (before any constraint).
        spans: the entities' spans from the constraint; None when unconstrained.
        completed: the constraint appended text to close an answer cut short by its budget (or
            stuck); that text has no log-probabilities.
        forward_passes: the forward passes that made the tokens (prompt included): fewer than
            the tokens when drafts were accepted.
    """

    text: str
    tokens: list[int]
    logprobs: list[float]
    spans: list[Span] | None = None
    completed: bool = False
    forward_passes: int = 0

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None

    @property
    def min_logprob(self) -> float | None:
        return min(self.logprobs) if self.logprobs else None


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: Sequence[int] | int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    prefix_cache: bool = True,
    constraints: Sequence[Any | None] | None = None,
    draft: int | None = None,
) -> list[str]:
    """Greedy answers to many prompts, batched; returned in the prompts' order.

    The answers' text of :func:`generate_details` (see there for the arguments).
    """
    return [g.text for g in generate_details(model, tokenizer, prompts, max_new_tokens, batch_size,
                                             progress, prefix_cache, constraints, draft)]


def generate_details(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: Sequence[int] | int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    prefix_cache: bool = True,
    constraints: Sequence[Any | None] | None = None,
    draft: int | None = None,
) -> list[Generation]:
    """Greedy answers to many prompts, batched, with their tokens' log-probabilities; returned
    in the prompts' order.

    Args:
        model: a causal LM (optionally a peft model with an adapter), in eval mode or not.
        tokenizer: its tokenizer (a pad token is needed; EOS serves when there is none).
        prompts: complete prompts (e.g. from :func:`core.prompts.render.build_chat`).
        max_new_tokens: one budget for all prompts, or one per prompt.
        batch_size: prompts per forward pass.
        progress: called with ``(done, total)`` as prompts are done.
        prefix_cache: compute the key/value cache of the instruction the prompts share once and
            reuse it for every batch (falls back to plain ``generate`` for models that refuse).
        constraints: one constraint per prompt (:class:`core.prediction.constrain.AnswerConstraint`, or
            None for a free row), e.g. from :func:`core.prediction.constrain.constraints_for`.
        draft: draft tokens per row and forward pass, looked up in the prompt, the sentence
            and the answer so far (:mod:`core.prediction.lookup`); the answers stay the greedy
            ones. None: :data:`core.prediction.lookup.DRAFT_TOKENS`; 0: off. Only with the
            shared-prefix cache.

    Returns:
        One :class:`Generation` per prompt: the decoded new text, cut at end-of-sequence,
        special tokens removed (or the constraint's closed answer and spans).
    """
    import torch

    n = len(prompts)
    draft = lookup.DRAFT_TOKENS if draft is None else max(0, int(draft))
    if n == 0:
        return []
    caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
    if len(caps) != n:
        raise ValueError(f"{n} prompts but {len(caps)} token budgets")
    cons = list(constraints) if constraints is not None else [None] * n
    if len(cons) != n:
        raise ValueError(f"{n} prompts but {len(cons)} constraints")
    ids = _encode(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    # Longest first: a batch that does not fit in memory fails at once, not at the end.
    order = sorted(range(n), key=lambda i: (len(ids[i]), caps[i]), reverse=True)
    out: list[Generation] = [Generation("", [], [])] * n
    was_training = model.training
    model.eval()
    shared = None
    try:
        with torch.inference_mode():
            if prefix_cache and (n > 1 or draft):  # one prompt: for the drafts
                shared = _prefix(model, ids)
            done = 0

            def count(k: int) -> None:
                nonlocal done
                done += k
                if progress is not None:
                    progress(done, n)

            # One continuous batch over every prompt where the cache allows it (rows join as
            # others finish), else one batch after the other.
            together = shared is not None and kvcache.croppable(shared[1])
            step = n if together else max(1, batch_size)
            for b in range(0, n, step):
                rows = order[b : b + step]
                budget = [caps[i] for i in rows]
                row_cons = [cons[i] for i in rows]
                new = None
                if shared is not None:
                    drafters = [_drafter(tokenizer, ids[i], shared[0], cons[i]) for i in rows
                                ] if draft else None
                    try:
                        new = _greedy(model, [ids[i] for i in rows], budget, eos, pad_id, shared,
                                      row_cons, drafters, draft, width=max(1, batch_size),
                                      finished=count)
                    except Exception:  # noqa: BLE001 - architectures the manual loop cannot drive
                        shared = None
                        done = b
                        for c in row_cons:
                            if c is not None:
                                c.reset()
                if new is None:
                    new = ([], [], [])
                    for k in range(0, len(rows), max(1, batch_size)):
                        part = rows[k : k + max(1, batch_size)]
                        got = _generate_hf(model, [ids[i] for i in part], [caps[i] for i in part],
                                           eos, pad_id, [cons[i] for i in part])
                        new[0].extend(got[0])
                        new[1].extend(got[1])
                        new[2].extend(len(t) for t in got[0])
                        count(len(part))
                for r, i in enumerate(rows):
                    tokens, logprobs = new[0][r][: caps[i]], new[1][r][: caps[i]]
                    passes = new[2][r]
                    for k, t in enumerate(tokens):
                        if t in eos:
                            tokens, logprobs = tokens[:k], logprobs[:k]
                            break
                    c = cons[i]
                    if c is None:
                        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                        out[i] = Generation(text, tokens, logprobs, forward_passes=passes)
                    else:
                        text = c.finish().strip()
                        out[i] = Generation(text, tokens, logprobs, c.spans(), c.completed, passes)
    finally:
        if was_training:
            model.train()
    return out


def _drafter(tokenizer: Any, prompt_ids: Sequence[int], plen: int, constraint: Any | None) -> Any:
    """The :class:`core.prediction.lookup.Drafter` of one row: its sentence is the constraint's,
    or else the text of its prompt after the shared prefix."""
    if constraint is not None:
        refs = lookup.references(tokenizer, prompt_ids, constraint.text, constraint.format,
                                 constraint.labels)
    else:
        refs = lookup.references(tokenizer, prompt_ids,
                                 tokenizer.decode(list(prompt_ids[plen:]), skip_special_tokens=True))
    return lookup.Drafter(refs)


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
    cache = getattr(out, "cache", None)  # None from models without a key/value cache
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return length, cache


def _choose(logits: Any, constraints: Sequence[Any | None]) -> tuple[list[int], list[float]]:
    """Each row's next token (the argmax, or its constraint's best allowed token; -1 when the
    constraint allows none) and that token's log-probability under the model."""
    import torch

    chosen = logits.argmax(-1).tolist()
    for k, c in enumerate(constraints):
        if c is not None and not c.allows(chosen[k]):
            t = c.choose(logits[k])
            chosen[k] = -1 if t is None else t
    index = torch.tensor([[max(t, 0)] for t in chosen], dtype=torch.long, device=logits.device)
    logprobs = logits.gather(1, index).squeeze(1).float() - torch.logsumexp(logits.float(), dim=-1)
    return chosen, logprobs.tolist()


def _greedy(model: Any, rows: Sequence[Sequence[int]], budget: Sequence[int], eos: Sequence[int],
            pad_id: int, shared: tuple[int, Any], constraints: Sequence[Any | None] | None = None,
            drafters: Sequence[Any] | None = None, draft: int = 0, width: int = 0,
            finished: Callable[[int], None] | None = None,
            ) -> tuple[list[list[int]], list[list[float]], list[int]]:
    """Greedy decoding of ``rows`` on top of the shared prefix's cache, at most ``width`` rows
    at a time (0: all): ``(tokens, their log-probabilities, forward passes)`` per row.

    The suffixes (what differs between prompts) are left-padded after the prefix; rows leave
    the batch (and its cache) as soon as they reach EOS or their budget, or their constraint
    closes their answer (only EOS could follow). Rows waiting their turn join as places free up
    (continuous batching; a quarter of ``width`` at a time, or all when the batch has emptied):
    their prompts take one forward pass together, the batch's cache drops the positions no row
    attends to and takes theirs (:mod:`core.prediction.kvcache`). ``finished(n)`` is called
    as ``n`` more rows are done.

    With ``drafters`` (one :class:`core.prediction.lookup.Drafter` per row) and ``draft`` > 0,
    each forward pass feeds every row its last chosen token and up to ``draft`` draft tokens
    (right-padded to the longest); at each position the row's choice (:func:`_choose`'s rule,
    with the constraint advanced over the tokens accepted before it) is compared with the next
    draft token, and the row keeps the matching drafts plus its first choice that differs. The
    cache is cropped back to the longest kept row; shorter rows' rejected positions are masked
    out (holes, like the left padding), and each row's positions count only its kept tokens.
    """
    import torch

    device = _device(model)
    cap = max(1, width or len(rows))
    queue = list(range(len(rows)))
    alive, queue = queue[:cap], queue[cap:]
    cache, mask, last_pos, logits = kvcache.prefill(model, [rows[i] for i in alive], pad_id, shared)
    results: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    passes = [0] * len(rows)
    for row in alive:
        passes[row] = 1
    cons = list(constraints) if constraints is not None else [None] * len(rows)
    croppable = kvcache.croppable(cache)
    if draft > 0 and (drafters is None or not croppable):
        draft = 0
    if queue and not croppable:
        raise ValueError("continuous batching needs a plain key/value cache")
    eos_set = set(eos)
    verify_drafters = drafters if draft > 0 else None
    drafts: list[list[int]] = [[] for _ in alive]
    pending: list[int] = []
    while True:
        keep, pending, kept = _verify(logits, drafts, alive, cons, results, logprobs, budget,
                                      eos_set, verify_drafters)
        if keep:
            step = logits.shape[1]
            longest = max(kept[k] for k in keep)
            if step > longest:  # positions no kept row needs
                cache.crop(longest - step)
                mask = mask[:, : mask.shape[1] - (step - longest)]
            for k in keep:
                if kept[k] < longest:
                    mask[k, mask.shape[1] - (longest - kept[k]):] = 0
            last_pos = last_pos + torch.tensor([[n] for n in kept], dtype=last_pos.dtype,
                                               device=device)
        if len(keep) != len(alive):
            if finished is not None:
                finished(len(alive) - len(keep))
            if keep:
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, last_pos = mask[index], last_pos[index]
            alive = [alive[k] for k in keep]
            pending = [pending[k] for k in keep]
        while queue and (not alive or cap - len(alive) >= max(1, cap // 4)):
            joining, queue = queue[: cap - len(alive)], queue[cap - len(alive):]
            new_cache, new_mask, new_pos, new_logits = kvcache.prefill(
                model, [rows[i] for i in joining], pad_id, shared)
            for row in joining:
                passes[row] = 1
            k2, p2, _kept = _verify(new_logits, [[] for _ in joining], joining, cons, results,
                                    logprobs, budget, eos_set, verify_drafters)
            if finished is not None and len(k2) != len(joining):
                finished(len(joining) - len(k2))
            if len(k2) != len(joining) and k2:
                index = torch.tensor(k2, dtype=torch.long, device=device)
                new_cache.batch_select_indices(index)
                new_mask, new_pos = new_mask[index], new_pos[index]
            if k2:
                new_pos = new_pos + 1
                if alive:
                    mask = kvcache.merge(cache, kvcache.compact(cache, mask), new_cache, new_mask)
                    last_pos = torch.cat([last_pos, new_pos], dim=0)
                else:
                    cache, mask, last_pos = new_cache, new_mask, new_pos
                alive = alive + [joining[k] for k in k2]
                pending = pending + [p2[k] for k in k2]
        if not alive:
            break
        drafts = [drafters[row].propose(min(draft, budget[row] - len(results[row]) - 1))
                  if draft > 0 else [] for row in alive]
        step = 1 + max(len(d) for d in drafts)
        tokens = torch.full((len(alive), step), pad_id, dtype=torch.long)
        for k, d in enumerate(drafts):
            tokens[k, 0] = pending[k]
            if d:
                tokens[k, 1 : 1 + len(d)] = torch.tensor(d, dtype=torch.long)
        mask = torch.cat([mask, torch.ones((len(alive), step), dtype=mask.dtype, device=device)], dim=1)
        step_pos = last_pos + torch.arange(step, device=device).unsqueeze(0)
        out = model(input_ids=tokens.to(device), attention_mask=mask, position_ids=step_pos,
                    cache=cache, use_cache=True, logits_to_keep=step)
        cache = out.cache
        logits = out.logits[:, -step:, :]
        for row in alive:
            passes[row] += 1
    return results, logprobs, passes


def _verify(logits: Any, drafts: Sequence[Sequence[int]], alive: Sequence[int],
            cons: Sequence[Any | None], results: list[list[int]], logprobs: list[list[float]],
            budget: Sequence[int], eos_set: set[int], drafters: Sequence[Any] | None,
            ) -> tuple[list[int], list[int], list[int]]:
    """Take each live row's tokens from one forward pass's logits (``(rows, 1 + drafts, vocab)``).

    Row ``k`` takes its choice at position 0; while that choice equals the next draft token
    (and the row goes on), the choice at the next position, and so on. Returns the batch
    positions that go on, each one's last chosen token (to feed next), and how many of the fed
    positions each row keeps in the cache (1 + its accepted drafts)."""
    import torch

    argmax = logits.argmax(-1).tolist()
    lse = torch.logsumexp(logits.float(), dim=-1)
    keep: list[int] = []
    pending = [-1] * len(alive)
    kept = [1] * len(alive)
    taken: list[tuple[int, int, int, int]] = []  # (row, batch position, step position, token)
    for k, row in enumerate(alive):
        c, d = cons[row], drafts[k]
        for j in range(len(d) + 1):
            t = argmax[k][j]
            if c is not None and not c.allows(t):
                chosen = c.choose(logits[k, j])
                t = -1 if chosen is None else chosen
            if t < 0:  # the constraint allows nothing: the answer is completed as text
                break
            if c is not None:
                c.advance(t)
            results[row].append(t)
            taken.append((row, k, j, t))
            if drafters is not None:
                drafters[row].extend(t)
            if t in eos_set or len(results[row]) >= budget[row] or (c is not None and c.closed):
                break
            if j < len(d) and t == d[j]:
                continue
            keep.append(k)
            pending[k] = t
            kept[k] = j + 1
            break
    if taken:
        ks = torch.tensor([x[1] for x in taken], dtype=torch.long, device=logits.device)
        js = torch.tensor([x[2] for x in taken], dtype=torch.long, device=logits.device)
        ts = torch.tensor([x[3] for x in taken], dtype=torch.long, device=logits.device)
        values = (logits[ks, js, ts].float() - lse[ks, js]).tolist()
        for (row, _, _, _), lp in zip(taken, values, strict=True):
            logprobs[row].append(lp)
    return keep, pending, kept


def _generate_hf(model: Any, rows: Sequence[Sequence[int]], budget: Sequence[int],
                 eos: Sequence[int], pad_id: int, constraints: Sequence[Any | None] | None = None,
                 ) -> tuple[list[list[int]], list[list[float]]]:
    """One left-padded batch through ``model.generate`` (greedy, KV cache, per-row budgets):
    ``(tokens, their log-probabilities)`` per row; constraints as in :func:`_greedy`."""
    import torch
    from transformers import (
        GenerationConfig,
        LogitsProcessor,
        LogitsProcessorList,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    device = _device(model)
    width = max(len(s) for s in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, seq in enumerate(rows):
        input_ids[r, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        mask[r, width - len(seq):] = 1

    cons = list(constraints) if constraints is not None else [None] * len(rows)
    done = [False] * len(rows)
    results: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    picked: list[tuple[int, float]] = [(-1, 0.0)] * len(rows)
    stop_token = eos[0] if eos else pad_id

    class _Pick(LogitsProcessor):
        """Chooses each live row's token (see :func:`_choose`) and leaves only it possible."""

        def __call__(self, input_ids, scores):  # noqa: ANN001 - transformers' API
            chosen, lps = _choose(scores, [None if done[r] else cons[r] for r in range(len(rows))])
            forced = torch.full_like(scores, float("-inf"))
            for r, t in enumerate(chosen):
                picked[r] = (t, lps[r])
                forced[r, stop_token if t < 0 else t] = 0.0
            return forced

    class _RowStop(StoppingCriteria):
        """Records each row's token, advances its constraint, and stops it at its own budget or
        closed answer (generate already stops rows at EOS)."""

        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - transformers' API
            for r, t in enumerate(input_ids[:, -1].tolist()):
                if done[r]:
                    continue
                if picked[r][0] < 0:  # the constraint allows nothing: completed as text
                    done[r] = True
                    continue
                c = cons[r]
                if c is not None:
                    c.advance(t)
                results[r].append(t)
                logprobs[r].append(picked[r][1])
                done[r] = t in eos or len(results[r]) >= budget[r] or (c is not None and c.closed)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    gen_config = GenerationConfig(
        max_new_tokens=max(budget), do_sample=False, num_beams=1, use_cache=True,
        pad_token_id=pad_id, eos_token_id=list(eos) or None,
    )
    model.generate(
        input_ids=input_ids.to(device), attention_mask=mask.to(device),
        generation_config=gen_config, logits_processor=LogitsProcessorList([_Pick()]),
        stopping_criteria=StoppingCriteriaList([_RowStop()]),
    )
    return results, logprobs


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
