"""AIR over the fixed 3D renderer: the renderer's object model, its gradients, and the 3D metrics."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from airscene.config import DataConfig, ModelConfig, RenderedConfig, RunConfig, TrainConfig
from airscene.data.scenes3d import make_scenes3d
from airscene.evaluate3d import Inferred3D, rotation_error_deg, score_scenes3d
from airscene.model import build_model
from airscene.objects3d import RenderedObjects
from airscene.render3d import SHAPES, Renderer
from airscene.train import Trainer

torch.set_num_threads(2)


def objects(**settings) -> RenderedObjects:
    return RenderedObjects(RenderedConfig(**settings), canvas_size=64, max_objects=3)


def values(shape, position, turn):
    return {
        "shape": torch.tensor(shape, dtype=torch.float32),
        "position": torch.tensor(position, dtype=torch.float32),
        "turn": torch.tensor(turn, dtype=torch.float32),
    }


def test_painted_canvas_is_the_renderers_scene_whatever_the_painting_order():
    model = objects()
    scene = values([1, 2, 0], [[0.0, -0.1], [0.1, 0.45], [-0.5, 0.2]], [0.4, 1.0, 0.0])
    renderer = Renderer()
    rotation = model.rotation(scene)
    expected = renderer.render(
        scene["shape"].long()[None], scene["position"][None], rotation[None]
    )[0]
    x = torch.zeros(2, 64, 64)
    # Image 1 gets the three objects: two in one call (nearest last), one in another.
    canvas = model.blank_canvas(x)
    first = {k: v[[2, 1]] for k, v in scene.items()}
    canvas = model.paint(canvas, torch.tensor([1, 1]), first)
    canvas = model.paint(canvas, torch.tensor([1]), {k: v[[0]] for k, v in scene.items()})
    image = model.canvas_image(canvas)
    assert torch.allclose(image[1], expected, atol=1e-6)
    # Image 0 got nothing: the bare floor.
    assert torch.allclose(image[0], torch.full((64, 64), renderer.floor_shade))
    # The nearer object (y = -0.1, the cube) hides the farther cylinder where they overlap.
    alone = model.draw({k: v[[1]] for k, v in scene.items()})[0]
    assert not torch.allclose(alone, image[1])


def test_a_turn_by_its_symmetry_order_is_the_same_scene_and_a_quarter_cylinder_turn_is_not():
    model = objects()
    cube = model.draw(values([1, 1], [[0.0, 0.0]] * 2, [0.3, 0.3 + 2 * math.pi]))
    assert torch.allclose(cube[0], cube[1], atol=1e-5)
    # turn = order * rotation: a full turn of a cube's turn is a quarter turn of the cube.
    assert torch.allclose(
        model.rotation(values([1], [[0, 0]], [2 * math.pi])), torch.tensor([math.pi / 2])
    )
    cylinder = model.draw(values([2, 2], [[0.0, 0.0]] * 2, [0.0, math.pi / 2]))
    assert (cylinder[0] - cylinder[1]).abs().max() > 0.3


def pose_gradients(method: str, scene: dict, target: torch.Tensor) -> torch.Tensor:
    """d loss / d (positions, turns) of a scene's squared error to ``target``, flattened."""
    model = objects(pose_gradient=method, finite_difference_step=1e-3)
    position = scene["position"].clone().requires_grad_()
    turn = scene["turn"].clone().requires_grad_()
    drawn = {"shape": scene["shape"], "position": position, "turn": turn}
    canvas = model.paint(
        model.blank_canvas(target), torch.zeros(len(turn), dtype=torch.long), drawn
    )
    loss = ((model.canvas_image(canvas) - target) ** 2).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, (position, turn))])


def test_finite_difference_pose_gradients_agree_with_autograd_where_the_image_is_smooth():
    # A cylinder partly hiding a sphere: every pixel moves smoothly with the poses at the finite
    # differences' step. (A cube seen with a face nearly edge-on has pixels whose coverage
    # changes within a thousandth of a unit, where the two estimators rightly differ.)
    torch.manual_seed(0)
    scene = values([2, 0], [[0.1, -0.2], [-0.15, 0.3]], [1.0, 0.0])
    target = torch.rand(1, 64, 64)
    auto = pose_gradients("autograd", scene, target)
    finite = pose_gradients("finite-difference", scene, target)
    assert float(auto.abs()[:5].min()) > 0.1  # positions and the cylinder's turn matter
    # The sphere's turn changes nothing: autograd says zero, the differences float32 noise.
    scale = float(auto.abs().max())
    assert abs(float(auto[-1])) < 1e-5 * scale and abs(float(finite[-1])) < 0.01 * scale
    # Elsewhere they agree to the differences' own error (a step of 1e-3 at soft edges).
    assert torch.allclose(auto[:-1], finite[:-1], rtol=0.15), (auto, finite)
    assert float(torch.nn.functional.cosine_similarity(auto, finite, dim=0)) > 0.99


