"""Metrics: hand-worked conlleval cases, an independent conlleval port, errors and storage."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data import projects
from core.data.db import now
from core.data.spans import Example, Span, tokenize
from core.evaluation import run_scores, scoring
from core.evaluation.scoring import Scored, match_spans, score, score_tags

# ---------------------------------------------------------------------------------------------
# An independent port of conlleval.pl (Sang & Buchholz, CoNLL-2000), counting per type.


def _split(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    return tag[0], tag[2:]


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    end = False
    if prev_tag in ("B", "I") and tag in ("B", "O"):
        end = True
    if prev_tag == "E" or prev_tag == "S":
        end = True
    if prev_tag != "O" and prev_type != type_:
        end = True
    return end


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    start = False
    if tag in ("B", "S"):
        start = True
    if prev_tag in ("E", "S", "O") and tag in ("I", "E"):
        start = True
    if tag != "O" and prev_type != type_:
        start = True
    return start


def conlleval(sentences):
    """Counts (correct, guessed, gold) overall and per type, as conlleval.pl computes them."""
    correct: dict[str, int] = {}
    guessed: dict[str, int] = {}
    gold: dict[str, int] = {}
    in_correct = False
    last_c, last_g, last_ct, last_gt = "O", "O", "", ""
    stream = []
    for g_tags, p_tags in sentences:
        stream.extend(zip(g_tags, p_tags, strict=True))
        stream.append(("O", "O"))  # a blank line ends every chunk
    for g, p in stream:
        c_tag, c_type = _split(g)
        g_tag, g_type = _split(p)
        end_c = _end_of_chunk(last_c, c_tag, last_ct, c_type)
        end_g = _end_of_chunk(last_g, g_tag, last_gt, g_type)
        start_c = _start_of_chunk(last_c, c_tag, last_ct, c_type)
        start_g = _start_of_chunk(last_g, g_tag, last_gt, g_type)
        if in_correct:
            if end_c and end_g and last_gt == last_ct:
                in_correct = False
                correct[last_ct] = correct.get(last_ct, 0) + 1
            elif end_c != end_g or g_type != c_type:
                in_correct = False
        if start_c and start_g and g_type == c_type:
            in_correct = True
        if start_c:
            gold[c_type] = gold.get(c_type, 0) + 1
        if start_g:
            guessed[g_type] = guessed.get(g_type, 0) + 1
        last_c, last_g, last_ct, last_gt = c_tag, g_tag, c_type, g_type
    return correct, guessed, gold


def _prf(tp, n_pred, n_gold):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def assert_matches_conlleval(y_true, y_pred, metrics):
    correct, guessed, gold = conlleval(list(zip(y_true, y_pred, strict=True)))
    p, r, f = _prf(sum(correct.values()), sum(guessed.values()), sum(gold.values()))
    assert metrics["micro"]["precision"] == pytest.approx(p)
    assert metrics["micro"]["recall"] == pytest.approx(r)
    assert metrics["micro"]["f1"] == pytest.approx(f)
    for t in set(gold) | set(guessed):
        p, r, f = _prf(correct.get(t, 0), guessed.get(t, 0), gold.get(t, 0))
        row = metrics["per_class"][t]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f)), t
        assert row["support"] == gold.get(t, 0)


# ---------------------------------------------------------------------------------------------
# Hand-worked cases

TEXT = "Lithium induced severe hypotension in rats ."


def _ex(spans, text=TEXT, id_=1):
    return Example(id=id_, text=text, spans=tuple(spans), split="test")


def _sp(text, phrase, label, text_=TEXT):
    start = text_.index(phrase)
    return Span(start, start + len(phrase), label)


GOLD = [_sp(TEXT, "Lithium", "Chemical"), _sp(TEXT, "severe hypotension", "Disease")]


def test_perfect_prediction_scores_one():
    m = score([Scored(_ex(GOLD), list(GOLD))], labels=["Chemical", "Disease"], bootstrap=0)
    assert m["micro"]["f1"] == 1.0 and m["macro"]["f1"] == 1.0
    assert m["errors"]["correct"] == 2 and m["errors"]["missed"] == 0


def test_boundary_error_counts_as_one_false_positive_and_one_false_negative():
    pred = [_sp(TEXT, "Lithium", "Chemical"), _sp(TEXT, "hypotension", "Disease")]
    m = score([Scored(_ex(GOLD), pred)], bootstrap=0)
    # tp 1 of 2 predicted, 1 of 2 gold → P = R = F1 = 0.5 (worked by hand).
    assert m["micro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["Chemical"]["f1"] == 1.0
    assert m["per_class"]["Disease"]["f1"] == 0.0
    assert m["macro"]["f1"] == pytest.approx(0.5)
    assert m["errors"]["wrong_boundary"] == 1
    assert m["errors"]["missed"] == 0 and m["errors"]["spurious"] == 0


def test_type_error():
    pred = [_sp(TEXT, "Lithium", "Chemical"), _sp(TEXT, "severe hypotension", "Chemical")]
    m = score([Scored(_ex(GOLD), pred)], labels=["Chemical", "Disease"], bootstrap=0)
    chem, dis = m["per_class"]["Chemical"], m["per_class"]["Disease"]
    # Chemical: 1 correct of 2 predicted, 1 gold; Disease: 0 of 0 predicted, 1 gold.
    assert (chem["precision"], chem["recall"]) == pytest.approx((0.5, 1.0))
    assert chem["f1"] == pytest.approx(2 / 3)
    assert (dis["precision"], dis["recall"], dis["f1"]) == (0.0, 0.0, 0.0)
    assert m["micro"]["f1"] == pytest.approx(0.5)
    assert m["macro"]["f1"] == pytest.approx(1 / 3)
    # weighted by support 1 and 1
    assert m["weighted"]["f1"] == pytest.approx(1 / 3)
    assert m["errors"]["wrong_type"] == 1
    conf = m["confusion"]
    assert conf["matrix"][conf["rows"].index("Disease")][conf["cols"].index("Chemical")] == 1


def test_missed_and_spurious():
    pred = [_sp(TEXT, "rats", "Chemical")]
    m = score([Scored(_ex(GOLD), pred)], labels=["Chemical", "Disease"], bootstrap=0)
    assert m["micro"]["f1"] == 0.0
    assert m["errors"]["missed"] == 2 and m["errors"]["spurious"] == 1
    conf = m["confusion"]
    assert conf["matrix"][conf["rows"].index(scoring.SPURIOUS)][conf["cols"].index("Chemical")] == 1
    assert conf["matrix"][conf["rows"].index("Disease")][conf["cols"].index(scoring.MISSED)] == 1


def test_partial_token_span_takes_the_whole_token():
    # "hypoten" covers part of a token: scored as the whole token, so a boundary error remains.
    start = TEXT.index("hypotension")
    pred = [_sp(TEXT, "Lithium", "Chemical"), Span(start, start + 7, "Disease")]
    m = score([Scored(_ex(GOLD), pred)], bootstrap=0)
    assert m["micro"]["f1"] == pytest.approx(0.5)


def test_default_and_strict_modes_differ_on_stray_inside_tags():
    y_true = [["B-X", "I-X", "O"]]
    y_pred = [["I-X", "I-X", "O"]]
    default = score_tags(y_true, y_pred, mode="default", bootstrap=0)
    strict = score_tags(y_true, y_pred, mode="strict", bootstrap=0)
    assert default["micro"]["f1"] == 1.0  # conlleval reads a stray I- as the start of a chunk
    assert strict["micro"]["f1"] == 0.0  # strict IOB2 drops the malformed chunk
    assert_matches_conlleval(y_true, y_pred, default)


def test_hand_worked_multi_sentence_against_conlleval():
    y_true = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
        ["B-LOC"],
    ]
    y_pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # type error
        ["O", "B-ORG", "I-ORG", "O", "O", "B-PER"],  # boundary error
        ["O"],  # missed
    ]
    m = score_tags(y_true, y_pred, bootstrap=0)
    # 5 gold (PER LOC ORG PER LOC), 4 predicted (PER ORG ORG PER), 2 correct (both PER)
    # → P 2/4, R 2/5, F1 = 2·0.5·0.4 / 0.9 = 4/9
    assert m["micro"]["precision"] == pytest.approx(0.5)
    assert m["micro"]["recall"] == pytest.approx(0.4)
    assert m["micro"]["f1"] == pytest.approx(4 / 9)
    assert m["per_class"]["LOC"]["support"] == 2 and m["per_class"]["LOC"]["f1"] == 0.0
    assert_matches_conlleval(y_true, y_pred, m)


TAGS = st.sampled_from(["O", "O", "O", "B-A", "I-A", "B-B", "I-B", "I-C"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 8).flatmap(
    lambda n: st.tuples(st.lists(TAGS, min_size=n, max_size=n), st.lists(TAGS, min_size=n, max_size=n))
), min_size=1, max_size=6))
def test_default_mode_equals_conlleval_on_random_tags(pairs):
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    m = score_tags(y_true, y_pred, bootstrap=0)
    assert_matches_conlleval(y_true, y_pred, m)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_scores_from_spans_equal_conlleval_on_the_conll_output(data):
    text = "a b c d e f g h"
    tokens = tokenize(text)

    def spans():
        out, i = [], 0
        while i < len(tokens):
            if data.draw(st.booleans()):
                j = data.draw(st.integers(i, min(i + 2, len(tokens) - 1)))
                out.append(Span(tokens[i][0], tokens[j][1], data.draw(st.sampled_from("XY"))))
                i = j + 1
            else:
                i += 1
        return out

    items = [Scored(Example(k, text, tuple(spans()), "test"), spans()) for k in range(3)]
    m = score(items, bootstrap=0)
    lines = scoring.to_conll(items).strip().split("\n\n")
    y_true = [[ln.split()[1] for ln in block.splitlines()] for block in lines]
    y_pred = [[ln.split()[2] for ln in block.splitlines()] for block in lines]
    assert_matches_conlleval(y_true, y_pred, m)
    conf = m["confusion"]
    for label, row in zip(conf["rows"], conf["matrix"], strict=True):
        if label != scoring.SPURIOUS:
            assert sum(row) == m["per_class"].get(label, {"support": 0})["support"]


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    items = []
    for k in range(30):
        pred = list(GOLD) if k % 3 else [_sp(TEXT, "rats", "Chemical")]
        items.append(Scored(_ex(GOLD, id_=k), pred))
    a = score(items)
    b = score(items)
    assert a["ci"] == b["ci"]
    assert a["ci"]["f1_low"] <= a["micro"]["f1"] <= a["ci"]["f1_high"]
    assert a["ci"]["f1_low"] < a["ci"]["f1_high"]


def test_match_spans_pairs_overlaps_once():
    gold = [Span(0, 5, "X"), Span(6, 10, "X")]
    pred = [Span(0, 10, "X")]
    kinds = sorted(o.kind for o in match_spans(gold, pred))
    assert kinds == ["missed", "wrong_boundary"]


def test_empty_inputs_score_zero():
    m = score([Scored(_ex([]), [])], bootstrap=10)
    assert m["micro"]["f1"] == 0.0 and m["n_gold"] == 0 and m["per_class"] == {}


# ---------------------------------------------------------------------------------------------
# Runs in the database


def _seed_run(db, demo, kind="zero-shot"):

    examples = projects.examples(db, demo["id"], split="test")[:12]
    run_id = db["runs"].insert({
        "project_id": demo["id"], "name": "t", "kind": kind, "config": "{}",
        "status": "finished", "created_at": now(),
    }).last_pk
    for k, ex in enumerate(examples):
        spans = list(ex.spans) if k % 2 == 0 else list(ex.spans)[:1]
        db["predictions"].insert({
            "run_id": run_id, "sentence_id": ex.id, "split": "test",
            "raw_output": json.dumps([s.to_dict() for s in spans]),
            "spans": json.dumps([s.to_dict() for s in spans]),
            "parse_status": "ok" if k != 3 else "unparsable", "created_at": now(),
        })
    return run_id, examples


def test_evaluate_run_stores_both_modes(db, demo):
    run_id, examples = _seed_run(db, demo)
    result = run_scores.evaluate_run(db, run_id)
    assert set(result) == {"test"} and set(result["test"]) == {"default", "strict"}
    m = result["test"]["default"]
    assert m["n_sentences"] == len(examples)
    assert m["parse"]["unparsable"] == 1
    assert 0 < m["micro"]["f1"] <= 1 and m["micro"]["precision"] == 1.0
    assert db["evaluations"].count == 2
    assert run_scores.stored_metrics(db, run_id, "test")["micro"] == m["micro"]
    assert not run_scores.is_stale(db, run_id, "test")
    errors = scoring.error_list(run_scores.load_scored(db, run_id, "test"))
    assert errors and all(e["kind"] == "missed" for e in errors)
    # re-scoring overwrites, it does not duplicate
    run_scores.evaluate_run(db, run_id)
    assert db["evaluations"].count == 2
