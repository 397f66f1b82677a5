"""Scenes that are not black (issue 31): SuPAIR's noisy and grid-line Multi-MNIST, and the
learned background of p(x | z) that the objects are drawn over."""

import dataclasses

import numpy as np
import pytest
import torch

from airscene.background import over
from airscene.cli import main
from airscene.config import ModelConfig
from airscene.data.scenes import (
    CLUTTERED_MNIST,
    GRID_MNIST,
    MULTI_MNIST,
    NOISY_MNIST,
    generate_scenes,
    scene_rng,
)
from airscene.model import build_model


def scenes_of(family, n=200):
    config = dataclasses.replace(family.preset().data, counts=(0, 1, 2))
    return generate_scenes(config, "test", n, scene_rng(config, "test"))


def test_clutter_is_drawn_after_the_digits_so_a_seed_keeps_its_digits():
    clean, noisy, grid = scenes_of(MULTI_MNIST), scenes_of(NOISY_MNIST), scenes_of(GRID_MNIST)
    for cluttered in (noisy, grid):
        assert (cluttered.counts == clean.counts).all() and (cluttered.boxes == clean.boxes).all()
        assert (cluttered.digit_index == clean.digit_index).all()
        assert not (cluttered.images == clean.images).all()


def test_noise_is_supairs_affine_map_plus_gaussian_noise_clipped():
    clean, noisy = scenes_of(MULTI_MNIST), scenes_of(NOISY_MNIST)
    x = noisy.images.astype(np.float64) / 255
    black = clean.images == 0
    # On black: clip(0.1 + N(0, 0.2), 0, 1), whose mean is 0.1 Phi(0.5) + 0.2 phi(0.5) = 0.139,
    # and a share Phi(-0.5) = 0.31 of pixels clipped to 0.
    assert x[black].mean() == pytest.approx(0.139, abs=0.005)
    assert (x[black] == 0).mean() == pytest.approx(0.309, abs=0.01)
    # Ink: clip(0.8 * ink + 0.1 + N(0, 0.2), 0, 1), against a simulation of that.
    ink = clean.images > 0
    mapped = 0.8 * clean.images[ink] / 255 + 0.1
    simulated = np.clip(mapped + np.random.default_rng(0).normal(0, 0.2, mapped.shape), 0, 1)
    assert x[ink].mean() == pytest.approx(simulated.mean(), abs=0.005)
    assert (x[ink] - mapped).std() == pytest.approx((simulated - mapped).std(), abs=0.01)


def test_grid_lines_lie_every_five_pixels_under_the_ink():
    clean, grid = scenes_of(MULTI_MNIST), scenes_of(GRID_MNIST)
    line = round(0.4 * 255)
    phases = set()
    for image, ink in zip(grid.images, clean.images, strict=True):
        rows = np.nonzero((image >= line).all(1))[0]  # a horizontal line crosses every column
        cols = np.nonzero((image >= line).all(0))[0]
        assert len(rows) == len(range(rows[0], 50, 5)) and (np.diff(rows) == 5).all()
        assert (np.diff(cols) == 5).all() and rows[0] < 5 and cols[0] < 5
        phases.add((rows[0], cols[0]))
        on_line = np.zeros_like(image, dtype=bool)
        on_line[rows] = on_line[:, cols] = True
        assert (image[~on_line] == ink[~on_line]).all()  # off the lines: the clean scene
        assert (image[on_line] == np.maximum(ink[on_line], line)).all()  # on them: the brighter
    assert len(phases) > 15  # a random phase per image


def test_mixed_clutter_gives_each_scene_one_of_the_three():
    clean, mixed = scenes_of(MULTI_MNIST, 300), scenes_of(CLUTTERED_MNIST, 300)
    assert (mixed.boxes == clean.boxes).all()
    same = (mixed.images == clean.images).all((1, 2))
    lines = ((mixed.images >= round(0.4 * 255)).all(2).sum(1) >= 9) & ~same
    noisy = ~same & ~lines
    assert all(0.25 < share.mean() < 0.42 for share in (same, lines, noisy))
    black = clean.images == 0
    assert all((mixed.images[i][black[i]] > 0).mean() > 0.5 for i in np.nonzero(noisy)[0])


