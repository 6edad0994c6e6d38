"""Training on CPU with the bundled SmolLM2: LoRA+ groups, answer-only loss, QLoRA, a full run."""

from __future__ import annotations

import json
import math
import re

import pytest

from core.data import projects
from core.data.runs import read_log, run_dir, run_metrics
from core.jobs import launcher
from core.models import loader
from core.prompts.store import get_template
from core.training.batches import Encoded, micro_batches, optimizer_batches, plan_steps
from core.training.runconfig import RunConfig, get_preset


def tiny_project(db, n_train: int = 12, n_dev: int = 2, n_test: int = 2, name: str = "tiny") -> dict:
    """A project of the demo's shortest sentences (fast to train and predict on CPU)."""
    from core.data.demo import ensure_demo_project

    demo = ensure_demo_project(db)
    project = projects.create_project(db, name, labels=["Chemical", "Disease"])
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        pool = [e for e in projects.examples(db, demo["id"], split=split) if e.spans]
        shortest = sorted(pool, key=lambda e: len(e.text))
        records = [projects.SentenceRecord(e.text, list(e.spans), split=split, labelled=True)
                   for e in shortest[:n]]
        projects.add_sentences(db, project["id"], records)
    return project


def quick_config(**overrides) -> RunConfig:
    settings = dict(max_steps=2, batch_size=2, grad_accum=1, max_length=192,
                    dev_loss_sentences=1, eval_limit=1)
    settings.update(overrides)
    return get_preset("Small model on CPU").config(**settings)


# -- pure helpers (fast) ------------------------------------------------------------------------


def test_optimizer_batches_are_shuffled_per_epoch_and_cover_everything():
    a = optimizer_batches(10, 4, seed=1, epoch=0)
    b = optimizer_batches(10, 4, seed=1, epoch=1)
    assert sorted(i for batch in a for i in batch) == list(range(10))
    assert [len(x) for x in a] == [4, 4, 2]
    assert a != b and a == optimizer_batches(10, 4, seed=1, epoch=0)


def test_micro_batches_sort_by_length_within_the_budget():
    items = [Encoded(list(range(n)), 1) for n in (50, 10, 40, 12, 45)]
    chunks = micro_batches(items, token_budget=100)
    same = [Encoded(list(range(40)), 35) for _ in range(5)]
    assert len(micro_batches(same, token_budget=100)) == 3  # 2 + 2 + 1 sentences of 40 tokens
    assert len(micro_batches(same, token_budget=100, prefix=30)) == 1  # 30 shared + 5 × 10
    assert sorted(len(e.ids) for c in chunks for e in c) == [10, 12, 40, 45, 50]
    for chunk in chunks:
        assert max(len(e.ids) for e in chunk) * len(chunk) <= 100 or len(chunk) == 1
    assert [[len(e.ids) for e in c] for c in chunks] == [[10, 12], [40, 45], [50]]


def test_plan_steps_epochs_and_max_steps():
    cfg = RunConfig().with_overrides(batch_size=4, grad_accum=2, epochs=3.0)
    assert plan_steps(20, cfg) == (3, 9)
    assert plan_steps(20, cfg.with_overrides(max_steps=5)) == (3, 5)


# -- with the real bundled model ----------------------------------------------------------------


@pytest.fixture
def tiny(db, bundled_model_path):
    return tiny_project(db)


@pytest.mark.slow
def test_loraplus_groups_carry_lr_times_ratio_and_weight_decay(bundled_model_path):
    from core.models.loader import set_threads
    from core.training.loop import build_model, build_optimizer

    set_threads()
    cfg = RunConfig().with_overrides(method="loraplus", lr=1e-4, loraplus_ratio=16.0,
                                     weight_decay=0.01, rank=4)
    model, _tok, _dtype = build_model(cfg, "cpu", log=lambda m: None)
    opt = build_optimizer(model, cfg)
    ids_b = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    ids_a = {id(p) for n, p in model.named_parameters() if "lora_A" in n}
    assert ids_a and ids_b
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & ids_b:
            assert ids <= ids_b and math.isclose(group["lr"], 1e-4 * 16)
            assert group["weight_decay"] == 0.01  # came through loraplus_weight_decay
        elif ids & ids_a:
            assert ids <= ids_a and math.isclose(group["lr"], 1e-4)
            assert group["weight_decay"] == 0.01
    covered = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids_a | ids_b <= covered


