"""The object-model seam: a model with a discrete per-object latent trains through the same loop,
and the objective gives its discrete latent the likelihood-ratio gradient; the rows helper."""

import dataclasses
import json
import math
from typing import Literal

import pytest
import torch
from tiny import TINY_MODEL, model_config

from airscene.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from airscene.cli import build_parser, config_from_args, main
from airscene.config import (
    OBJECT_CONFIGS,
    ConfigError,
    DataConfig,
    GlimpseConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    from_dict,
)
from airscene.densities import categorical_log_prob, normal_log_prob
from airscene.errors import AirsceneError
from airscene.model import Inference, build_model
from airscene.objective import air_objective
from airscene.objects import ObjectModel, ObjectStep
from airscene.registry import OBJECT_MODELS
from airscene.rows import ActiveRows, StepNoise
from airscene.spatial import write_glimpse
from airscene.train import Trainer

# Two hand-drawn shapes that differ only in orientation: a horizontal and a vertical bar.
TEMPLATES = torch.zeros(2, 10, 10)
TEMPLATES[0, 3:7, :] = 1.0
TEMPLATES[1, :, 3:7] = 1.0
CANVAS, WINDOW = 20, 0.5  # a 10 px window on a 20 px canvas: one template pixel per pixel


@dataclasses.dataclass(frozen=True)
class BarsConfig:
    """Toy objects: a categorical shape and a position."""

    kind: Literal["bars"] = "bars"


class BarObjects(ObjectModel):
    """A fixed renderer of two shapes: per object a categorical shape (discrete, no pathwise
    gradient) and a position (x, y), reparameterised through the spatial transformer."""

    default_data = "multi-mnist"

    def __init__(self, canvas_size: int) -> None:
        super().__init__()
        self.canvas_size = canvas_size
        self.feedback_dim = 2 + 2  # one-hot shape, position
        self.register_buffer("templates", TEMPLATES.clone(), persistent=False)
        self.prior_scale = torch.tensor(0.1)  # positions near the centre

    @classmethod
    def from_config(cls, config):
        return cls(config.canvas_size)

    def initial_params(self):  # shape logits, position loc, position scale before its bound
        return torch.tensor([0.0, 0.0, 0.0, 0.0, -2.0, -2.0])

    def infer(self, seen, params, noise):
        logits, loc = params[:, :2], params[:, 2:4]
        scale = 0.1 * torch.sigmoid(params[:, 4:]) + 1e-4
        shape = logits.argmax(-1) if noise is None else noise.categorical(logits)
        position = loc if noise is None else loc + scale * noise.normal(2)
        return ObjectStep(
            values={"shape": shape.to(params.dtype), "position": position},
            log_q=normal_log_prob(position, loc, scale).sum(-1),
            log_p=math.log(0.5)
            + normal_log_prob(position, torch.zeros(()), torch.ones(())).sum(-1),
            log_q_discrete=categorical_log_prob(shape, logits),
        )

    def feedback(self, values):
        one_hot = torch.nn.functional.one_hot(values["shape"].long(), 2)
        return torch.cat([one_hot.to(values["position"].dtype), values["position"]], dim=-1)

    def sample_prior(self, n, like, generator, within_canvas=False):
        shape = torch.randint(0, 2, (n,), generator=generator).to(like.dtype)
        return {"shape": shape, "position": torch.randn(n, 2, generator=generator) * 0.1}

    def draw(self, values):
        shape, position = values["shape"].long(), values["position"]
        z_where = torch.cat([torch.full_like(position[:, :1], WINDOW), position], dim=1)
        return write_glimpse(self.templates[shape], z_where, self.canvas_size)


@pytest.fixture
def bar_objects(monkeypatch):
    monkeypatch.setitem(OBJECT_CONFIGS, "bars", BarsConfig)
    monkeypatch.setitem(OBJECT_MODELS, "bars", BarObjects)  # a class registers as itself


def bar_scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one bar of a random shape near the centre: uint8 images and shapes."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(0, 2, (n,), generator=g)
    position = torch.rand(n, 2, generator=g) * 0.2 - 0.1  # within a pixel of the centre
    z_where = torch.cat([torch.full((n, 1), WINDOW), position], dim=1)
    images = write_glimpse(TEMPLATES[shape], z_where, CANVAS).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), shape