@pytest.mark.parametrize("kind", ["noisy-mnist", "grid-mnist", "cluttered-mnist"])
def test_data_make_writes_the_cluttered_kinds(tmp_path, kind):
    out = tmp_path / kind
    argv = ["data", "make", "--kind", kind, "--split", "test", "--n", "6", "--format", "png"]
    assert main([*argv, "--out", str(out)]) == 0
    assert len(list((out / "test").glob("*.png"))) == 6
    with pytest.raises(SystemExit) as refused:  # argparse's own one-line refusal
        main(["data", "make", "--kind", kind, "--clutter", "fog", "--n-test", "6"])
    assert refused.value.code == 2


@pytest.mark.parametrize("family", [NOISY_MNIST, GRID_MNIST, CLUTTERED_MNIST])
def test_the_cluttered_kinds_train_dair_over_a_learned_background(family):
    run = family.preset()
    assert run.data.kind == family.kind and run.data.clutter == family.clutter
    assert run.model.background == "learned" and run.model.dair
    assert MULTI_MNIST.preset().model.background == "none"


def test_a_learned_background_enters_the_elbo_and_the_default_model_has_none():
    plain = build_model(ModelConfig())
    assert plain.background is None
    assert not any(name.startswith("background") for name, _ in plain.named_parameters())
    model = build_model(ModelConfig(background="learned"))
    x = torch.rand(3, 50, 50, generator=torch.Generator().manual_seed(0))
    inference = model(x, generator=torch.Generator().manual_seed(1))
    weight = inference.background_log_weight
    assert weight.shape == (3,)
    objects = inference.log_likelihood + inference.step_log_weight.sum(1)
    assert torch.allclose(inference.elbo, objects + weight)
    # At q's mean the answer is deterministic; the objects are drawn over the background.
    first, second = model(x, sample=False), model(x, sample=False)
    assert torch.equal(first.canvas, second.canvas)
    background = model.background(x, sample=False).image
    assert torch.allclose(first.canvas, model.objects.composite(first.scene, background))
    assert model.sample(2, counts=(1,)).images.shape == (2, 50, 50)


def test_the_background_is_a_mix_of_fixed_basis_images():
    """What keeps it from drawing the objects: in logit space its image is affine in z_bg, so
    it cannot move a blob to where an object lies (a non-linear decoder learned to)."""
    model = build_model(ModelConfig(canvas_size=20, background="learned", background_dim=3))
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    logit = torch.logit(model.background.decode(torch.cat([z, z.mean(0, keepdim=True)])).double())
    assert torch.allclose(logit[2], logit[:2].mean(0), atol=1e-4)


def test_over_lets_ink_cover_the_background():
    objects = torch.tensor([[0.0, 0.5, 1.0, 1.7]])
    background = torch.full((1, 4), 0.4)
    # Ink covers the background (never adds to it), but two objects' ink overpainting one pixel
    # is not clipped: a ghost under a redrawn digit must cost likelihood.
    assert torch.allclose(
        over(objects, objects.clamp(0, 1), background), torch.tensor([[0.4, 0.7, 1.0, 1.7]])
    )


def test_the_background_learns_what_every_image_shares():
    """A level it must learn from images alone: the background's ELBO on flat grey images of
    random level moves its mean image to each image's level."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(canvas_size=20, background="learned"))
    levels = torch.rand(32, 1, 1) * 0.6 + 0.2
    x = levels.expand(32, 20, 20) + 0.05 * torch.randn(32, 20, 20)
    optimiser = torch.optim.Adam(model.background.parameters(), lr=1e-2)
    for step in range(300):
        draw = model.background(x, generator=torch.Generator().manual_seed(step))
        elbo = model.log_likelihood(x, draw.image) + draw.log_weight
        optimiser.zero_grad()
        (-elbo.mean()).backward()
        optimiser.step()
    image = model.background(x, sample=False).image
    assert (image.mean((1, 2)) - levels.view(-1)).abs().max() < 0.05


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--inference", "grid"], "needs masked objects"),
        (["--kind", "scenes3d"], "render their own scene"),
    ],
)
def test_a_background_where_it_is_not_built_is_refused(tmp_path, capsys, flags, words):
    run = tmp_path / "run"
    argv = ["train", "--background", "learned", "--run-dir", str(run), "--steps", "1", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not run.exists()
