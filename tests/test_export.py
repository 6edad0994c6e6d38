"""Serving a trained run: merged weights in bf16/fp16/fp32 and shards, GGUF for llama.cpp and
Ollama with a Modelfile, and the refusals (other architectures, runs without a usable adapter).

The slow tests share one real LoRA+ run of the bundled SmolLM2 (2 steps) and one fp16 merge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_train import quick_config, tiny_project

from core import config
from core.cli.main import main
from core.data.runs import create_run, fail_run, get_run, read_log
from core.errors import NerlabError
from core.jobs import launcher
from core.models import gguf_export, merging
from core.models.adapters import merge_run

#: Largest logit difference from the fp32 adapter allowed after casting the merged weights:
#: fp16 keeps 11 significant bits, bf16 8 (measured here: ~0.1 and ~0.6 over 30 layers).
LOGIT_TOL = {"float16": 0.5, "bfloat16": 2.0}


# -- fast ---------------------------------------------------------------------------------------


def test_default_dtype_rule():
    gpu_bf16 = {"device": "cuda", "dtype": "bfloat16"}
    cpu = {"device": "cpu", "dtype": "float32"}
    assert merging.default_dtype(gpu_bf16, "float32")[0] == "bfloat16"
    assert merging.default_dtype({"device": "cuda", "dtype": "float32"}, "bfloat16")[0] == "bfloat16"
    assert merging.default_dtype(cpu, "float16")[0] == "float16"
    assert merging.default_dtype(cpu, "float32")[0] == "float32"  # the bundled model on CPU
    assert merging.default_dtype({}, None)[0] == "float32"
    assert merging.dtype_name("bf16") == "bfloat16"
    with pytest.raises(NerlabError, match="bf16"):
        merging.dtype_name("int4")


def test_export_reuses_a_merged_folder_only_when_it_is_precise_enough():
    from core.models.export import _precise_enough

    assert _precise_enough("float32", "f32") and _precise_enough("float32", "q8_0")
    assert _precise_enough("float16", "f16") and _precise_enough("float16", "q8_0")
    assert not _precise_enough("float16", "f32") and not _precise_enough("bfloat16", "f16")


def test_other_architectures_are_refused_with_what_is_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(NerlabError) as err:
        gguf_export.convert_folder(tmp_path, tmp_path / "out.gguf")
    message = str(err.value)
    assert "Qwen2ForCausalLM" in message and "LlamaForCausalLM" in message
    assert not (tmp_path / "out.gguf").exists()


def test_rope_scaling_other_than_llama_family_is_refused():
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
           "intermediate_size": 128, "vocab_size": 10, "rope_scaling": {"rope_type": "yarn"}}
    with pytest.raises(NerlabError, match="yarn"):
        gguf_export.llama_hparams(cfg)


def test_permutation_pairs_rotary_halves_as_llama_cpp_does():
    """Row j of a head (HF: pairs j and j + d/2) lands next to its partner (llama.cpp: 2i, 2i+1)."""
    import numpy as np

    heads, dim = 2, 8
    rows = np.arange(heads * dim, dtype=np.float32)[:, None]
    out = gguf_export.permute_for_rope(rows, heads)[:, 0]
    assert out[:dim].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert out[dim:].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]


def test_llama3_rope_factors_match_transformers():
    """Llama 3.1's rope scaling, written as llama.cpp's rope_freqs, divides each frequency by the
    same factor transformers applies."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "rope_theta": 500000.0}
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=scaling,
                      max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    factors = gguf_export.llama3_rope_factors(500000.0, 128, scaling)
    assert len(factors) == 64
    assert torch.allclose(plain / scaled, torch.tensor(factors), rtol=1e-4)