def test_rotation_error_is_taken_modulo_the_symmetry():
    errors = rotation_error_deg(
        np.array([10.0, 10.0, 350.0, 0.0]),
        np.array([100.0, 95.0, 5.0, 45.0]),
        np.array([90.0, 90.0, 90.0, 90.0]),
    )
    assert np.allclose(errors, [0.0, 5.0, 15.0, 45.0])
    assert np.allclose(
        rotation_error_deg(np.array([0.0]), np.array([179.0]), np.array([180.0])), [1.0]
    )


def test_the_ground_truth_scores_perfectly_and_a_wrong_answer_does_not():
    scenes = make_scenes3d(40, "test", seed=3)
    n = 3
    truth = Inferred3D(
        counts=scenes.counts.copy(),
        shapes=scenes.shapes.copy(),
        # Listed in another order, and the cube and cylinder turned by their symmetry angles.
        positions=scenes.positions[:, ::-1].copy(),
        rotations_deg=np.where(scenes.shapes == 1, 90.0, np.where(scenes.shapes == 2, 180.0, 7.0))
        + scenes.rotations_deg,
        presence=np.ones((len(scenes), n)),
        elbo=np.zeros(len(scenes)),
    )
    truth.shapes = truth.shapes[:, ::-1].copy()
    truth.rotations_deg = truth.rotations_deg[:, ::-1].copy()
    perfect = score_scenes3d(scenes, truth, max_steps=n)
    assert perfect.count_accuracy == 1.0 and perfect.shape_accuracy == 1.0
    assert perfect.position_error_median == 0.0
    assert perfect.rotation_error_median_deg < 1e-3
    assert perfect.matched_objects == int(scenes.counts.sum())

    wrong = dataclasses.replace(
        truth, shapes=np.where(truth.shapes >= 0, (truth.shapes + 1) % 3, -1)
    )
    scored = score_scenes3d(scenes, wrong, max_steps=n)
    assert scored.shape_accuracy == 0.0 and scored.count_accuracy == 1.0
    assert math.isnan(scored.rotation_error_median_deg)  # no pair of the same shape to compare


def tiny_run(**objects_settings) -> RunConfig:
    return RunConfig(
        data=DataConfig(kind="scenes3d", canvas_size=64, counts=(0, 1, 2, 3), n_train=64, n_test=16),
        model=ModelConfig(
            canvas_size=64, max_steps=3, lstm_size=32, predictor_hidden=32, baseline_lstm_size=16,
            z_pres_prior=1e-3, objects=RenderedConfig(encoder_hidden=32, **objects_settings),
        ),
        train=TrainConfig(steps=2, batch_size=16, eval_every=0, seed=0),
    )  # fmt: skip


@pytest.mark.parametrize("method", ["autograd", "finite-difference"])
def test_air_over_the_renderer_trains_and_its_shape_gets_the_likelihood_ratio_term(method):
    scenes = make_scenes3d(32, "train", seed=0)
    images = torch.from_numpy(scenes.images)
    trainer = Trainer(tiny_run(pose_gradient=method), torch.device("cpu"))
    x = images[:16].float() / 255
    inference, objective = trainer.objective(x, rho=1e-3)
    assert inference.log_q_discrete is not None
    assert bool(inference.log_q_discrete.ne(0).any())
    assert set(inference.objects) >= {"shape", "position", "turn"}
    encoder = trainer.model.objects.encoder[-1].weight
    (gradient,) = torch.autograd.grad(objective.loss, encoder)
    assert bool(gradient[: len(SHAPES)].ne(0).any())  # the shape logits' rows
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(2):
        assert trainer.train_step(images, torch.from_numpy(scenes.counts))
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_render3d_model_round_trips_through_a_checkpoint(tmp_path):
    from airscene.checkpoint import load_model, save_checkpoint

    config = tiny_run()
    model = build_model(config.model)
    path = save_checkpoint(tmp_path / "ckpt", config, model, step=0)
    loaded, checkpoint = load_model(str(path))
    assert isinstance(loaded.objects, RenderedObjects)
    assert checkpoint.config.model.objects.kind == "render3d"
    x = torch.from_numpy(make_scenes3d(4, "test", seed=1).images).float() / 255
    a, b = model(x, sample=False), loaded(x, sample=False)
    assert torch.equal(a.canvas, b.canvas)


