"""Data-parallel training (torch.distributed, gloo, two processes on this machine, started by
torchrun): the same weights as one process drawing both shards' images and noise, one writer,
ranks that agree, and exact resume after SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_resume import assert_same_run, final_weights
from tiny import TINY_FLAGS, TINY_MODEL, model_config

import airscene
from airscene.checkpoint import CheckpointError
from airscene.config import DataConfig, RunConfig, TrainConfig
from airscene.errors import AirsceneError
from airscene.runlog import read_metric_rows
from airscene.train import Trainer, train

if not torch.distributed.is_available():
    pytest.skip("this PyTorch has no torch.distributed", allow_module_level=True)

TESTS = Path(__file__).resolve().parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(airscene.__file__).parents[1]), str(TESTS)]),
    "OMP_NUM_THREADS": "1",
}
DATA_FLAGS = ["--n-train", "100", "--n-test", "40", "--threads", "1", *TINY_FLAGS]


def torchrun(*args: str, processes: int = 2, **popen) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free port of its own each time)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", *args]
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output = process.communicate(timeout=timeout)[0].decode(errors="replace")
    assert process.returncode == 0, output[-3000:]
    return output


def _state(pid: int) -> str:
    """A process's state letter from /proc (R, S, Z, ...); '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_config(steps: int, **train) -> RunConfig:
    """The config the CLI flags below make (the tiny model on 100 scenes)."""
    return RunConfig(
        data=DataConfig(n_train=100, n_test=40),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(steps=steps, threads=1, **train),
    )


def test_two_processes_equal_one_process_drawing_both_shards(tmp_path):
    flags = ["--steps", "6", "--batch-size", "16", "--checkpoint-every", "3", "--log-every", "2"]
    flags += ["--eval-every", "3", "--eval-scenes", "20"]
    ddp = tmp_path / "ddp"
    finish(torchrun("-m", "airscene", "train", "--run-dir", str(ddp), *flags, *DATA_FLAGS))
    config = run_config(
        6, batch_size=16, checkpoint_every=3, log_every=2, eval_every=3, eval_scenes=20
    )
    one = train(config, tmp_path / "one", progress=False, shards=(0, 1))

    ddp_weights, one_weights = final_weights(ddp), final_weights(one.run_dir)
    assert ddp_weights.keys() == one_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], rtol=1e-4, atol=1e-5)
    # The run really trained: the weights moved from their initial values.
    moved = final_weights(one.run_dir)["predictor.net.0.weight"]
    init = Trainer(config, torch.device("cpu")).model.state_dict()["predictor.net.0.weight"]
    assert not torch.allclose(moved, init)

    rows_ddp = read_metric_rows(ddp / "metrics.csv", 10**9)
    rows_one = read_metric_rows(one.run_dir / "metrics.csv", 10**9)
    assert [r["step"] for r in rows_ddp] == [2, 4, 6]  # one writer: no row twice
    for a, b in zip(rows_ddp, rows_one, strict=True):
        for key in ("loss", "elbo", "count_accuracy", "eval_count_accuracy", "eval_elbo"):
            if key in a or key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    # Exactly one process wrote: one TensorBoard event file, checkpoints named once.
    assert len(list((ddp / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == [
        "step-000000003",
        "step-000000006",
    ]


def test_ranks_agree_on_weights_baseline_and_signal_moments(tmp_path):
    finish(torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path)))
    rank0 = torch.load(tmp_path / "rank-0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank-1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert bool(rank0["normaliser.initialised"]) and float(rank0["normaliser.variance"]) != 1.0


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in /proc")
def test_a_killed_two_process_run_resumes_exactly(tmp_path):
    flags = ["--steps", "120", "--batch-size", "8", "--checkpoint-every", "10", "--log-every", "5"]
    flags += ["--eval-every", "60", "--eval-scenes", "20", *DATA_FLAGS]
    killed = tmp_path / "killed"
    process = torchrun("-m", "airscene", "train", "--run-dir", str(killed), *flags)
    deadline = time.monotonic() + 120
    while not any((killed / "checkpoints").glob("step-*/checkpoint.json")):
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.01)
    # torchrun starts each worker in a session of its own: kill the workers, then torchrun.
    workers = descendants(process.pid)
    assert len(workers) >= 2, workers
    for pid in [*workers, process.pid]:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    for pid in workers:  # gone before anything resumes the run
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            time.sleep(0.01)
    checkpoints = sorted((killed / "checkpoints").glob("step-*"))
    assert checkpoints[-1].name != "step-000000120", "the run ended before it could be killed"
    finish(torchrun("-m", "airscene", "train", "--resume", str(killed)))

    whole = tmp_path / "whole"
    finish(torchrun("-m", "airscene", "train", "--run-dir", str(whole), *flags))
    assert_same_run(whole, killed)

    meta = json.loads(
        (sorted((whole / "checkpoints").glob("step-*"))[-1] / "checkpoint.json").read_text()
    )
    assert meta["trainer"]["shards"] == 2 and len(meta["trainer"]["shard_batch_rng"]) == 2

    # One process cannot take over a two-process run's streams: a clear refusal.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\) and is resumed by 1"):
        train(None, cut, resume=True, progress=False)


def test_a_global_batch_must_split_evenly():
    with pytest.raises(AirsceneError, match="does not split evenly over 2 processes"):
        Trainer(run_config(1, batch_size=9), torch.device("cpu"), shards=(0, 1))