def test_unfinished_failed_and_adapterless_runs_are_refused_in_one_line(db, capsys):
    from core.data import projects

    project = projects.create_project(db, "p", labels=["A"])
    settings = quick_config().to_dict()
    running = create_run(db, project["id"], "train", settings, base_model="x")
    db.execute("UPDATE runs SET status = 'running' WHERE id = ?", [running])
    failed = create_run(db, project["id"], "train", settings, base_model="x")
    fail_run(db, failed, "oom", "CUDA out of memory.")
    finished = create_run(db, project["id"], "train", settings, base_model="x")
    db.execute("UPDATE runs SET status = 'finished' WHERE id = ?", [finished])
    db.conn.commit()
    expected = {running: "still running", failed: "failed (oom: CUDA out of memory.)",
                finished: "has no saved adapter"}
    for run_id, says in expected.items():
        for argv in (["merge", str(run_id)], ["export-model", str(run_id), "--format", "gguf"]):
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- with a real run of the bundled model -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundled_model_path):
    """A finished LoRA+ run (2 steps at a high rate, so its adapter changes the answers), its
    adapter in fp32, and for three demo sentences the adapter's greedy continuation."""
    import torch

    from core.data.db import get_db
    from core.models.adapters import adapter_path, load_adapter
    from core.models.loader import set_threads
    from core.prompts.plan import plan_for_run

    home = tmp_path_factory.mktemp("export-home")
    old = os.environ.get(config.HOME_ENV)
    os.environ[config.HOME_ENV] = str(home)
    try:
        set_threads()
        db = get_db()
        project = tiny_project(db, n_dev=2, n_test=1)
        cfg = quick_config(lr=2e-3, eval_after=False, dev_loss_sentences=0)
        run_id, _ = launcher.submit_training(db, project["id"], cfg)
        run = launcher.wait(db, run_id, timeout_s=600)
        assert run["status"] == "finished", read_log(run_id)
        adapter, tok = load_adapter(adapter_path(db, run_id), device="cpu")
        plan = plan_for_run(db, get_run(db, run_id))
        texts = [r["text"] for r in db.query(
            "SELECT text FROM sentences WHERE project_id = ? AND split != 'train' ORDER BY id",
            [project["id"]])]
        seqs = []
        with torch.no_grad():
            for text in texts:
                ids = tok(plan.prompt(tok, None, text), return_tensors="pt", add_special_tokens=False)
                out = adapter.generate(**ids, max_new_tokens=8, do_sample=False)
                n_prompt = ids["input_ids"].shape[1]
                seqs.append((out, n_prompt, adapter(out).logits[0, n_prompt - 1:-1]))
            changed = 0
            with adapter.disable_adapter():  # the base model alone picks other tokens somewhere,
                for out, n_prompt, _ref in seqs:  # so agreeing with the adapter means something
                    base = adapter(out).logits[0, n_prompt - 1:-1]
                    changed += int((base.argmax(-1) != out[0, n_prompt:]).sum())
        print(f"base model differs from the adapter at {changed} greedy positions")
        assert changed > 0
        yield SimpleNamespace(db=db, run_id=run_id, project=project, home=home, tok=tok,
                              seqs=seqs, labels=plan.label_names)
    finally:
        if old is None:
            os.environ.pop(config.HOME_ENV, None)
        else:
            os.environ[config.HOME_ENV] = old


def _compare_greedy(model, trained) -> dict:
    """Teacher-forced on the adapter's greedy continuations: the model's own greedy choice at
    every position, and how far its logits are from the adapter's. The same choice at every
    position means the same greedy output."""
    import torch

    worst, same, total = 0.0, 0, 0
    with torch.no_grad():
        for out, n_prompt, ref in trained.seqs:
            logits = model(out).logits[0, n_prompt - 1:-1].float()
            worst = max(worst, float((logits - ref).abs().max()))
            same += int((logits.argmax(-1) == out[0, n_prompt:]).sum())
            total += out.shape[1] - n_prompt
    return {"max_logit_diff": worst, "same": same, "total": total}