def bar_run(steps: int) -> RunConfig:
    return RunConfig(
        data=DataConfig(canvas_size=CANVAS),
        model=ModelConfig(
            canvas_size=CANVAS,
            max_steps=1,
            lstm_size=32,
            predictor_hidden=32,
            baseline_lstm_size=16,
            z_pres_prior=0.5,
            objects=BarsConfig(),
        ),
        train=TrainConfig(steps=steps, batch_size=32, learning_rate=3e-3, eval_every=0, seed=0),
    )


def test_a_discrete_object_latent_trains_through_the_loop(bar_objects):
    images, _ = bar_scenes(2000, seed=0)
    trainer = Trainer(bar_run(steps=300), torch.device("cpu"))
    x = images[:64].float() / 255

    # The shape's logits get a gradient, and part of it is the likelihood-ratio term's: without
    # log q(shape) in the surrogate the gradient on those rows of the predictor differs.
    inference, objective = trainer.objective(x, rho=0.5)
    shape_rows = trainer.model.predictor.net[-1].weight  # rows 1, 2: the shape's logits
    (with_term,) = torch.autograd.grad(objective.loss, shape_rows, retain_graph=True)
    assert inference.log_q_discrete.requires_grad and bool(inference.log_q_discrete.ne(0).any())
    baselines = torch.zeros_like(inference.z_pres)
    without = dataclasses.replace(inference, log_q_discrete=torch.zeros_like(inference.z_pres))
    (no_term,) = torch.autograd.grad(air_objective(without, baselines).loss, shape_rows)
    assert with_term[1:3].abs().sum() > 0
    assert not torch.allclose(with_term[1:3], no_term[1:3])

    for _ in range(trainer.train_config.steps):
        assert trainer.train_step(images, None)
    test_images, test_shapes = bar_scenes(500, seed=1)
    with torch.no_grad():
        found = trainer.model(test_images.float() / 255, sample=False)
    assert bool((found.count == 1).all())
    # Untrained, the shape is a coin toss (half right); trained, it is read off the image.
    accuracy = (found.objects["shape"][:, 0].long() == test_shapes).float().mean()
    assert float(accuracy) > 0.95, float(accuracy)


