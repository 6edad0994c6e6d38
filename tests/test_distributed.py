"""Training on several GPUs with ``accelerate launch``, checked on the CPU: the worker's processes
meet over gloo exactly as they would over NCCL on GPUs, so the split of each step, the summed
gradients, the agreed stop and rank 0's reporting are all exercised here."""

from __future__ import annotations

import sys
import time

import pytest
from test_train import quick_config, tiny_project

from core.data.db import now
from core.data.runs import create_run, fail_run, get_run, read_log, run_dir, run_metrics
from core.jobs import launcher, worker
from core.procs import pid_alive
from core.training import distributed
from core.training.batches import Encoded
from core.training.checks import check_run
from core.training.distributed import SINGLE, Group, shard
from core.training.launch import FSDP2_CONFIG
from core.training.runconfig import RunConfig

# -- without a model (fast) ----------------------------------------------------------------------


def test_shard_deals_a_batch_out_evenly_and_completely():
    items = [Encoded(list(range(n)), 1, example_id=n) for n in (50, 7, 30, 12, 90, 41, 5)]
    parts = [shard(items, Group(rank=r, world=3), length=lambda e: len(e.ids)) for r in range(3)]
    ids = sorted(e.example_id for part in parts for e in part)
    assert ids == sorted(e.example_id for e in items)  # everything once
    assert [len(p) for p in parts] == [3, 2, 2]
    tokens = [sum(len(e.ids) for e in p) for p in parts]
    assert max(tokens) - min(tokens) <= 90  # sorted round-robin: no process gets all the long ones
    assert shard(items, SINGLE) == items


def test_a_single_process_group_does_nothing():
    assert SINGLE.main and not SINGLE.enabled
    assert SINGLE.sum_floats([1.5, 2], "cpu") == [1.5, 2.0]
    assert SINGLE.broadcast_object({"a": 1}) == {"a": 1}
    SINGLE.close()
    assert distributed.init() is SINGLE  # WORLD_SIZE is not set in the tests


def test_worker_command_uses_accelerate_launch_for_several_gpus(home):
    assert launcher.worker_command(7) == [sys.executable, "-m", "core.jobs.worker", "7"]
    cmd = launcher.worker_command(7, gpus=4, port=29999)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--main_process_port") + 1] == "29999"
    assert cmd[-3:] == ["-m", "core.jobs.worker", "7"] and "--multi_gpu" in cmd
    config_file = cmd[cmd.index("--config_file") + 1]
    assert config_file == str(run_dir(7) / "accelerate.yaml")
    train = {"kind": "train", "config": RunConfig().with_overrides(gpus=3).to_dict()}
    assert launcher.run_gpus(train) == 3
    assert launcher.run_gpus({"kind": "crf", "config": {}}) == 1