@pytest.mark.slow
def test_answer_only_loss_equals_the_full_logits_loss(db, tiny, monkeypatch):
    """The loop's loss (logits only at answer positions, length-sorted micro-batches, the shared
    prompt prefix computed once, the sentences packed into one row without padding) is the
    per-token mean that Hugging Face's loss gives with prompt labels masked, and its gradients
    are those of Hugging Face's loss: packing and the shared prefix change nothing but rounding."""
    import torch

    from core.training.batches import encode_examples, shared_prefix
    from core.training.loop import StepPrefix, answer_loss_sum, build_model, packs

    cfg = quick_config(dropout=0.0, rank=4, precision="fp32")
    model, tok, _ = build_model(cfg, "cpu", log=lambda m: None)
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapter matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    tpl = get_template(db, tiny["id"])
    labels = projects.list_labels(db, tiny["id"])
    data, stats = encode_examples(tok, tpl, projects.examples(db, tiny["id"], "train")[:3],
                                  labels, 256)
    assert stats.encoded == 3 and all(e.n_answer > 1 for e in data)
    assert len({len(e.ids) for e in data}) > 1  # padding would be needed
    prefix = shared_prefix(data)
    assert 16 <= prefix < min(e.n_prompt for e in data)
    n_answer = sum(e.n_answer for e in data)

    def loss_and_grads(prefix_len: int, pack: bool, step: bool = False, budget: int = 600):
        monkeypatch.setenv("NERLAB_PACK", "1" if pack else "0")
        assert packs(model) == pack
        model.zero_grad()
        total, count = 0.0, 0
        chunks = micro_batches(data, token_budget=budget, prefix=prefix_len, packed=pack)
        assert budget > 1 or len(chunks) == 3
        # the prefix once for all micro-batches, its gradient passed back at the end
        once = StepPrefix(model, data[0].ids[:prefix_len], "cpu") if step else None
        for chunk in chunks:
            loss, n = answer_loss_sum(model, chunk, tok.pad_token_id, "cpu", prefix=prefix_len,
                                      step_prefix=once)
            (loss / n_answer).backward()
            total, count = total + float(loss.detach()), count + n
        if once is not None:
            once.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return total / count, count, grads

    # Hugging Face's own loss on padded rows, prompt labels masked: the reference.
    model.zero_grad()
    longest = max(len(e.ids) for e in data)
    ids = torch.full((3, longest), tok.pad_token_id)
    mask = torch.zeros((3, longest), dtype=torch.long)
    labels_t = torch.full((3, longest), -100)
    for i, e in enumerate(data):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        labels_t[i, e.n_prompt : len(e.ids)] = torch.tensor(e.ids[e.n_prompt :])
    reference = model(input_ids=ids, attention_mask=mask, labels=labels_t).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ref_grads

    from core.training import packing

    lengths = [len(e.ids) for e in data]
    # padded; packed into one row (attention free); packed one sentence a row with padding
    # tokens after (attention dear, rows padded); with and without the shared prefix; the
    # prefix once for three micro-batches (a sentence each), with and without sdpa's GQA; under
    # gradient checkpointing (the layers replayed in the backward pass read the prefix's cache)
    cases = ((0, False, None, False, False, False), (prefix, False, None, False, False, False),
             (0, True, 0.0, False, False, False), (prefix, True, 0.0, False, False, False),
             (prefix, True, 1.0, False, False, False), (prefix, True, None, True, False, False),
             (prefix, True, None, True, True, False), (prefix, True, 0.0, False, False, True),
             (prefix, True, None, True, None, True))
    for prefix_len, pack, weight, step, gqa, checkpointing in cases:
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
            from core.training import prefix as shared
            assert shared.supported(model)
            assert shared._checkpointed_layers(shared.lm_parts(model)[0])  # it is on
        else:
            model.gradient_checkpointing_disable()
        if weight is not None:
            monkeypatch.setattr(packing, "pair_weight", lambda _config, w=weight: w)
        else:
            monkeypatch.undo()
        # answer_loss_sum turns GQA on for a CPU unless the variable says otherwise (None: as
        # it decides; not under checkpointing, whose replay must take the forward's path)
        if gqa is None:
            monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
        else:
            monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1" if gqa else "0")
        rows = packing.layout([n - prefix_len for n in lengths], prefix_len,
                              packing.pair_weight(model.config))
        assert weight != 0.0 or len(rows) == 1
        assert weight != 1.0 or len(rows) == 3
        loss, count, grads = loss_and_grads(prefix_len, pack, step, budget=1 if step else 600)
        assert count == n_answer
        assert loss == pytest.approx(float(reference.detach()), rel=1e-4), (prefix_len, pack)
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            # float32 rounding of other sums (fused loss, packed rows) through 30 layers: up to
            # ~1e-4 of a small gradient's norm; a wrong mask or position gives O(1)
            off = float((grads[name] - grad).norm() / grad.norm())
            assert off < 1e-3, (prefix_len, pack, weight, step, gqa, checkpointing, name, off)