@pytest.fixture(scope="module")
def merged_fp16(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16") / "merged"
    return merge_run(trained.db, trained.run_id, out=folder, dtype="fp16", log=lambda m: None)


def _check_merged(folder: Path, dtype: str, trained) -> dict:
    """The folder loads with plain transformers in ``dtype``, has the tokenizer and chat
    template, takes 2 bytes a parameter, and its weights give the adapter's greedy tokens. The
    comparison computes in float32 with the merged (rounded) weights: it checks what the merge
    wrote, not the half-precision arithmetic of one machine (and fp16 matmuls are slow on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = merging.safetensors_params(folder)
    assert 134e6 < params < 136e6  # SmolLM2-135M, tied embeddings stored once
    size = merging.folder_bytes(folder)
    assert params * 2 <= size < params * 2 * 1.001  # 2 bytes a parameter, plus the headers
    assert json.loads((folder / "config.json").read_text())["dtype"] == dtype
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.dtype == getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    result = _compare_greedy(model.float(), trained)
    print(f"{dtype}: {result}, {size / 1e6:.0f} MB")  # figures for the README (pytest -s)
    assert result["max_logit_diff"] < LOGIT_TOL[dtype], result
    return result


@pytest.mark.slow
def test_merge_fp16_loads_with_transformers_and_gives_the_adapters_greedy_output(
        trained, merged_fp16):
    assert [p.name for p in merged_fp16.glob("*.safetensors")] == ["model.safetensors"]
    result = _check_merged(merged_fp16, "float16", trained)
    assert result["same"] == result["total"], result  # every greedy token as the adapter's


@pytest.mark.slow
def test_merge_bf16_in_small_shards_from_the_cli(trained, tmp_path, capsys):
    out = tmp_path / "bf16"
    argv = ["merge", str(trained.run_id), "--dtype", "bf16", "--max-shard-size", "100MB",
            "--out", str(out)]
    assert main(argv) == 0
    assert "bf16" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((out / s).stat().st_size <= 100e6 for s in shards)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    result = _check_merged(out, "bfloat16", trained)
    # bf16 keeps 8 significant bits: a near-tie of the adapter may flip; all but one must agree.
    assert result["same"] >= result["total"] - 1, result


@pytest.mark.slow
def test_gguf_of_the_bundled_model_equals_llama_cpps_own(bundled_model_path, tmp_path):
    """Converting the bundled model (the dequantised llama.cpp file, in transformers' layout) back
    to GGUF gives llama.cpp's tensors exactly: names, shapes, the Q/K permutation, values; and
    its vocabulary, merges, special tokens and chat template."""
    import gguf
    import numpy as np

    from core.models.loader import bundled_gguf_path

    out = gguf_export.convert_folder(bundled_model_path, tmp_path / "base.gguf", "f32",
                                     log=lambda m: None)
    ours, theirs = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(bundled_gguf_path()))
    mine = {t.name: t for t in ours.tensors}
    ref = {t.name: t for t in theirs.tensors}
    assert mine.keys() == ref.keys()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_q.weight",
                 "blk.7.attn_v.weight", "blk.7.ffn_gate.weight", "token_embd.weight",
                 "output_norm.weight"):
        a = gguf.quants.dequantize(mine[name].data, mine[name].tensor_type)
        b = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type)
        assert a.shape == b.shape and np.array_equal(a, b), name
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.context_length", "llama.rope.dimension_count"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key


@pytest.mark.slow
def test_export_gguf_loads_in_gguf_and_transformers_with_the_merged_weights(
        trained, merged_fp16, tmp_path, capsys):
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    assert main(["export-model", str(trained.run_id), "--format", "gguf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", f"nerlab-train-{trained.run_id}-f16.gguf"]  # temp merge gone
    assert f"ollama create nerlab-train-{trained.run_id} -f {out / 'Modelfile'}" in printed
    gguf_file = out / files[1]

    reader = gguf.GGUFReader(str(gguf_file))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 272  # 30 blocks × 9 + token_embd + output_norm (tied output)
    assert tuple(tensors["blk.0.attn_k.weight"].shape) == (576, 192)  # GGML order: cols, rows
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    assert reader.fields["general.architecture"].contents() == "llama"
    del reader, tensors

    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf_file.name)
    state = model.state_dict()
    fp16 = load_file(str(merged_fp16 / "model.safetensors"))
    assert fp16.keys() <= state.keys()
    for key, value in fp16.items():  # each weight is the fp32 merge rounded once to f16
        assert torch.equal(state[key].half(), value), key
    result = _compare_greedy(model, trained)
    print(f"GGUF f16: {result}, {gguf_file.stat().st_size / 1e6:.0f} MB")
    assert result["same"] == result["total"] and result["max_logit_diff"] < LOGIT_TOL["float16"]

    text = (out / "Modelfile").read_text()
    assert f"FROM ./{gguf_file.name}" in text
    assert "Find the entities of these types in the sentence." in text  # the template's text
    assert "- Chemical\n- Disease" in text and "Entity types: Chemical, Disease" in text
    assert "Sentence: {{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n" in text
    assert "PARAMETER temperature 0" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_train_page_offers_the_merge_dtype_with_its_expected_size(home, bundled_model_path):
    """The Train page's merge: a dtype choice labelled with the expected size (from the base
    model's safetensors headers), passed on to the background merge."""
    from unittest import mock

    from streamlit.testing.v1 import AppTest

    from core.data import projects
    from core.data.db import get_db
    from core.data.demo import ensure_demo_project

    db = get_db()
    ensure_demo_project(db)
    project = projects.get_project(db, "BC5CDR demo")
    cfg = quick_config()
    run_id = create_run(db, project["id"], "train", cfg.to_dict(), base_model=cfg.base_model)
    adapter = config.runs_dir() / str(run_id) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "nerlab.json").write_text(json.dumps({"device": "cpu", "dtype": "float32"}))
    db.execute("UPDATE runs SET status = 'finished', artifact_path = ? WHERE id = ?",
               [str(adapter), run_id])
    db.conn.commit()
    at = AppTest.from_file(str(Path(__file__).parent.parent / "views/4_Train.py"),
                           default_timeout=60).run()
    assert not at.exception
    box = at.selectbox(key=f"train_merge_dtype_{run_id}")
    assert box.options[0].startswith("Default: fp32") and "~538 MB" in box.options[0]
    assert "fp16 · ~269 MB" in box.options and "bf16 · ~269 MB" in box.options
    with mock.patch("core.jobs.launcher.launch_merge", return_value=1) as launch:
        box.set_value("fp16").run()
        assert "nerlab merge " + str(run_id) + " --dtype fp16" in " ".join(
            c.value for c in at.caption)
        at.button(key=f"train_merge_{run_id}").click().run()
    assert launch.call_args.args == (run_id, "fp16")