def test_the_users_accelerate_config_and_several_machines_reach_accelerate_launch(home, tmp_path):
    from core.errors import ConfigError
    from core.training.launch import Launch

    def value(cmd, flag):
        return cmd[cmd.index(flag) + 1] if flag in cmd else None

    mine = tmp_path / "fsdp.yaml"
    mine.write_text("distributed_type: FSDP\nnum_machines: 1\nnum_processes: 4\n")
    cmd = launcher.worker_command(7, setup=Launch(config_file=str(mine)))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert value(cmd, "--config_file") == str(mine) and "--multi_gpu" not in cmd
    assert value(cmd, "--num_processes") is None  # the config says how many
    assert cmd[-3:] == ["-m", "core.jobs.worker", "7"]
    cmd = launcher.worker_command(7, gpus=2, setup=Launch(config_file=str(mine)))
    assert value(cmd, "--num_processes") == "2"  # --gpus wins over the config
    cmd = launcher.worker_command(7, gpus=2, setup=Launch(config_file="default"))
    assert "--config_file" not in cmd  # accelerate finds ACCELERATE_CONFIG_FILE or its default

    two = Launch(num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    cmd = launcher.worker_command(7, gpus=4, setup=two)
    assert value(cmd, "--config_file") == str(run_dir(7) / "accelerate.yaml")
    assert (value(cmd, "--num_processes"), value(cmd, "--num_machines"),
            value(cmd, "--machine_rank"), value(cmd, "--main_process_ip"),
            value(cmd, "--main_process_port")) == ("8", "2", "0", "10.0.0.1", "29500")
    written = launcher.write_accelerate_config(7, 4, two).read_text()
    assert "num_machines: 2" in written and "num_processes: 8" in written
    with pytest.raises(ConfigError, match="Machine rank"):
        Launch(num_machines=2, machine_rank=2)
    with pytest.raises(ConfigError, match="Machines must be"):
        Launch(num_machines=0)


def test_nerlab_train_keeps_the_launch_settings_and_join_builds_the_other_machines_command(
        db, monkeypatch):
    from core.cli.main import build_parser
    from core.cli.run_cmds import launch_from_args
    from core.data.runs import create_run
    from core.errors import NerlabError
    from core.training import launch as launch_settings

    args = build_parser().parse_args(
        ["train", "tiny", "--num-machines", "2", "--main-process-ip", "10.0.0.1",
         "--main-process-port", "29500", "--accelerate-config", "default"])
    setup = launch_from_args(args)
    assert (setup.num_machines, setup.main_process_ip, setup.main_process_port,
            setup.config_file) == (2, "10.0.0.1", 29500, "default")
    assert launch_from_args(build_parser().parse_args(["train", "tiny"])).plain

    project = tiny_project(db)
    run_id = create_run(db, project["id"], "train", RunConfig().with_overrides(gpus=2).to_dict())
    launch_settings.save(run_dir(run_id), setup)
    assert launch_settings.load(run_dir(run_id)) == setup
    cmd = launcher.join_command(db, run_id, 1)
    assert cmd[cmd.index("--machine_rank") + 1] == "1" and cmd[-1] == str(run_id)
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    # `nerlab join` starts it as this machine's own workers compute (core.procs.compute_env)
    import subprocess

    from core.cli.main import main as cli_main
    started = []
    monkeypatch.setattr(subprocess, "call", lambda c, env=None: started.append((c, env)) or 0)
    assert cli_main(["join", str(run_id), "--machine-rank", "1"]) == 0
    assert started[0][0] == cmd and started[0][1]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in started[0][1]
    for wrong in (0, 2):
        with pytest.raises(NerlabError, match="join as machine 1"):
            launcher.join_command(db, run_id, wrong)
    alone = create_run(db, project["id"], "train", RunConfig().to_dict())
    with pytest.raises(NerlabError, match="one machine"):
        launcher.join_command(db, alone, 1)


def test_the_pre_flight_check_says_how_the_run_starts(db, tmp_path):
    from core.training.launch import Launch

    project = tiny_project(db)
    cfg = quick_config(gpus=2, batch_size=2, grad_accum=2)

    def starts(setup, level=None):
        return [i.msg for i in check_run(db, project["id"], cfg, cuda=True, gpu_count=2,
                                         launch=setup)
                if i.title == "How the run starts" and (level is None or i.level == level)]

    assert "NERLab's own accelerate config: 2 process(es) on this machine" in starts(Launch())[0]
    two = starts(Launch(num_machines=2), "error")
    assert any("main machine's address" in m for m in two) and any("port" in m for m in two)
    ok = Launch(num_machines=2, main_process_ip="10.0.0.1", main_process_port=29500)
    assert not starts(ok, "error")
    assert "2 machines × 2 process(es), 4 in all" in starts(ok)[0]
    assert any("nerlab join RUN_ID --machine-rank K" in m for m in starts(ok))
    assert "No accelerate config" in starts(Launch(config_file=str(tmp_path / "none.yaml")),
                                            "error")[0]
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 2\n")
    said = starts(Launch(config_file=str(fsdp)))
    assert any("FSDP: the model's weights are sharded" in m for m in said)
    assert not starts(Launch(config_file=str(fsdp)), "error")
    deepspeed = tmp_path / "ds.yaml"
    deepspeed.write_text("distributed_type: DEEPSPEED\nnum_processes: 2\n")
    refused = starts(Launch(config_file=str(deepspeed)), "error")
    assert refused and "does not run" in refused[0] and "use FSDP or MULTI_GPU" in refused[0]
    alone = check_run(db, project["id"], quick_config(), cuda=False, launch=Launch())
    assert all(i.title != "How the run starts" for i in alone)  # one plain process: nothing to say


def test_gpus_setting_is_validated_and_checked_against_the_machine(db):
    from core.errors import ConfigError

    project = tiny_project(db)
    with pytest.raises(ConfigError, match="GPUs must be ≥ 1"):
        RunConfig().with_overrides(gpus=0)
    cfg = quick_config(gpus=4, batch_size=1, grad_accum=2)

    def titles(issues, level):
        return {i.title for i in issues if i.level == level}

    on_two = check_run(db, project["id"], cfg, cuda=True, gpu_count=2)
    assert "Several GPUs" in titles(on_two, "error")
    assert any("4 GPUs asked for, 2 visible" in i.msg for i in on_two)
    on_eight = check_run(db, project["id"], cfg, cuda=True, gpu_count=8)
    assert "Several GPUs" not in titles(on_eight, "error")
    assert "GPUs left idle" in titles(on_eight, "warning")  # 2 sentences a step for 4 GPUs
    on_cpu = check_run(db, project["id"], cfg, cuda=False)
    assert "Several processes without a GPU" in titles(on_cpu, "info")
    one = check_run(db, project["id"], quick_config(), cuda=True, gpu_count=4)
    assert any("set GPUs to 4" in i.msg for i in one if i.level == "info")


def test_a_survivor_does_not_hide_the_cause_behind_connection_closed(db):
    """A rank that only lost its peers waits for the real cause (rank 0's report, or rank 0 found
    dead) instead of recording "connection closed"; with no cause found, its message says what
    happened."""
    import subprocess

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.0.0.2]:1")
    assert distributed.lost_peer(gloo)
    assert not distributed.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    kind, message = worker.classify_error(gloo)
    assert kind == "other" and message.startswith("Lost contact with another process")

    project = tiny_project(db, n_train=2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = create_run(db, project["id"], "train", {})
    db.execute("UPDATE runs SET status = 'running', pid = ? WHERE id = ?", [dead.pid, run_id])
    db.conn.commit()
    assert worker._cause_recorded_elsewhere(db, run_id, grace_s=5)  # rank 0 died: refresh says so
    assert "ended without reporting" in get_run(db, run_id)["error_message"]

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "core.jobs.worker"])
    try:
        run_id = create_run(db, project["id"], "train", {})
        db.execute("UPDATE runs SET status = 'running', pid = ?, heartbeat_at = ? WHERE id = ?",
                   [alive.pid, now(), run_id])
        db.conn.commit()
        started = time.monotonic()
        assert not worker._cause_recorded_elsewhere(db, run_id, grace_s=1)
        assert time.monotonic() - started < 5
        assert get_run(db, run_id)["status"] == "running"  # left for the survivor to record
        fail_run(db, run_id, "oom", "Out of GPU memory: rank 0")  # rank 0's own report
        assert worker._cause_recorded_elsewhere(db, run_id, grace_s=1)
        assert get_run(db, run_id)["error_message"] == "Out of GPU memory: rank 0"
    finally:
        alive.kill()
        alive.wait()


