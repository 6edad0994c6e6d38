"""Prompt-lookup drafts: the tokens an NER answer probably writes next, read off what it copies.

An answer copies its entities from the sentence and repeats its format's scaffolding
(``{"type": "Disease", "text": "`` after every entity), so the next few tokens are often already
written somewhere: in the prompt, in the answer so far, or in a sample of the format. A
:class:`Drafter` per row matches the last n tokens of the row's answer (n = 3, 2, 1) against those
reference sequences and proposes the tokens that followed there. :func:`core.prediction.decoding._greedy`
feeds the drafts to the model with the last chosen token in one forward pass and keeps the
longest prefix the model itself would have chosen (the greedy or constrained choice at every
position), plus the model's own next token: the answer is the greedy answer, only fewer forward
passes make it.

The references of a row (:func:`references`):

- the prompt's tokens (the sentence as the prompt writes it, the format's description);
- the sentence from each of its word starts, tokenized as an answer writes it after ``"`` or
  ``[Type: `` (a word that opens a JSON string carries no leading space, so its tokens differ
  from the prompt's);
- a sample answer with every entity type, in the constraint's format (scaffolding and the
  types' tokens as an answer writes them);
- the row's own answer so far (the scaffolding of the previous entity; the latest match first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.data.spans import Span, tokenize
from core.prompts import formats

#: Draft tokens proposed per row and forward pass (0 turns drafting off).
DRAFT_TOKENS = 6

#: Longest n-gram of the answer's tail matched against the references.
MAX_NGRAM = 3

#: Characters of the sentence taken from each word start (the longest entity is shorter).
WINDOW_CHARS = 80


class Drafter:
    """Proposes draft tokens for one row from its reference sequences and its answer so far.

    Args:
        references: token sequences the answer may copy from (earlier ones win ties).
        max_ngram: longest tail of the answer that is matched.
    """

    def __init__(self, references: Sequence[Sequence[int]], max_ngram: int = MAX_NGRAM) -> None:
        self.max_ngram = max_ngram
        self.refs = [list(r) for r in references if r]
        # n-gram -> (reference, index of the token after it): the first occurrence in the
        # first reference that has one, with at least one token after it.
        self._ref_index: dict[tuple[int, ...], tuple[int, int]] = {}
        for i, ref in enumerate(self.refs):
            for end in range(1, len(ref)):
                for n in range(1, min(max_ngram, end) + 1):
                    self._ref_index.setdefault(tuple(ref[end - n : end]), (i, end))
        self.answer: list[int] = []
        # n-gram of the answer -> index of the token after its latest occurrence.
        self._own_index: dict[tuple[int, ...], int] = {}

    def extend(self, token: int) -> None:
        """Take ``token`` as the answer's next token."""
        p = len(self.answer)
        for n in range(1, min(self.max_ngram, p) + 1):
            self._own_index[tuple(self.answer[p - n : p])] = p
        self.answer.append(int(token))

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that may follow the answer so far (an empty list: no guess).

        The longest matched tail wins; at equal length the answer's own earlier text (its
        scaffolding repeats) unless a reference continues further."""
        if k <= 0 or not self.answer:
            return []
        a = self.answer
        for n in range(min(self.max_ngram, len(a)), 0, -1):
            key = tuple(a[-n:])
            own = self._own_index.get(key)
            draft = a[own : own + k] if own is not None else []
            ref = self._ref_index.get(key)
            if ref is not None:
                seq, end = self.refs[ref[0]], ref[1]
                if len(draft) < k:
                    other = seq[end : end + k]
                    if len(other) > len(draft):
                        draft = other
            if draft:
                return draft
        return []


def sample_answer(output_format: str, labels: Sequence[str]) -> str:
    """An answer with one entity ``X`` of each type, in ``output_format`` (the scaffolding)."""
    labels = [str(x) for x in labels]
    if not labels:
        return ""
    text = " ".join(["X"] * len(labels))
    spans = [Span(2 * k, 2 * k + 1, label) for k, label in enumerate(labels)]
    try:
        return formats.get_format(output_format).render(text, spans)
    except Exception:  # noqa: BLE001 - a sample is only a guess; no sample, no scaffolding drafts
        return ""


def references(tokenizer: Any, prompt_ids: Sequence[int], text: str | None,
               output_format: str | None = None, labels: Sequence[str] = ()) -> list[list[int]]:
    """A row's reference sequences (see the module docstring).

    Args:
        tokenizer: the model's tokenizer.
        prompt_ids: the row's prompt.
        text: the sentence (None: the prompt is the only source of its words).
        output_format: the answer's format, when known (with ``labels``: the sample answer).
        labels: the entity types.
    """
    refs = [list(prompt_ids)]
    if text:
        starts = [s for s, _ in tokenize(text)]
        windows = [text[s : s + WINDOW_CHARS] for s in starts]
        if windows:
            refs += [list(x) for x in tokenizer(windows, add_special_tokens=False)["input_ids"]]
    if output_format and labels:
        sample = sample_answer(output_format, labels)
        if sample:
            refs.append(list(tokenizer(sample, add_special_tokens=False)["input_ids"]))
    return refs