def test_discrete_latent_gradient_matches_analytic_gradient():
    # One present object with a categorical latent s ~ softmax(theta) and log p(x | s) = r_s:
    # E_q[r_s + log p(s) - log q(s)] has a closed form; the estimator's mean gradient (the
    # likelihood-ratio term plus the pathwise -log q) must match its derivative.
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    reward, log_prior = torch.tensor([5.0, 2.0, -1.0]), math.log(1 / 3)
    prob = theta.softmax(0)
    expected = (prob * (reward + log_prior - prob.log())).sum()
    (analytic,) = torch.autograd.grad(expected, theta)

    n = 400_000
    s = torch.multinomial(
        prob.detach(), n, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    log_q = categorical_log_prob(s, theta.expand(n, 3)).view(n, 1)
    ones, zeros = torch.ones(n, 1), torch.zeros(n, 1)
    inference = Inference(
        z_pres=ones,
        z_pres_prob=ones,
        objects={"shape": s.float().view(n, 1)},
        feedback=zeros,
        log_q_z_pres=zeros,
        log_p_z_pres=zeros,
        log_q_object=log_q,
        log_p_object=torch.full((n, 1), log_prior),
        log_q_discrete=log_q,
        log_likelihood=reward[s],
        canvas=torch.zeros(n, 2, 2),
        scene=torch.zeros(n, 2, 2),
    )
    for baseline in (0.0, 3.7):  # any baseline leaves the mean unchanged
        objective = air_objective(inference, torch.full((n, 1), baseline))
        (estimate,) = torch.autograd.grad(-objective.loss, theta, retain_graph=True)
        torch.testing.assert_close(estimate, analytic, atol=0.02, rtol=0.02)


def test_active_rows_take_keep_and_scatter():
    rows = ActiveRows(batch=4, steps=3, device=torch.device("cpu"))
    x = torch.arange(4.0)
    values = []
    # step 0: rows 0-3 run, 0 and 3 go on; step 1: rows 0 and 3, 0 goes on; step 2: row 0
    for t, keep in enumerate(([0, 3], [0], [0])):
        rows.record(t)
        values.append(rows.take(x) + 10 * t)
        (carried,) = rows.keep(torch.tensor(keep), rows.take(x))
        assert carried.tolist() == rows.take(x).tolist()
    assert rows.index.tolist() == [0]
    packed = rows.pack({"v": values, "pair": [torch.stack([v, -v], 1) for v in values]})
    assert packed.columns()["v"].tolist() == [0, 1, 2, 3, 10, 13, 20]  # rows in step order
    every = packed.scatter()
    assert every["v"].tolist() == [[0, 10, 20], [1, 0, 0], [2, 0, 0], [3, 13, 0]]
    assert every["pair"].shape == (4, 3, 2)
    torch.testing.assert_close(every["pair"][..., 1], -every["v"])


def test_categorical_noise_draws_the_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(100_000, 3)
    noise = StepNoise(torch.Generator().manual_seed(0), 100_000, logits)
    frequency = torch.bincount(noise.categorical(logits), minlength=3).float() / 100_000
    torch.testing.assert_close(frequency, torch.tensor([0.2, 0.5, 0.3]), atol=0.01, rtol=0)


def test_checkpoints_name_their_object_model(tmp_path):
    # A checkpoint names its object model beside its config; one that does not, or whose name
    # and config disagree, is refused in one line, as is an object model of no known kind.
    config = RunConfig(model=model_config(**TINY_MODEL))
    with pytest.raises(ConfigError, match="unknown kind 'renderer'"):
        from_dict(ModelConfig, {"objects": {"kind": "renderer"}})
    old = save_checkpoint(tmp_path / "old", config, build_model(config.model), step=1)
    meta = json.loads((old / "checkpoint.json").read_text())
    meta.pop("object_model")
    (old / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="names no object model"):
        read_checkpoint(old)
    # A checkpoint written now names its object model.
    path = save_checkpoint(tmp_path / "new", config, build_model(config.model), step=1)
    assert json.loads((path / "checkpoint.json").read_text())["object_model"] == "glimpse"


def test_object_model_flags_come_from_its_config(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--z-where-prior-loc A,B,C" in help_text
        and "--objects {glimpse,render3d,masked}" in help_text
    )
    assert "--pose-gradient {autograd,finite-difference}" in help_text
    args = build_parser().parse_args(["train", "--z-what-dim", "7", "--lstm-size", "9"])
    model = config_from_args(ModelConfig, args)
    assert model.lstm_size == 9 and model.objects == GlimpseConfig(z_what_dim=7)
    assert main(["train", "--resume", "runs/x", "--z-what-dim", "7"]) == 2
    assert "drop --z-what-dim" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class OtherConfig:
    """Another object model, sharing a setting with the glimpse model."""

    kind: Literal["other"] = "other"
    z_what_dim: int = 3
    sides: int = 4


def test_a_second_object_kind_gets_its_own_flags(monkeypatch, capsys):
    monkeypatch.setitem(OBJECT_CONFIGS, "other", OtherConfig)
    parser = build_parser()  # the shared --z-what-dim is one flag
    args = parser.parse_args(["train", "--objects", "other", "--sides", "6", "--z-what-dim", "5"])
    assert config_from_args(ModelConfig, args).objects == OtherConfig(z_what_dim=5, sides=6)
    args = parser.parse_args(["train", "--sides", "6"])  # a setting of the kind not chosen
    with pytest.raises(
        AirsceneError, match="--sides: a setting of --objects other, not of glimpse"
    ):
        config_from_args(ModelConfig, args)


def test_a_checkpoint_whose_object_model_disagrees_with_its_config_is_refused(tmp_path):
    config = RunConfig(model=model_config(**TINY_MODEL))
    path = save_checkpoint(tmp_path / "ckpt", config, build_model(config.model), step=1)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["object_model"] = "renderer"
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="says object model 'renderer'"):
        read_checkpoint(path)
