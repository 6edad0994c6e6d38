"""Run configuration: validation messages name the bad value, JSON round-trip, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.errors import ConfigError
from core.training.runconfig import (
    FIELDS,
    PRESETS,
    LoraSettings,
    RunConfig,
    TrainSettings,
    get_preset,
)


@pytest.mark.parametrize("cls", [LoraSettings, TrainSettings, RunConfig])
def test_defaults_round_trip_through_json(cls):
    obj = cls()
    data = json.loads(json.dumps(dataclasses.asdict(obj)))
    if cls is RunConfig:
        assert RunConfig.from_dict(data) == obj
    else:
        assert cls(**data) == obj


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = get_preset(name).config()
    assert cfg.preset == name
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_paper_presets_carry_the_papers_numbers():
    loraplus = get_preset("LoRA+ for NER").config()
    assert (loraplus.method, loraplus.lora.rank, loraplus.lora.alpha, loraplus.lora.loraplus_ratio) == (
        "loraplus", 16, 32.0, 16.0)
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= set(loraplus.lora.targets)
    llama = get_preset("Llama-3 financial NER").config()
    t = llama.train
    assert (llama.lora.rank, llama.lora.alpha, llama.lora.dropout) == (8, 16.0, 0.0)
    assert (t.epochs, t.lr, t.batch_size, t.grad_accum, t.precision, t.max_length) == (
        3.0, 5e-5, 4, 6, "bf16", 400)
    assert get_preset("QLoRA 4-bit").config().quantization == "nf4"
    assert get_preset("DoRA").config().method == "dora"
    small = get_preset("small model on cpu").config()  # case-insensitive
    assert small.train.lr > loraplus.train.lr and small.train.epochs >= 2


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rank": 0}, "got 0"),
        ({"alpha": -1.0}, "got -1.0"),
        ({"dropout": 1.5}, "got 1.5"),
        ({"lr": 2.0}, "got 2.0"),
        ({"batch_size": 0}, "got 0"),
        ({"max_length": 8}, "got 8"),
        ({"method": "prefix"}, "'prefix'"),
        ({"precision": "fp8"}, "'fp8'"),
        ({"loraplus_ratio": 0.5}, "got 0.5"),
        ({"targets": ()}, "at least one target"),
        ({"targets": ("q proj!",)}, "'q proj!'"),
        ({"epochs": 0}, "got 0"),
        ({"max_steps": 1.5}, "1.5"),
    ],
)
def test_bad_values_are_named_in_the_message(change, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig().with_overrides(**change)
    assert fragment in str(err.value)


def test_unknown_settings_are_rejected_by_name():
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig().with_overrides(learning_rate=1e-4)
    data = RunConfig().to_dict()
    data["train"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match="No preset 'nope'"):
        get_preset("nope")


def test_every_setting_has_help_and_overrides_apply():
    for name in FIELDS:
        assert FIELDS[name][1].metadata.get("help"), name
    cfg = RunConfig().with_overrides(rank=4, lr=1e-3, targets="q_proj, v_proj", max_steps=7)
    assert cfg.lora.rank == 4 and cfg.train.lr == 1e-3 and cfg.train.max_steps == 7
    assert cfg.lora.targets == ("q_proj", "v_proj")
    assert cfg.flat()["rank"] == 4
    assert "7 steps" in cfg.summary()