@pytest.mark.slow
def test_checkpointed_step_prefix_gives_the_same_gradients_with_dropout(db, tiny, monkeypatch):
    """Under gradient checkpointing the step's prefix is computed without its graph and again
    when its gradients go back: with dropout on, the replay draws the same masks, so the step's
    gradients are those of the prefix kept whole."""
    import torch

    from core.training.batches import encode_examples, shared_prefix
    from core.training.loop import StepPrefix, answer_loss_sum, build_model

    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
    cfg = quick_config(dropout=0.2, rank=4, precision="fp32")
    model, tok, _ = build_model(cfg, "cpu", log=lambda m: None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    data, _ = encode_examples(tok, get_template(db, tiny["id"]),
                              projects.examples(db, tiny["id"], "train")[:2],
                              projects.list_labels(db, tiny["id"]), 256)
    prefix = shared_prefix(data)
    model.train()

    def grads(checkpointed: bool) -> dict:
        if checkpointed:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        model.zero_grad()
        torch.manual_seed(7)
        once = StepPrefix(model, data[0].ids[:prefix], "cpu")
        for chunk in micro_batches(data, token_budget=1, prefix=prefix, packed=True):
            loss, _n = answer_loss_sum(model, chunk, tok.pad_token_id, "cpu", prefix=prefix,
                                       step_prefix=once)
            loss.backward()
        once.backward()
        after = torch.rand(1)  # the replay leaves the random state as it found it
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, after

    (plain, rng_a), (checkpointed, rng_b) = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    assert torch.equal(rng_a, rng_b)
    for name, grad in plain.items():
        assert float((checkpointed[name] - grad).norm() / grad.norm()) < 1e-4, name


@pytest.mark.slow
def test_qlora_path_runs_on_cpu_through_bitsandbytes(db, tiny):
    """QLoRA's code path (NF4 double-quant base, prepare_model_for_kbit_training, LoRA) trains a
    step on CPU."""
    from core.training.batches import encode_examples
    from core.training.loop import Hooks, build_model, train_loop

    cfg = quick_config(method="qlora", rank=4, max_steps=1, dev_loss_sentences=0)
    model, tok, dtype = build_model(cfg, "cpu", log=lambda m: None)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    tpl = get_template(db, tiny["id"])
    labels = projects.list_labels(db, tiny["id"])
    data, _ = encode_examples(tok, tpl, projects.examples(db, tiny["id"], "train")[:2], labels, 192)
    rows = []
    result = train_loop(model, tok, data, [], cfg, "cpu", dtype,
                        Hooks(log=lambda m: None, progress=lambda *a, **k: rows.append(k)))
    assert result.steps == 1 and math.isfinite(result.train_loss)
    assert rows and rows[0]["loss"] == pytest.approx(result.train_loss)


@pytest.mark.slow
def test_loraplus_run_finishes_scores_and_its_adapter_changes_the_output(db, tiny, tmp_path):
    """A LoRA+ run through the worker: finished, progress rows, adapter in PEFT format with the
    tokenizer, config and template version; it loads with PeftModel and changes the logits;
    predictions are stored; merging gives the same outputs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = quick_config()
    run_id, started = launcher.submit_training(db, tiny["id"], cfg)
    assert started
    run = launcher.wait(db, run_id, timeout_s=600)
    log = read_log(run_id)
    assert run["status"] == "finished", log
    # every phase's line and the last say the process's peak memory
    assert re.search(r"Train: [0-9.]+ s; peak memory [0-9,]+ MB\.", log), log
    assert re.search(r"Finished in \d+ s; peak memory [0-9,]+ MB \(", log), log
    metrics = run_metrics(db, run_id)
    steps = [m for m in metrics if m["loss"] is not None]
    assert [m["step"] for m in steps] == [1, 2] and all(m["total_steps"] == 2 for m in steps)
    assert any(m["eval_loss"] is not None for m in metrics)
    folder = run_dir(run_id) / "adapter"
    assert run["artifact_path"] == str(folder)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                 "nerlab.json"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "nerlab.json").read_text())
    assert meta["config"]["method"] == "loraplus" and meta["template"]["version"] >= 1
    assert run["template_id"] == meta["template"]["id"]
    n_pred = db["predictions"].count_where("run_id = ?", [run_id])
    assert n_pred == 2, log  # eval_limit 1 on dev and on test
    assert {r["split"] for r in db["evaluations"].rows_where("run_id = ?", [run_id])} == {
        "dev", "test"}

    base, tok = loader.load_model(cfg.base_model)
    ids = tok("Aspirin causes headache.", return_tensors="pt")
    from core.models.adapters import _peft_quietly

    with torch.no_grad(), _peft_quietly():
        before = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(folder))
        after = tuned(**ids).logits
    assert not torch.allclose(before, after, atol=1e-4)

    from core.models.adapters import merge_run

    merged_dir = merge_run(db, run_id, out=tmp_path / "merged", log=lambda m: None)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, after, atol=1e-3)


@pytest.mark.slow
def test_dora_adds_magnitude_vectors_and_trains_a_step(db, tiny):
    from core.training.batches import encode_examples
    from core.training.loop import Hooks, build_model, train_loop

    cfg = quick_config(method="dora", rank=2, max_steps=1, dev_loss_sentences=0, batch_size=1)
    model, tok, dtype = build_model(cfg, "cpu", log=lambda m: None)
    magnitudes = [n for n, p in model.named_parameters() if "magnitude" in n and p.requires_grad]
    assert magnitudes
    tpl = get_template(db, tiny["id"])
    data, _ = encode_examples(tok, tpl, projects.examples(db, tiny["id"], "train")[:1],
                              projects.list_labels(db, tiny["id"]), 192)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in magnitudes[:3]}
    result = train_loop(model, tok, data, [], cfg, "cpu", dtype, Hooks(log=lambda m: None))
    assert result.steps == 1
    after = dict(model.named_parameters())
    assert any(not after[n].detach().equal(v) for n, v in before.items())


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("bf16", [False, True])
def test_fused_answer_cross_entropy_gives_the_plain_loss_and_gradient(softcap, bf16):
    """The answer tokens' loss through a frozen head, computed a chunk of rows at a time without
    keeping the logits, has the loss and hidden-state gradient of the plain full-logits path."""
    import torch
    import torch.nn.functional as F

    from core.training.losses import answer_cross_entropy, fusable

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False)
    head.weight.requires_grad_(False)
    if bf16:
        head = head.to(torch.bfloat16)
    assert fusable(head)
    start = torch.randn(300, 64)
    targets = torch.randint(0, 1000, (300,))
    results = []
    for fused in (True, False):
        hidden = start.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fused:
                loss = answer_cross_entropy(hidden, head, targets, softcap, chunk_rows=64)
            else:
                logits = head(hidden).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                loss = F.cross_entropy(logits, targets, reduction="sum")
        (loss * 0.5).backward()
        results.append((float(loss.detach()), hidden.grad))
    (fused_loss, fused_grad), (plain_loss, plain_grad) = results
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # dev loss
        chunked = answer_cross_entropy(start, head, targets, softcap, chunk_rows=64)
    assert float(chunked) == pytest.approx(plain_loss, rel=1e-5)
    # bf16 rounds the soft cap's derivative at another point of the computation than autograd
    tol = dict(rtol=2e-2, atol=1e-3) if bf16 else dict(rtol=1e-3, atol=1e-6)
    assert torch.allclose(fused_grad, plain_grad, **tol)
    head.weight.requires_grad_(True)  # a trained head is not fused: its weights need gradients
    assert not fusable(head)


def test_packing_layout_deals_every_sentence_once_into_the_cheapest_rows():
    from core.training import packing

    lengths = [120, 40, 75, 90, 33, 60, 150, 48]
    for weight in (0.0, 4e-4, 1.0):
        rows = packing.layout(lengths, 117, weight)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        for n_rows in range(1, len(lengths) + 1):
            other = packing.deal(lengths, n_rows)
            assert packing.cost(rows, lengths, 117, weight) <= packing.cost(other, lengths, 117,
                                                                           weight)
    assert len(packing.layout(lengths, 117, 0.0)) == 1  # attention free: no padding at all
    assert len(packing.layout(lengths, 117, 1.0)) >= 4  # attention dear: short rows
    # the bundled model's shape: a few rows of about equal length
    weight = packing.pair_weight(type("Config", (), dict(
        hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)))
    assert 1 < len(packing.layout(lengths, 117, weight)) < len(lengths)
    assert packing.pair_weight(object()) == packing.DEFAULT_PAIR_WEIGHT
