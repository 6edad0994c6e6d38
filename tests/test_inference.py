"""Batched generation and a run's predictions, with the real bundled SmolLM2."""

from __future__ import annotations

import json

import pytest

from core.data import projects
from core.data.runs import create_run, get_run, run_metrics
from core.errors import NerlabError
from core.evaluation import run_scores
from core.jobs import worker
from core.models import loader
from core.prediction import baselines, decoding, predict, tryout
from core.prediction.predict import PredictSettings
from core.prompts import formats, render
from core.prompts.plan import fixed_shots, plan_for_run
from core.prompts.store import get_template
from core.prompts.template import default_template


def test_budget_covers_every_gold_answer_of_the_demo(db, demo, bundled_model_path):
    """The per-sentence cap on new tokens never cuts a correct answer short (all formats)."""

    tokenizer = loader.load_tokenizer(str(bundled_model_path))
    train = projects.examples(db, demo["id"], split="train")
    for fmt in formats.OUTPUT_FORMATS:
        tpl = default_template(fmt)
        for ex in train:
            answer = formats.render_answer(tpl, ex.text, ex.spans)
            need = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            assert need <= decoding.token_budget(tokenizer, ex.text, fmt) + 2, (fmt, ex.text)


def test_fixed_shots_cover_every_type(db, demo):
    train = projects.examples(db, demo["id"], split="train")
    shots = fixed_shots(train, 3)
    assert len(shots) == 3
    assert {s.label for ex in shots for s in ex.spans} >= {"Chemical", "Disease"}


def test_try_request_rejects_empty_input(db, demo):
    with pytest.raises(NerlabError):
        tryout.request_try(db, demo["id"], "   ", [1], start=False)


@pytest.fixture(scope="module")
def smol(bundled_model_path):
    import torch

    torch.set_num_threads(2)
    return loader.load_model(str(bundled_model_path))


@pytest.mark.slow
def test_batched_generation_matches_one_by_one(smol):
    model, tokenizer = smol
    prompts = [
        render.build_chat(tokenizer, default_template(), text, ["Chemical", "Disease"])[0]
        for text in ("Aspirin reduces fever .", "Naloxone reverses the antihypertensive effect of clonidine .",
                     "No entities here .")
    ]
    batched = decoding.generate(model, tokenizer, prompts, [12, 20, 8], batch_size=3)
    single = decoding.generate_one_by_one(model, tokenizer, prompts, [12, 20, 8])
    assert len(batched) == 3 and all(isinstance(b, str) for b in batched)
    # Left padding and the per-row caps give the same greedy answers as one prompt at a time
    # (float32 on CPU; a tiny numeric drift could flip a late token, so compare the start).
    for b, s in zip(batched, single, strict=True):
        assert b[:20] == s[:20]
    # Each row stops at its own budget: the 8-token row is shorter than the 20-token row's cap.
    assert len(tokenizer(batched[2], add_special_tokens=False)["input_ids"]) <= 8


@pytest.mark.slow
def test_predict_run_stores_parsed_predictions(db, demo, smol, tmp_path):
    model, tokenizer = smol

    run_id = create_run(db, demo["id"], "train", {})
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", [run_id])
    db.conn.commit()
    ctx = worker.WorkerContext(db, get_run(db, run_id))
    plan = plan_for_run(db, ctx.run)
    predict.predict_run(ctx, model, tokenizer, plan, PredictSettings(
        limit=2, max_new_tokens=24, progress_rows=False))
    rows = list(db["predictions"].rows_where("run_id = ?", [run_id]))
    assert sorted(r["split"] for r in rows) == ["dev", "dev", "test", "test"]
    for r in rows:
        assert r["parse_status"] in ("ok", "partial", "unparsable")
        assert isinstance(json.loads(r["spans"]), list)
        details = json.loads(r["details"])
        assert {"hallucinated", "unknown_types", "loose", "mean_logprob", "min_logprob",
                "constrained", "completed"} <= set(details)
        assert details["constrained"] and details["min_logprob"] <= details["mean_logprob"] <= 0
        assert r["parse_status"] == "ok" and details["hallucinated"] == []  # constrained
    result = run_scores.evaluate_run(db, run_id)
    assert set(result) == {"dev", "test"}
    assert run_metrics(db, run_id) == []  # a training run's progress rows are its loss curve
    assert get_run(db, run_id)["heartbeat_at"]


def test_common_prefix_leaves_every_prompt_a_token():
    assert decoding._common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert decoding._common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert decoding._common_prefix([[7], [7, 8]]) == 0


@pytest.mark.parametrize("selection", ["fixed", "retrieved"])
def test_few_shot_plans_put_examples_in_the_prompt(db, demo, bundled_model_path, selection):

    tokenizer = loader.load_tokenizer(str(bundled_model_path))
    tpl = get_template(db, demo["id"])
    run = {"id": 0, "project_id": demo["id"], "kind": "few-shot", "template_id": tpl.id,
           "config": {"shots": 2, "selection": selection}}
    plan = baselines.run_plan(db, run)
    test = projects.examples(db, demo["id"], split="test")[0]
    shots = plan.shots_for(test.id, test.text)
    assert len(shots) == 2 and all(s.split == "train" and s.id != test.id for s in shots)
    prompt = plan.prompt(tokenizer, test.id, test.text)
    for shot in shots:
        assert shot.text in prompt
    assert prompt.rstrip().endswith("assistant")
    if selection == "fixed":  # the same examples for every sentence: part of the shared prefix
        other = projects.examples(db, demo["id"], split="test")[1]
        assert plan.shots_for(other.id, other.text) == shots