def test_the_likelihood_blur_keeps_flat_images_and_shrinks_to_nothing():
    from airscene.model import gaussian_blur
    from airscene.train import likelihood_blur_at

    flat = torch.full((2, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    spot = torch.zeros(1, 31, 31)
    spot[0, 15, 15] = 1.0
    blurred = gaussian_blur(spot, 2.0)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(blurred[0, 15, 15]) < 0.1 and float(blurred[0, 15, 19]) > 0.0
    schedule = TrainConfig(likelihood_blur_start=4.0, likelihood_blur_steps=100)
    assert [likelihood_blur_at(s, schedule) for s in (0, 50, 100, 200)] == [4.0, 2.0, 0.0, 0.0]
    assert likelihood_blur_at(0, TrainConfig()) == 0.0
    # Blurred, an object far from its place still overlaps it: moving it towards its place
    # pays several times more than unblurred, where the two places are almost equally bad.
    model = objects()
    air = build_model(ModelConfig(canvas_size=64, objects=RenderedConfig()))
    target = model.draw(values([0], [[0.4, 0.0]], [0.0]))

    def gain(blur):  # log p(x | z) with the sphere at x = -0.1 over x = -0.4
        near, far = (model.draw(values([0], [[x, 0.0]], [0.0])) for x in (-0.1, -0.4))
        return float(air.log_likelihood(target, near, blur) - air.log_likelihood(target, far, blur))

    assert gain(6.0) > 4 * abs(gain(0.0)), (gain(0.0), gain(6.0))


def test_cli_trains_and_evaluates_a_3d_model(tmp_path, capsys):
    import json

    from airscene.cli import main

    run = tmp_path / "run"
    argv = ["train", "--kind", "scenes3d", "--run-dir", str(run), "--steps", "2", "--batch-size", "8",
            "--n-train", "16", "--n-test", "8", "--lstm-size", "16", "--predictor-hidden", "16",
            "--baseline-lstm-size", "8", "--encoder-hidden", "16", "--eval-every", "2"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"]["kind"] == "scenes3d" and config["model"]["canvas_size"] == 64
    assert config["model"]["objects"]["kind"] == "render3d"
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--n", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenes"] == 8
    assert {"count_accuracy", "shape_accuracy", "position_error_median"} <= set(report)
    figure = tmp_path / "show.png"
    assert main(["show", "--model", str(run), "--n", "4", "--out", str(figure)]) == 0
    from PIL import Image

    assert Image.open(figure).size[0] > 4 * 64
    # infer on rendered PNGs: per image a count and per object the 3D description.
    pngs = tmp_path / "pngs"
    assert main(["data", "make", "--kind", "scenes3d", "--split", "test", "--n", "3",
                 "--format", "png", "--out", str(pngs)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["infer", "--model", str(run), str(pngs / "test"), "--quiet"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and all(len(r["objects"]) == r["count"] for r in records)
    for record in records:
        for found in record["objects"]:
            assert set(found) == {"step", "shape", "position", "rotation_deg", "presence", "box"}
            assert found["shape"] in SHAPES and 0 <= found["rotation_deg"] < 360
    # The renderer's objects on a Multi-MNIST canvas: one line, exit 2.
    assert main(["train", "--objects", "render3d", "--run-dir", str(tmp_path / "y")]) == 2
    assert "canvas_size must be 64" in capsys.readouterr().err
    # A 2D setting does not go with the 3D renderer's objects.
    assert (
        main(["train", "--kind", "scenes3d", "--z-what-dim", "5", "--run-dir", str(tmp_path / "x")])
        == 2
    )


def test_drawn_boxes_hold_each_inferred_object():
    from airscene.evaluate3d import drawn_boxes

    model = build_model(ModelConfig(canvas_size=64, objects=RenderedConfig()))
    scene = values([1, 0], [[0.0, 0.0], [0.5, 0.5]], [0.3, 0.0])
    inference = dataclasses.make_dataclass("Found", ["objects", "z_pres", "canvas"])(
        objects={k: v.view(1, 2, *v.shape[1:]) for k, v in scene.items()},
        z_pres=torch.ones(1, 2),
        canvas=torch.zeros(1, 64, 64),
    )
    boxes = drawn_boxes(model, inference)[0]
    alone = model.objects.draw(scene)
    for t in range(2):
        x0, y0, x1, y1 = (int(v) for v in boxes[t])
        ink = (alone[t] - model.objects.renderer(torch.device("cpu")).floor_shade).abs() > 0.05
        assert 0 < x1 - x0 < 30 and 0 < y1 - y0 < 30
        assert int(ink.sum()) == int(ink[y0:y1, x0:x1].sum())  # every inked pixel inside
    assert boxes[1, 0] > boxes[0, 0] and boxes[1, 1] < boxes[0, 1]  # right, and farther (higher)
