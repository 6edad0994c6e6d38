"""scripts/gpu_check.py on a machine without a GPU: it imports, says what it takes, prints its
table, and declines to run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_a_gpu():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--steps" in done.stdout and "--predict-sentences" in done.stdout


def test_the_table_lines_up_every_check():
    gpu_check = _module()
    args = gpu_check.parse_args(["--steps", "5"])
    assert args.steps == 5 and args.eval_limit == 40 and not args.bench
    rows = [
        {"check": "bf16 LoRA+", "setup": "1 GPU, batch 8", "status": "finished",
         "tokens_per_s": 41234.5, "peak_mb": 2048.0, "result": "test micro-F1 0.612"},
        {"check": "DDP 2 GPUs", "setup": "accelerate", "status": "finished",
         "tokens_per_s": 80111.0, "peak_mb": None, "result": "1.94× of 1 GPU"},
        {"check": "predict (vllm)", "status": "skipped", "result": "vLLM is not installed"},
    ]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["Check", "Setup", "Status"]
    assert set(lines[1].replace(" ", "")) == {"-"} and len(lines) == 5
    assert "41,234" in lines[2] and "2,048" in lines[2] and "0.612" in lines[2]
    assert "80,111" in lines[3] and " - " in lines[3]
    assert lines[4].startswith("predict (vllm)") and lines[4].endswith("vLLM is not installed")
    status_col = lines[0].index("Status")
    assert [line[status_col:].split()[0] for line in lines[2:]] == ["finished", "finished",
                                                                      "skipped"]


def test_without_a_gpu_it_declines_with_a_message(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run its checks")
    assert _module().main([]) == 2
    assert "No CUDA GPU here" in capsys.readouterr().out