# -- real runs: the worker under accelerate launch, two processes on the CPU -------------------


def _adapter(run_id: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir(run_id) / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(db, bundled_model_path):
    """The same run (seed, data, steps) on one process and on two: the step losses and the
    trained adapter agree to float32 rounding; rank 0 alone writes metrics and scores, both
    processes predict and rank 0 stores every sentence once, in the same order as one process;
    the log says how the run was split."""
    project = tiny_project(db, n_train=12, n_dev=2, n_test=2)
    # float32: the comparison is of the split, not of bf16's rounding of differently packed rows
    settings = dict(max_steps=2, batch_size=2, grad_accum=2, rank=4, eval_limit=2,
                    dev_loss_sentences=2, precision="fp32")
    one, _ = launcher.submit_training(db, project["id"], quick_config(**settings, gpus=1))
    two, _ = launcher.submit_training(db, project["id"], quick_config(**settings, gpus=2))
    for run_id in (one, two):
        run = launcher.wait(db, run_id, timeout_s=900)
        assert run["status"] == "finished", read_log(run_id)
    log = read_log(two, 400)
    written = (run_dir(two) / "accelerate.yaml").read_text()
    assert "num_processes: 2" in written and "distributed_type: MULTI_GPU" in written
    assert "2 processes (gloo)" in log and "each step is split over 2 processes" in log, log
    assert "DDP through accelerate over 2 processes" in log, log

    def losses(run_id):
        rows = run_metrics(db, run_id)
        return ([(m["step"], m["loss"]) for m in rows if m["loss"] is not None],
                [m["eval_loss"] for m in rows if m["eval_loss"] is not None])

    (steps1, dev1), (steps2, dev2) = losses(one), losses(two)
    print(f"DDP (2 processes) vs one process: step losses {steps2} vs {steps1}, dev {dev2} vs "
          f"{dev1}")
    assert [s for s, _ in steps2] == [1, 2]  # one row per step, not one per process
    for (_, a), (_, b) in zip(steps1, steps2, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert dev1 == pytest.approx(dev2, rel=1e-4) and len(dev2) == 1
    w1, w2 = _adapter(one), _adapter(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        diff = (w1[name] - w2[name]).norm() / max(float(w1[name].norm()), 1e-12)
        # Adam's first steps move each weight by about ±lr whatever its gradient's size, so a
        # gradient element near zero whose sign rounding flips (other sums, other packed rows)
        # moves by 2 lr: per mille, not float32's 1e-7.
        assert diff < 1e-2, (name, float(diff))
    assert any("lora_B" in n and w2[n].abs().max() > 0 for n in w2)  # it did train
    # eval_limit 2, dev and test: each process predicted one sentence of each split's batch
    assert "each batch shared by 2 processes" in log, log

    def predicted(run_id):
        return db.execute("SELECT sentence_id FROM predictions WHERE run_id = ? ORDER BY rowid",
                          [run_id]).fetchall()

    assert len(predicted(two)) == 4 and predicted(two) == predicted(one)
    assert db["evaluations"].count_where("run_id = ?", [two]) >= 2




@pytest.mark.slow
def test_fsdp_through_the_users_accelerate_config_trains_like_one_process(db, bundled_model_path,
                                                                          tmp_path):
    """The user's accelerate config asks for FSDP (version 2, the weights sharded per decoder
    layer over gloo): the step losses and the dev loss agree with one process, the adapter is
    gathered on rank 0, saved, loads, and equals one process's; the processes then predict
    with a whole model rebuilt from it."""
    from core.models.adapters import load_adapter
    from core.training.launch import Launch

    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP2_CONFIG.format(n=2))
    project = tiny_project(db, n_train=12, n_dev=2, n_test=2)
    settings = dict(max_steps=3, batch_size=3, grad_accum=1, rank=4, eval_limit=1,
                    dev_loss_sentences=2, precision="fp32")
    one, _ = launcher.submit_training(db, project["id"], quick_config(**settings, gpus=1))
    fsdp, _ = launcher.submit_training(db, project["id"], quick_config(**settings, gpus=2),
                                       setup=Launch(config_file=str(config)))
    for run_id in (one, fsdp):
        run = launcher.wait(db, run_id, timeout_s=900)
        assert run["status"] == "finished", read_log(run_id, 400)
    log = read_log(fsdp, 400)
    assert "FSDP through accelerate over 2 processes" in log, log
    assert "gathered from the processes' shards" in log, log

    def losses(run_id):
        rows = run_metrics(db, run_id)
        return ([m["loss"] for m in rows if m["loss"] is not None],
                [m["eval_loss"] for m in rows if m["eval_loss"] is not None])

    (steps1, dev1), (steps2, dev2) = losses(one), losses(fsdp)
    # float32 rounding of sharded sums, two updates on: up to 1.3e-4 of the third step's loss
    # on an AVX512 CPU (the same with the code of before the prefix changes); wrong gradients
    # give ~1e-2
    assert len(steps2) == 3 and steps2 == pytest.approx(steps1, rel=5e-4)
    assert dev2 == pytest.approx(dev1, rel=1e-4)
    w1, w2 = _adapter(one), _adapter(fsdp)
    assert w1.keys() == w2.keys()
    # One process shares the prompt prefix's key/value cache, FSDP does not (see loop.py): the
    # same sums in another order, which Adam's first steps amplify on the near-zero lora_B.
    diffs = {name: float((w1[name] - w2[name]).norm() / max(float(w1[name].norm()), 1e-12))
             for name in w1}
    worst = max(diffs, key=diffs.get)
    print(f"FSDP vs one process: step losses {steps2} vs {steps1}; largest relative adapter "
          f"difference {diffs[worst]:.2e} ({worst})")
    assert diffs[worst] < 1e-2, (worst, diffs[worst])
    model, _tokenizer = load_adapter(run_dir(fsdp) / "adapter")
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in model.named_parameters())
    assert db["evaluations"].count_where("run_id = ?", [fsdp]) >= 1


@pytest.mark.slow
def test_an_fsdp_config_that_cannot_run_here_fails_the_run_with_the_reason(db, bundled_model_path,
                                                                          tmp_path):
    """FSDP version 1 does not run on a CPU: every process stops at the same place and the run
    fails with a message that says what to change, not a traceback."""
    from core.training.launch import Launch

    config = tmp_path / "fsdp1.yaml"
    config.write_text(FSDP2_CONFIG.format(n=2).replace("fsdp_version: 2", "fsdp_version: 1"))
    project = tiny_project(db, n_train=4, n_dev=1, n_test=1)
    run_id, _ = launcher.submit_training(db, project["id"], quick_config(gpus=2, rank=4),
                                         setup=Launch(config_file=str(config)))
    run = launcher.wait(db, run_id, timeout_s=600)
    assert run["status"] == "failed", read_log(run_id, 200)
    assert "FSDP version 1 does not run on a CPU" in run["error_message"]
    assert "fsdp_version: 2" in run["error_message"]
    assert "Traceback" not in run["error_message"]


@pytest.mark.slow
def test_a_stop_ends_every_process_and_keeps_the_adapter(db, bundled_model_path):
    project = tiny_project(db, n_train=12, n_dev=2, n_test=2)
    cfg = quick_config(max_steps=200, batch_size=2, grad_accum=1, rank=4, gpus=2)
    run_id, started = launcher.submit_training(db, project["id"], cfg)
    assert started
    _wait_for_a_step(db, run_id)
    assert len(_worker_pids(run_id)) == 3  # accelerate's launcher and two ranks
    launcher.request_stop(db, run_id)
    run = launcher.wait(db, run_id, timeout_s=300)
    log = read_log(run_id, 400)
    assert run["status"] == "stopped", log
    assert (run_dir(run_id) / "adapter" / "adapter_model.safetensors").is_file()
    steps = [m["step"] for m in run_metrics(db, run_id) if m["loss"] is not None]
    assert steps and max(steps) < 200
    deadline = time.monotonic() + 60
    while _worker_pids(run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _worker_pids(run_id), "a process of the run outlived it"


@pytest.mark.slow
def test_kill_9_of_rank_0_fails_the_run_and_ends_the_other_processes(db, bundled_model_path):
    import os
    import signal

    project = tiny_project(db, n_train=12, n_dev=2, n_test=2)
    cfg = quick_config(max_steps=200, batch_size=2, grad_accum=1, rank=4, gpus=2)
    run_id, _ = launcher.submit_training(db, project["id"], cfg)
    _wait_for_a_step(db, run_id)
    os.kill(get_run(db, run_id)["pid"], signal.SIGKILL)
    run = launcher.wait(db, run_id, timeout_s=120)
    assert run["status"] == "failed" and "ended without reporting" in run["error_message"]
    deadline = time.monotonic() + 60
    while _worker_pids(run_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _worker_pids(run_id), "the launcher left a process behind"


def _wait_for_a_step(db, run_id: int) -> None:
    deadline = time.monotonic() + 600
    while not any(m["loss"] is not None for m in run_metrics(db, run_id)):
        run = get_run(db, run_id)
        assert run["status"] in ("queued", "running"), read_log(run_id)
        assert time.monotonic() < deadline, read_log(run_id)
        time.sleep(0.5)


def _worker_pids(run_id: int) -> list[int]:
    """Live processes whose command line runs this run's worker (launcher and ranks) with this
    test's data directory (other test sessions on the machine have runs with the same ids)."""
    import os
    from pathlib import Path

    tail = f"core.jobs.worker\0{run_id}\0".encode()
    home = f"\0NERLAB_HOME={os.environ['NERLAB_HOME']}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (tail in (proc / "cmdline").read_bytes()
                        and home in b"\0" + (proc / "environ").read_bytes()
                        and pid_alive(int(proc.name), launcher.WORKER)):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


# -- prediction shared by the processes ----------------------------------------------------------


def test_deal_and_merge_give_back_every_item_once_in_order():
    from core.prediction.predict import deal, merge

    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            items = list(range(n))
            parts = [deal(items, r, world) for r in range(world)]
            assert merge(parts) == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _gloo(args: list[str], world: int, tmp_path) -> list:
    """Run tests/gloo_predict.py in ``world`` processes (1: alone, no process group)."""
    import json
    import os
    import socket
    import subprocess
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"gloo-{world}-{time.monotonic_ns()}.json"
    script = Path(__file__).with_name("gloo_predict.py")
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), *args, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    return json.loads(out.read_text())


@pytest.mark.slow  # no model, but four processes start torch: about half a minute on 2 cores
def test_sharded_rounds_over_two_processes_return_every_sentence_once_in_order(tmp_path):
    """Two gloo processes and a stand-in predictor: rank 0 gets every item once, in order (7 items,
    2 per process per round: the last round is uneven), each process predicted its share only;
    a stop seen by rank 1 alone ends both at the same round."""
    rank0, rank1 = _gloo(["rounds", "7", "2"], 2, tmp_path)
    assert rank0["seen"] == list(range(7)) and rank1["seen"] == []
    assert rank0["chunks"] == rank1["chunks"] == [[0, 1, 2, 3], [4, 5, 6]]
    assert rank0["did"] == [0, 2, 4, 6] and rank1["did"] == [1, 3, 5]
    assert not rank0["stopped"]
    rank0, rank1 = _gloo(["rounds", "7", "1", "2"], 2, tmp_path)  # rank 1 asks after 2 rounds
    assert rank0["stopped"] and rank1["stopped"]
    assert rank0["seen"] == [0, 1, 2, 3] and len(rank0["chunks"]) == len(rank1["chunks"]) == 2


@pytest.mark.slow
def test_two_processes_predict_what_one_predicts(db, bundled_model_path, tmp_path):
    """The bundled model predicts a project's dev and test sentences in one process and in two:
    the same rows, stored once each and in the same order (longest sentence first)."""
    from core.data.runs import create_run
    from core.prediction import baselines

    project = tiny_project(db, n_train=2, n_dev=3, n_test=2)
    runs = {}
    for world in (1, 2):
        runs[world] = create_run(db, project["id"], "zero-shot", baselines.settings("zero-shot", {}))
        _gloo(["run", str(runs[world]), "2"], world, tmp_path)

    def stored(run_id):
        return db.execute("SELECT sentence_id, split, raw_output, spans FROM predictions"
                          " WHERE run_id = ? ORDER BY rowid", [run_id]).fetchall()

    one, two = stored(runs[1]), stored(runs[2])
    assert len(one) == 5 and len({r[0] for r in two}) == len(two)
    assert two == one


@pytest.mark.slow
def test_nerlab_predict_over_two_processes_writes_what_one_process_writes(db, bundled_model_path):
    """``nerlab predict --gpus 2``: the job's two processes share the sentences and rank 0 writes
    every one of them once, in the file's order, with the answers one process gives."""
    import json

    from core.data import io
    from core.jobs import suggest
    from core.prediction import baselines, bulk

    project = tiny_project(db, n_train=2, n_dev=1, n_test=1)
    source = create_run(db, project["id"], "zero-shot", baselines.settings("zero-shot", {}))
    db.execute("UPDATE runs SET status = 'finished' WHERE id = ?", [source])
    db.conn.commit()
    texts = ["Aspirin caused hypotension .", "Naloxone reverses the effect of morphine .",
             "No side effects .", "Cisplatin nephrotoxicity was seen in two patients .",
             "Lithium and tremor ."]
    records = io.parse_bytes("\n".join(texts).encode(), "text")[1]
    jobs = {}
    for gpus in (1, 2):
        jobs[gpus], _ = suggest.submit_predict(db, source, records, "five.txt", batch_size=2,
                                               gpus=gpus)
    for job in jobs.values():
        run = launcher.wait(db, job, timeout_s=900)
        assert run["status"] == "finished", read_log(job, 200)
    assert "1 more process(es) under accelerate launch" in read_log(jobs[2], 200)
    one, two = bulk.output_text(jobs[1]), bulk.output_text(jobs[2])
    rows = [json.loads(line) for line in two.splitlines() if line.strip()]
    assert [r["text"] for r in rows] == texts
    assert two == one
