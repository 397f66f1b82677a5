"""Exact resume (also after SIGKILL), keep-last-K, non-finite steps and a full disk on save."""

import errno
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_FLAGS, TINY_MODEL, model_config

import airscene
import airscene.checkpoint
from airscene.cli import main
from airscene.config import DataConfig, RunConfig, TrainConfig
from airscene.errors import AirsceneError
from airscene.runlog import read_metric_rows
from airscene.train import train

# ``airscene.train`` is also the name of the function the package exports; take the module.
train_module = importlib.import_module("airscene.train")
TIMING = ("train_seconds", "steps_per_second")


def config(**train) -> RunConfig:
    base = dict(
        steps=12,
        batch_size=8,
        eval_every=6,
        eval_scenes=20,
        checkpoint_every=4,
        log_every=3,
        threads=1,
    )
    return RunConfig(
        data=DataConfig(n_train=100, n_test=40),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(**{**base, **train}),
    )


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return {**load_file(newest / "model.safetensors"), **load_file(newest / "baseline.safetensors")}


def comparable(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    rows_a = read_metric_rows(a / "metrics.csv", 10**9)
    rows_b = read_metric_rows(b / "metrics.csv", 10**9)
    assert comparable(rows_a) == comparable(rows_b) and len(rows_a) > 0


def test_resume_from_an_earlier_checkpoint_is_exact(tmp_path):
    whole = train(config(keep_checkpoints=5), tmp_path / "whole", progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(whole.run_dir, cut)
    for later in (
        "step-000000012",
        "step-000000008",
    ):  # as if the run died after step 4's checkpoint
        shutil.rmtree(cut / "checkpoints" / later)
    train(None, cut, resume=True, progress=False)
    assert_same_run(whole.run_dir, cut)


def run_flags(steps: int, checkpoint_every: int) -> list[str]:
    return [
        "--steps", str(steps), "--batch-size", "8", "--checkpoint-every", str(checkpoint_every),
        "--log-every", "10", "--eval-every", "100", "--eval-scenes", "20", "--threads", "1",
        "--n-train", "100", "--n-test", "40", *TINY_FLAGS,
    ]  # fmt: skip


def start_training(run_dir: Path, flags: list[str], until) -> subprocess.Popen:
    """``airscene train`` in a process of its own, once ``until()`` holds (or 120 s passed)."""
    env = {**os.environ, "PYTHONPATH": str(Path(airscene.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "airscene", "train", "--run-dir", str(run_dir), *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    flags = run_flags(steps=400, checkpoint_every=20)
    killed = tmp_path / "killed"
    process = start_training(
        killed, flags, lambda: any((killed / "checkpoints").glob("step-*/checkpoint.json"))
    )
    process.send_signal(signal.SIGKILL)
    process.communicate()
    checkpoints = sorted((killed / "checkpoints").glob("step-*"))
    assert checkpoints and checkpoints[-1].name != "step-000000400", (
        "the run ended before it could be killed"
    )
    assert main(["train", "--resume", str(killed)]) == 0

    whole = tmp_path / "whole"
    assert main(["train", "--run-dir", str(whole), *flags]) == 0
    assert_same_run(whole, killed)


def test_keep_last_checkpoints(tmp_path):
    result = train(config(checkpoint_every=2, keep_checkpoints=3), tmp_path / "run", progress=False)
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["step-000000008", "step-000000010", "step-000000012"]


def test_resume_refuses_flags_and_bad_directories(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    train(config(), tmp_path / "run", progress=False)
    assert main(["train", "--resume", str(tmp_path / "run"), "--batch-size", "4"]) == 2
    assert "drop --batch-size" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "12"]) == 0  # finished
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "8"]) == 2
    assert "--steps must be more" in capsys.readouterr().err


def test_resume_extends_a_finished_run(tmp_path):
    # --resume RUN --steps N takes a finished run on to step N; the schedule then ends at N, so
    # the extended run is the same as one trained to N from a checkpoint of a run of N steps
    # only where the two schedules agree: here a constant learning rate.
    run = train(config(lr_schedule="constant"), tmp_path / "run", progress=False).run_dir
    assert main(["train", "--resume", str(run), "--steps", "20"]) == 0
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert newest.name == "step-000000020"
    assert '"steps": 20' in (run / "config.json").read_text()
    longer = train(config(lr_schedule="constant", steps=20), tmp_path / "longer", progress=False)
    assert_same_run(longer.run_dir, run)


def test_sigterm_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path):
    flags = run_flags(steps=300, checkpoint_every=1000)
    stopped = tmp_path / "stopped"
    metrics = stopped / "metrics.csv"
    process = start_training(
        stopped, flags, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3
    )
    process.send_signal(signal.SIGTERM)  # no scheduled checkpoint has been written yet
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("airscene: interrupted:") and "checkpoint written" in last, err
    checkpoints = sorted((stopped / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1 and checkpoints[0].name != "step-000000300"
    assert main(["train", "--resume", str(stopped)]) == 0
    whole = tmp_path / "whole"
    assert main(["train", "--run-dir", str(whole), *flags]) == 0
    assert_same_run(whole, stopped)


def nan_objective_on(steps: set[int]):
    original = train_module.air_objective
    calls = {"n": 0}

    def objective(*args, **kwargs):
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] in steps:
            result.loss = result.loss * float("nan")
        return result

    return objective


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "air_objective", nan_objective_on({2, 5, 6}))
    result = train(config(), tmp_path / "run", progress=False)
    assert result.final_metrics["skipped_steps"] == 3
    assert all(torch.isfinite(w).all() for w in final_weights(result.run_dir).values())


def test_nonfinite_run_stops_naming_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "air_objective", nan_objective_on(set(range(6, 100))))
    with pytest.raises(
        AirsceneError, match=r"non-finite .* last good checkpoint is .*step-000000004"
    ):
        train(config(max_nonfinite_steps=3), tmp_path / "run", progress=False)


def test_full_disk_on_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = airscene.checkpoint.save_file
    calls = {"n": 0}

    def save_file(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (model + baseline) fits; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(airscene.checkpoint, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(
        AirsceneError, match=r"No space left on device.*last good checkpoint is .*step-000000004"
    ):
        train(config(), run, progress=False)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [
        "step-000000004"
    ]  # no half-written staging
    monkeypatch.undo()
    airscene.checkpoint.load_model(run)  # the good one still loads
