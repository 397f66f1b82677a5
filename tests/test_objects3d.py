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
from airscene.objective import gaussian_blur
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


@pytest.mark.parametrize(
    "method, shape_gradient",
    [("autograd", "enumerate"), ("finite-difference", "likelihood-ratio")],
)
def test_air_over_the_renderer_trains_and_its_shape_gets_a_gradient(method, shape_gradient):
    scenes = make_scenes3d(32, "train", seed=0)
    images = torch.from_numpy(scenes.images)
    run = tiny_run(pose_gradient=method, shape_gradient=shape_gradient)
    trainer = Trainer(run, torch.device("cpu"))
    x = images[:16].float() / 255
    inference, objective = trainer.objective(x, rho=1e-3)
    assert inference.log_q_discrete is not None
    assert bool(inference.log_q_discrete.ne(0).any())
    # Enumerated, the shape is scored at every value; otherwise it gets the REINFORCE term.
    assert (inference.choices is not None) == (shape_gradient == "enumerate")
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
    from airscene.train import likelihood_blur_at

    flat = torch.full((2, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    spot = torch.zeros(1, 31, 31)
    spot[0, 15, 15] = 1.0
    blurred = gaussian_blur(spot, 2.0)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(blurred[0, 15, 15]) < 0.1 and float(blurred[0, 15, 19]) > 0.0
    # The same as the separable convolution with replicated edges, near an edge too.
    images = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0))
    radius = 9
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / 3.0) ** 2)
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(images.unsqueeze(1), (radius,) * 4, mode="replicate")
    expected = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1))
    expected = torch.nn.functional.conv2d(expected, kernel.view(1, 1, -1, 1)).squeeze(1)
    assert torch.allclose(gaussian_blur(images, 3.0), expected, atol=1e-5)
    schedule = TrainConfig(likelihood_blur_start=4.0, likelihood_blur_steps=100)
    assert [likelihood_blur_at(s, schedule) for s in (0, 50, 100, 200)] == [4.0, 2.0, 0.0, 0.0]
    assert likelihood_blur_at(0, TrainConfig()) == 0.0
    # Blurred, an object far from its place still overlaps it: moving it towards its place
    # pays several times more than unblurred, where the two places are almost equally bad.
    model = objects()
    air = build_model(ModelConfig(canvas_size=64, objects=RenderedConfig()))
    target = model.draw(values([0], [[0.4, 0.0]], [0.0]))

    def gain(blur):  # log p(x | z) with the sphere at x = -0.1 over x = -0.4, images blurred
        near, far = (model.draw(values([0], [[x, 0.0]], [0.0])) for x in (-0.1, -0.4))
        seen, near, far = (gaussian_blur(i, blur) if blur else i for i in (target, near, far))
        return float(air.log_likelihood(seen, near) - air.log_likelihood(seen, far))

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
    assert main(["eval", "--model", str(run), "--n", "8", "--json"]) == 0
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
            assert found["shape"] in SHAPES
            # Rotations modulo each shape's symmetry; none for a sphere.
            limit = {"sphere": None, "cube": 90, "cylinder": 180}[found["shape"]]
            if limit is None:
                assert found["rotation_deg"] is None
            else:
                assert 0 <= found["rotation_deg"] < limit
    # The renderer's objects train on the 3D scenes unless told otherwise (their default data);
    # on a Multi-MNIST canvas they are refused in one line, exit 2.
    argv = ["train", "--objects", "render3d", "--run-dir", str(tmp_path / "z"), "--steps", "1",
            "--batch-size", "4", "--n-train", "8", "--n-test", "4", "--lstm-size", "8",
            "--predictor-hidden", "8", "--baseline-lstm-size", "8", "--encoder-hidden", "8",
            "--eval-every", "0"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((tmp_path / "z" / "config.json").read_text())["config"]
    assert config["data"]["kind"] == "scenes3d" and config["model"]["dair"]  # the 3D recipe
    argv = [
        "train",
        "--objects",
        "render3d",
        "--kind",
        "multi-mnist",
        "--run-dir",
        str(tmp_path / "y"),
    ]
    assert main(argv) == 2
    assert "canvas_size must be 64" in capsys.readouterr().err
    # A 2D setting does not go with the 3D renderer's objects.
    assert (
        main(["train", "--kind", "scenes3d", "--z-what-dim", "5", "--run-dir", str(tmp_path / "x")])
        == 2
    )


def test_drawn_boxes_hold_each_inferred_object():
    model = build_model(ModelConfig(canvas_size=64, objects=RenderedConfig()))
    scene = values([1, 0], [[0.0, 0.0], [0.5, 0.5]], [0.3, 0.0])
    objects = {k: v.view(1, 2, *v.shape[1:]) for k, v in scene.items()}
    boxes = model.objects.drawn_boxes(objects)[0]
    alone = model.objects.draw(scene)
    for t in range(2):
        x0, y0, x1, y1 = (int(v) for v in boxes[t])
        ink = (alone[t] - model.objects.renderer(torch.device("cpu")).floor_shade).abs() > 0.05
        assert 0 < x1 - x0 < 30 and 0 < y1 - y0 < 30
        assert int(ink.sum()) == int(ink[y0:y1, x0:x1].sum())  # every inked pixel inside
    assert boxes[1, 0] > boxes[0, 0] and boxes[1, 1] < boxes[0, 1]  # right, and farther (higher)


def test_shape_choices_score_each_shape_as_the_whole_re_rendered_scene_would():
    torch.manual_seed(0)
    run = tiny_run()
    model = build_model(run.model)
    with torch.no_grad():
        model.predictor.net[-1].bias[0] = 6.0  # every step finds an object
    x = torch.from_numpy(make_scenes3d(4, "test", seed=2).images).float() / 255
    inference = model(x, sample=False)
    inference.choices = model.enumerate_choices(x, inference)
    assert inference.count.eq(3).all()
    choices = inference.choices
    values = inference.objects
    renderer = Renderer()
    shape, position = values["shape"].long(), values["position"]
    rotation = model.objects.rotation(values)
    for b in range(2):
        for step in range(3):
            full = []
            for s in range(len(SHAPES)):
                shapes, rotations = shape[b].clone(), rotation[b].clone()
                shapes[step] = s
                rotations[step] = values["turn_locs"][b, step, s] / model.objects.order[s]
                image = renderer.render(shapes[None], position[b][None], rotations[None])
                full.append(model.log_likelihood(x[b : b + 1], image)[0])
            full = torch.stack(full)
            window = choices.log_joint[b, step]
            # The window leaves out pixels every shape leaves alike: one constant per object.
            assert torch.allclose(window - window[0], full - full[0], atol=0.05)
            assert torch.equal(choices.logits[b, step], values["shape_logits"][b, step])
    # The drawn shape's choice is the inferred scene itself.
    drawn = choices.log_joint.gather(2, shape.unsqueeze(2)).squeeze(2)
    assert drawn.ne(0).all()


def test_the_local_expectation_has_the_gradient_of_the_exact_expectation():
    logits = torch.randn(2, 3, 3, requires_grad=True)
    log_joint = torch.randn(2, 3, 3) * 20
    z_pres = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    from airscene.model import EnumeratedChoices
    from airscene.objective import local_expectation

    surrogate = local_expectation(EnumeratedChoices(logits, log_joint), z_pres).sum()
    (gradient,) = torch.autograd.grad(surrogate, logits)
    log_q = torch.log_softmax(logits, -1)
    exact = (z_pres * (log_q.exp() * (log_joint - log_q)).sum(-1)).sum()
    (expected,) = torch.autograd.grad(exact, logits)
    assert torch.allclose(gradient, expected, atol=1e-5)
    assert gradient[0, 2].eq(0).all() and gradient[1, 1:].eq(0).all()  # absent objects
    # Ascending it moves q towards the values' posterior, softmax(log_joint).
    target = torch.softmax(log_joint[0, 0], -1)
    step = torch.softmax(logits[0, 0] + 1e-3 * gradient[0, 0], -1)
    before = torch.softmax(logits[0, 0], -1)
    kl = lambda q: (q * (q.log() - target.log())).sum()  # noqa: E731
    assert kl(step) < kl(before)


def test_objects_that_sit_on_each_other_lose_prior_mass_and_apart_ones_do_not():
    model = objects(apart_prior_strength=100.0)
    d_min = model.space.min_centre_distance
    position = torch.tensor(
        [
            [[0.0, 0.0], [0.0, 0.0], [d_min, 0.0]],  # 2 on 1; 3 just apart from both
            [[0.0, 0.0], [0.5 * d_min, 0.0], [0.0, 0.0]],  # 2 half in; 3 on 1 but absent
        ]
    )
    z_pres = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    prior = model.scene_log_prior({"position": position}, z_pres)
    expected = torch.tensor([[0.0, -100.0, -100.0 * (1 - 1 / 1) ** 2], [0.0, -25.0, 0.0]])
    assert torch.allclose(prior, expected, atol=1e-4)
    assert objects(apart_prior_strength=0.0).scene_log_prior({"position": position}, z_pres) is None
    position.requires_grad_(True)
    model.scene_log_prior({"position": position}, z_pres).sum().backward()
    assert torch.isfinite(position.grad).all()
    assert position.grad[1, 1, 0] > 0  # the later object is pushed away from the first
