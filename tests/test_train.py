"""Training loop, checkpoints and the train/eval/show/sample verbs, on tiny configs."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_FLAGS, TINY_MODEL, model_config

from airscene.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from airscene.cli import main
from airscene.config import DataConfig, RunConfig, TrainConfig
from airscene.model import build_model
from airscene.train import Trainer, train, z_pres_prior_at


def tiny_config(**train_overrides) -> RunConfig:
    return RunConfig(
        data=DataConfig(n_train=200, n_test=100),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(
            **{
                "steps": 12,
                "batch_size": 8,
                "eval_every": 6,
                "eval_scenes": 50,
                "checkpoint_every": 6,
                "log_every": 3,
                **train_overrides,
            }
        ),
    )


def test_train_writes_run_directory(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(), run, progress=False)
    assert result.steps == 12
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["model"]["lstm_size"] == 16 and "git_revision" in saved
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert rows[1]["eval_count_accuracy"] != "" and rows[0]["eval_count_accuracy"] == ""
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, not NaN
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step-000000006", "step-000000012"]
    assert any((run / "tensorboard").iterdir())
    checkpoint = read_checkpoint(run)
    assert checkpoint.step == 12 and checkpoint.config == tiny_config()
    assert set(checkpoint.trainer_state()) >= {"model_optimiser", "baseline_optimiser", "noise_rng"}


def test_train_refuses_non_empty_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        train(tiny_config(), run, progress=False)
    assert (run / "keep.txt").read_text() == "mine"


def test_z_pres_prior_annealing_is_geometric():
    config = TrainConfig(z_pres_prior_start=0.5, z_pres_prior_anneal_steps=100)
    assert z_pres_prior_at(0, 1e-4, config) == pytest.approx(0.5)
    assert z_pres_prior_at(50, 1e-4, config) == pytest.approx((0.5 * 1e-4) ** 0.5)
    assert z_pres_prior_at(100, 1e-4, config) == pytest.approx(1e-4)
    assert z_pres_prior_at(1000, 1e-4, config) == pytest.approx(1e-4)
    assert z_pres_prior_at(10, 1e-4, TrainConfig()) == 1e-4


@pytest.mark.parametrize("dair", [False, True])
@pytest.mark.parametrize("glimpse_networks", ["dense", "conv"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, dair, glimpse_networks):
    torch.manual_seed(0)
    config = RunConfig(
        model=model_config(dair=dair, glimpse_networks=glimpse_networks, **TINY_MODEL)
    )
    model = build_model(config.model)
    save_checkpoint(tmp_path / "ckpt", config, model, step=7, metrics={"count_accuracy": 0.5})
    loaded, checkpoint = load_model(tmp_path / "ckpt")
    assert checkpoint.step == 7 and checkpoint.metrics == {"count_accuracy": 0.5}
    x = torch.rand(4, 50, 50)
    a = model(x, generator=torch.Generator().manual_seed(1))
    b = loaded(x, generator=torch.Generator().manual_seed(1))
    for name in ("z_pres", "canvas", "elbo"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    for name in ("z_where", "z_what"):
        torch.testing.assert_close(a.objects[name], b.objects[name], rtol=0, atol=0)


def test_corrupt_and_mismatched_checkpoints_are_rejected(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model=model_config(**TINY_MODEL))
    path = save_checkpoint(tmp_path / "ckpt", config, build_model(config.model), step=1)
    weights = (path / "model.safetensors").read_bytes()

    (path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_model(path)

    (path / "model.safetensors").write_bytes(weights)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["config"]["model"]["lstm_size"] = 32  # weights no longer fit the config
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(path)

    meta["format_version"] = 99
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99"):
        load_model(path)

    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing")


def test_cli_train_eval_show_sample(tmp_path, capsys):
    run = tmp_path / "run"
    flags = [
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--eval-every",
        "3",
        "--eval-scenes",
        "20",
        "--log-every",
        "3",
    ]
    data = ["--n-train", "200", "--n-test", "100"]
    assert main(["train", "--run-dir", str(run), *flags, *data, *TINY_FLAGS]) == 0
    assert main(["train", "--run-dir", str(run), *flags, *data, *TINY_FLAGS]) == 2
    assert "not empty" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(run),
                "--n",
                "40",
                "--iw-samples",
                "3",
                "--out",
                str(report),
                "--quiet",
            ]
        )  # fmt: skip
        == 0
    )
    result = json.loads(report.read_text())
    assert result["scenes"] == 40 and 0.0 <= result["count_accuracy"] <= 1.0
    assert sum(map(sum, result["confusion"])) == 40 and result["log_px"] is not None

    for verb in ("show", "sample"):
        figure = tmp_path / f"{verb}.png"
        assert main([verb, "--model", str(run), "--n", "4", "--out", str(figure)]) == 0
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("airscene: error:")


def test_cli_rejects_bad_config_values(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--z-pres-prior", "1.5"]) == 2
    assert "z_pres_prior" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cosine_learning_rate_schedule():
    from airscene.train import learning_rate_at

    config = TrainConfig(steps=101, learning_rate=1e-3, final_lr_fraction=0.1)
    assert learning_rate_at(1, config) == pytest.approx(1e-3)
    assert learning_rate_at(51, config) == pytest.approx(0.55e-3)
    assert learning_rate_at(101, config) == pytest.approx(1e-4)
    rates = [learning_rate_at(s, config) for s in range(1, 102)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert learning_rate_at(60, TrainConfig(lr_schedule="constant", learning_rate=3e-4)) == 3e-4


def test_cli_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    torch.manual_seed(0)
    config = RunConfig(model=model_config(**TINY_MODEL))
    good = save_checkpoint(tmp_path / "good", config, build_model(config.model), step=1)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    foreign = tmp_path / "foreign"
    shutil.copytree(good, foreign)
    meta = json.loads((foreign / "checkpoint.json").read_text())
    meta["format_version"] = 2
    (foreign / "checkpoint.json").write_text(json.dumps(meta))
    mismatched = tmp_path / "mismatched"
    shutil.copytree(good, mismatched)
    meta = json.loads((mismatched / "checkpoint.json").read_text())
    meta["config"]["model"]["objects"]["z_what_dim"] = 7
    (mismatched / "checkpoint.json").write_text(json.dumps(meta))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((50, 50), dtype=np.uint8)).save(image)

    for path, message in (
        (corrupt, "corrupt weights"),
        (foreign, "format 2"),
        (mismatched, "the config needs"),
    ):
        before = {p.name: p.read_bytes() for p in path.iterdir()}
        for argv in (["eval", "--model", str(path)], ["infer", str(image), "--model", str(path)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("airscene: error:") and message in err[0], (
                err
            )
        assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("z_pres_baseline", ["learned", "stop"])
def test_tiny_model_overfits_a_handful_of_scenes(z_pres_baseline):
    # The whole training path (reparameterised z_where/z_what, REINFORCE for z_pres with the
    # NVIL baseline or with the stop baseline and the network for the rest, the decoder) on 16
    # fixed scenes of 0 or 1 digit with one inference step: the loss falls and every scene's
    # count becomes right. (With N >= 2 a handful of fixed scenes
    # lets the decoder memorise a digit split over two windows, so multi-object counting is
    # shown by benchmarks/time_to_accuracy.py, not here.)
    from airscene.data.scenes import load_scenes
    from airscene.data.training import images_to_tensor
    from airscene.train import Trainer

    size = dict(
        lstm_size=32,
        encoder_hidden=32,
        decoder_hidden=32,
        predictor_hidden=32,
        baseline_lstm_size=32,
    )
    config = RunConfig(
        data=DataConfig(n_train=16, counts=(0, 1)),
        model=model_config(max_steps=1, z_what_dim=8, **size),
        train=TrainConfig(
            steps=1500,
            batch_size=16,
            learning_rate=2e-3,
            lr_schedule="constant",
            threads=2,
            z_pres_baseline=z_pres_baseline,
        ),
    )
    scenes = load_scenes(config.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    assert set(scenes.counts.tolist()) == {0, 1}
    trainer = Trainer(config, torch.device("cpu"))
    losses = []
    for _ in range(config.train.steps):
        trainer.train_step(images, counts)
        if trainer.summed_steps == 50:
            losses.append(trainer.take_means()[0])
    assert losses[-1] < losses[0] - 100  # nats per image
    with torch.no_grad():
        found = trainer.model(images_to_tensor(scenes.images), sample=False).count
    assert found.tolist() == scenes.counts.tolist()


@pytest.mark.parametrize("grad_clip", [None, 5.0])
def test_a_nonfinite_gradient_with_a_finite_loss_skips_the_step(grad_clip):
    config = tiny_config(grad_clip=grad_clip, threads=None)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 50, 50), np.uint8))
    trainer = Trainer(config, torch.device("cpu"))
    assert trainer.train_step(images, None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    weight = trainer.model.core.image_to_gates.weight
    hook = weight.register_hook(lambda grad: grad.index_fill(0, torch.tensor([7]), float("nan")))
    assert not trainer.train_step(images, None)
    assert trainer.nonfinite_total == 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    hook.remove()
    assert trainer.train_step(images, None) and trainer.nonfinite_in_a_row == 0
