"""Spatially parallel (grid) inference: the same generative model, every cell at once."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from airscene import grid
from airscene.cli import main
from airscene.config import ConfigError, GlimpseConfig, ModelConfig, RenderedConfig, scenes3d_run
from airscene.data.scattered import SCATTERED_DIGITS
from airscene.grid import GridAIR
from airscene.model import build_model
from airscene.objective import cellwise_objective
from airscene.pipeline import Pipeline
from airscene.spatial import read_glimpse


def grid_model(seed: int = 0, **fields) -> GridAIR:
    run = GridAIR.recipe(SCATTERED_DIGITS.preset())
    objects = dataclasses.replace(run.model.objects, encoder_hidden=16, decoder_hidden=16)
    model = dataclasses.replace(run.model, objects=objects, grid_channels=8, **fields)
    torch.manual_seed(seed)
    return build_model(model)


def test_the_grid_grows_with_the_image_and_every_cell_is_an_entry():
    model = grid_model(grid_refine_passes=0).eval()  # q's mode as it is
    for side, cells in ((48, 8 * 8), (84, 14 * 14), (50, 9 * 9)):
        inference = model(torch.rand(2, side, side), sample=False)
        assert inference.z_pres.shape == (2, cells)
        assert inference.canvas.shape == (2, side, side)
        assert inference.objects["z_where"].shape == (2, cells, 3)
        assert torch.equal(inference.z_pres, (inference.z_pres_prob > 0.5).float())


def aspect_model(seed: int = 0, v: float = -1.5, **fields) -> GridAIR:
    """A grid model with rectangular windows, most of them narrower than tall (q(v)'s mean
    ``v``: -1.5, a width about half the height; -3.5, about a fifth, some below the 2.5 px
    floor of the write transform)."""
    model = grid_model(seed, grid_aspect_spread=0.5, **fields)
    with torch.no_grad():
        model.network.head.bias[4] = v
    return model


@pytest.mark.parametrize(
    "side, v", [(48, None), (50, None), (96, None), (48, -1.5), (50, -1.5), (96, -3.5)]
)
def test_painted_patches_are_the_object_model_drawing_each_window(side, v):
    """The canvas painted patch by patch equals the object model drawing every present object
    at its reported z_where on the whole image: the patches, their offsets and z_where agree
    (square windows, and rectangular ones, however narrow)."""
    model = (grid_model() if v is None else aspect_model(v=v)).eval()
    x = torch.rand(3, side, side)
    inference = model(x, generator=torch.Generator().manual_seed(1))
    image, cell = inference.z_pres.nonzero(as_tuple=True)
    assert len(image) > 0
    objects = model.objects.at_canvas(side)
    drawn = objects.draw({k: v[image, cell] for k, v in inference.objects.items()})
    whole = torch.zeros_like(x).index_add(0, image, drawn)
    torch.testing.assert_close(inference.canvas, whole, atol=1e-4, rtol=0)


def test_the_cellwise_surrogate_is_the_expected_elbo_over_each_cell():
    """With one cell, the surrogate is E over z_pres of the ELBO (up to the constant log p(x |
    nothing else)) and so is its gradient: the exact expectation, not a sample's estimate. The
    window is pushed to the canvas's corner, so that part of its ink falls beyond the image:
    the patches and the ELBO score it alike (as ink on black)."""
    model = grid_model(cell_size=48).train()  # one cell covers the canvas
    with torch.no_grad():
        model.network.head.bias[2:4] = 3.0  # the window's centre near the bottom-right corner
        model.objects.decoder.net[-1].bias.fill_(1.0)  # bright ink, some beyond the edge
    x = torch.rand(1, 48, 48)
    inference, objective = cellwise_objective(
        model, x, torch.Generator().manual_seed(3), z_pres_prior=0.3
    )
    assert inference.z_pres.shape == (1, 1)
    assert inference.objects["z_where"][0, 0, 1:].min() > 0.6  # reaching past the edge
    cells = model.propose(x, torch.Generator().manual_seed(3))  # the same draw of the object
    on = model.inference_of(x, cells, torch.ones(1, 1), 0.3).elbo
    off = model.inference_of(x, cells, torch.zeros(1, 1), 0.3).elbo
    prob = torch.sigmoid(cells.logits)[:, 0]
    expected = prob * on + (1 - prob) * off
    nothing = model.inference_of(x, cells, torch.zeros(1, 1), 0.3).log_likelihood
    torch.testing.assert_close(
        -objective.loss, (expected - nothing).squeeze(), atol=1e-3, rtol=1e-6
    )
    for parameter in (model.network.head.bias, model.objects.decoder.net[-1].bias):
        surrogate = torch.autograd.grad(objective.loss, parameter, retain_graph=True)[0]
        exact = torch.autograd.grad(-expected.sum(), parameter, retain_graph=True)[0]
        torch.testing.assert_close(surrogate, exact, atol=1e-4, rtol=1e-4)


def test_grid_needs_glimpse_objects():
    with pytest.raises(ConfigError, match="glimpse"):
        ModelConfig(canvas_size=64, inference="grid", objects=RenderedConfig())
    with pytest.raises(ConfigError, match="glimpse"):
        GridAIR.recipe(scenes3d_run())


def test_train_refuses_grid_for_the_renderer_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--kind", "scenes3d", "--inference", "grid", "--run-dir", str(run)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid" in err[0] and "glimpse" in err[0]
    assert not run.exists()


def test_grid_trains_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--kind", "scattered-digits", "--inference", "grid", "--run-dir", str(run),
            "--steps", "3", "--batch-size", "4", "--n-train", "16", "--n-test", "8",
            "--eval-every", "3", "--eval-scenes", "8", "--encoder-hidden", "8",
            "--decoder-hidden", "8", "--grid-channels", "8"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model"]["inference"] == "grid" and config["model"]["cell_size"] == 6
    assert config["train"]["kl_warmup_steps"] == 1000
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    assert main(["eval", "--model", str(run), "--n", "8", "--quiet"]) == 0


def test_a_bernoulli_model_warms_up_under_the_normal_likelihood(tmp_path):
    """--normal-likelihood-steps N: a Bernoulli model's first N steps are a normal model's
    steps exactly (the same losses), the ones after them its own; the run stays Bernoulli.
    The grid's recipe is such a model (15,000 of 18,000 steps of warm-up): --steps keeps the
    warm-up at that fraction of the run, and --likelihood normal over it trains as the normal."""
    tiny = ["--kind", "scattered-digits", "--inference", "grid", "--steps", "3",
            "--batch-size", "4", "--n-train", "16", "--n-test", "8", "--eval-every", "0",
            "--log-every", "1", "--encoder-hidden", "8", "--decoder-hidden", "8",
            "--grid-channels", "8"]  # fmt: skip

    def losses(name: str, *flags: str) -> list[float]:
        run = tmp_path / name
        assert main(["train", "--run-dir", str(run), *tiny, *flags]) == 0
        rows = (run / "metrics.csv").read_text().splitlines()
        column = rows[0].split(",").index("loss")
        return [float(row.split(",")[column]) for row in rows[1:]]

    normal = losses("normal", "--likelihood", "normal", "--normal-likelihood-steps", "0")
    bernoulli = losses("bernoulli", "--normal-likelihood-steps", "0")
    warmed = losses("warmed", "--normal-likelihood-steps", "2")
    recipe = losses("recipe")  # 3 steps: the warm-up round(15,000 * 3 / 18,000) = 2
    normal_over_recipe = losses("normal-over-recipe", "--likelihood", "normal")
    assert len(warmed) == 3
    assert warmed[:2] == normal[:2] and warmed[0] != bernoulli[0]
    assert warmed[2] != normal[2]  # step 3 is scored under the Bernoulli
    assert recipe == warmed and normal_over_recipe == normal
    # Between steps (evaluations, the search) the model scores under its own, the Bernoulli.
    from airscene.checkpoint import read_checkpoint
    from airscene.train import Trainer, likelihood_at

    run = read_checkpoint(tmp_path / "warmed").config
    assert [likelihood_at(step, run) for step in (1, 2, 3)] == ["normal", "normal", "bernoulli"]
    trainer = Trainer(run, torch.device("cpu"))
    images = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8)
    assert trainer.train_step(images, None) and trainer.step == 1
    assert trainer.model.config.likelihood == "bernoulli"
    config = json.loads((tmp_path / "warmed" / "config.json").read_text())["config"]
    assert config["model"]["likelihood"] == "bernoulli"
    assert config["train"]["normal_likelihood_steps"] == 2
    config = json.loads((tmp_path / "recipe" / "config.json").read_text())["config"]
    assert config["model"]["likelihood"] == "bernoulli"
    assert (config["train"]["normal_likelihood_steps"], config["train"]["steps"]) == (2, 3)


def test_infer_reads_a_large_image_whole_and_maps_boxes_to_its_pixels(tmp_path):
    """A grid model reads a 120x96 image at its own pixels (no shrinking): every box lies in
    the image, and the canvas the model explained is the image's own size."""
    model = grid_model()
    with torch.no_grad():  # every cell on, so objects are found everywhere
        model.network.head.bias[0] = 10.0
    image = np.zeros((96, 120), dtype=np.uint8)
    image[70:80, 100:110] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(image).save(path)
    pipeline = Pipeline(model)
    assert pipeline.reading_side(image) == 120
    (result,) = pipeline.infer([path], invert=False)
    assert result.error is None and result.width == 120 and result.height == 96
    assert result.count == (120 // 6) ** 2
    boxes = np.array([obj.box for obj in result.objects])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 120).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 96).all()
    # An object near the bright square lies where it is, not scaled into a 48 px canvas.
    windows = np.array([obj.window for obj in result.objects])
    centres = (windows[:, :2] + windows[:, 2:]) / 2
    assert centres[:, 0].max() > 100 and centres[:, 1].max() > 80


def test_sequential_models_still_shrink_large_images():
    model = build_model(ModelConfig(canvas_size=48, objects=GlimpseConfig()))
    assert Pipeline(model).reading_side(np.zeros((96, 120))) == 48


@pytest.mark.parametrize("aspect", [False, True])
def test_refining_the_mode_never_lowers_the_scene_score(aspect):
    """Each pass keeps a set of switches only where the scene's ELBO (objects at q's mode) rises:
    the score never falls and far-apart cells switch on in one pass. The objects draw bright
    squares and the images hold four far apart, none found yet."""
    model = (aspect_model(seed=2) if aspect else grid_model(seed=2)).eval()
    x = torch.zeros(4, 48, 48)
    for top, left in ((4, 4), (4, 30), (30, 4), (30, 30)):
        x[:, top : top + 10, left : left + 10] = 1.0
    with torch.no_grad():
        torch.nn.init.constant_(model.objects.decoder.net[-1].bias, 4.0)
        cells = model.propose(x, sample=False)
        z_pres = torch.zeros_like(cells.logits)  # nothing found yet
        scores = [model.scene_score(x, cells, z_pres)]
        counts = [z_pres.sum(1)]
        for _ in range(3):
            cells, z_pres = model.refine(x, cells, z_pres, None, passes=1)
            scores.append(model.scene_score(x, cells, z_pres))
            counts.append(z_pres.sum(1))
        # The reported inference scores what refine scored.
        inference = model.inference_of(x, cells, z_pres)
        elbo = inference.elbo + inference.log_q_z_pres.sum(1)
        torch.testing.assert_close(elbo, scores[-1], rtol=1e-5, atol=1e-3)
    for before, after in zip(scores, scores[1:], strict=False):
        assert (after >= before - 1e-3).all()
    assert (scores[-1] > scores[0] + 100.0).all()
    assert (counts[1] > 1).all()  # several cells far apart in the first pass
    assert (counts[-1] >= 4).all()


def test_a_try_is_scored_as_the_scene_it_makes(monkeypatch):
    """Each try of the search is scored on a copy of the canvas with its changes placed on it
    (its cell, its neighbours read again twice); the scene the search then makes scores what
    its try scored. One square, so one try is made: the one that gains most."""
    model = grid_model(seed=2).eval()
    x = torch.zeros(1, 48, 48)
    x[:, 17:27, 19:29] = 1.0
    calls = []
    score_painted = model.score_painted

    def recorded(*args, **kwargs):
        calls.append(score_painted(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(model, "score_painted", recorded)
    with torch.no_grad():
        torch.nn.init.constant_(model.objects.decoder.net[-1].bias, 4.0)
        cells = model.propose(x, sample=False)
        z_pres = torch.zeros_like(cells.logits)
        cells, z_pres = model.refine(x, cells, z_pres, None, passes=1)
        made = model.scene_score(x, cells, z_pres)
    tried = calls[1]  # the pass scores the scene, then every try
    assert len(tried) == 8 and z_pres.sum() == 1
    torch.testing.assert_close(made, tried.max().reshape(1), rtol=0, atol=1e-3)


def test_refining_switches_off_a_digit_claimed_twice_but_not_a_lone_object(monkeypatch):
    """Cells 9 and 10 both draw the square centred between them (their windows moved to the
    same centre, also when read again); cell 50 draws a square on black, which costs the scene
    far more than it explains. Only an object whose centre lies in another's window may go: one
    of the two claims is switched off, and cell 50 stays. Under the normal likelihood: ink
    drawn twice costs the scene there, while the Bernoulli's canvas clamps it at 1, so that
    a double claim costs only its object's prior, less than this untrained encoder loses in
    reading a window again."""
    model = grid_model(seed=2, likelihood="normal").eval()
    x = torch.zeros(1, 48, 48)
    x[:, 4:14, 7:17] = 1.0  # centred at (12, 9): between the centres of cells 9 and 10
    window = model.window

    def meeting(u, per_row, cell=None):
        side, offset, centre = window(u, per_row, cell)
        offset, centre = offset.clone(), centre.clone()
        cells = torch.arange(u.shape[-2]) if cell is None else cell
        for moved, shift in ((9, 3.0), (10, -3.0)):
            at = cells == moved  # every window of the cell, proposed or read again
            offset[..., at, :] = torch.tensor([shift, 0.0])
            centre[..., at, :] = torch.tensor([12.0, 9.0])
        return side, offset, centre

    monkeypatch.setattr(model, "window", meeting)
    with torch.no_grad():
        torch.nn.init.constant_(model.objects.decoder.net[-1].bias, 4.0)
        cells = model.propose(x, sample=False)
        z_pres = torch.zeros_like(cells.logits)
        z_pres[:, [9, 10, 50]] = 1.0
        before = model.scene_score(x, cells, z_pres)
        cells, refined = model.refine(x, cells, z_pres, None, passes=2)
        after = model.scene_score(x, cells, refined)
    assert refined[0, 9] + refined[0, 10] == 1
    assert refined[0, 50] == 1
    assert after > before


def test_rectangular_windows_are_narrowed_never_widened():
    """With ``grid_aspect_spread`` a, a window's width is its height times exp(-a softplus(-v)):
    square for large v, narrower as v falls, never wider (so it fits the patch a square fits).
    z_where carries the height fourth; boxes, sampled scenes and the search use both."""
    model = aspect_model().eval()
    u = torch.tensor([[[0.0, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, -3.0], [1.0, 0.5, -0.5, 0.0]]])
    size, offset, centre = model.window(u, 8)
    height = model.side * torch.exp(model.log_side_sd * u[0, :, 0])
    torch.testing.assert_close(size[0, :, 1], height)
    ratio = size[0, :, 0] / size[0, :, 1]
    expected = torch.exp(-0.5 * torch.nn.functional.softplus(-u[0, :, 3]))
    torch.testing.assert_close(ratio, expected)
    assert ratio[0] > 0.999 and ratio[1] < 0.25
    z_where = model.window_z_where(size, centre, 48)
    assert z_where.shape == (1, 3, 4)
    box = model.objects.windows({"z_where": z_where})  # x0, y0, x1, y1 in pixels
    torch.testing.assert_close(box[..., 2] - box[..., 0], size[..., 0])
    torch.testing.assert_close(box[..., 3] - box[..., 1], size[..., 1])
    # The same cell's square model: identical heights and centres.
    square = grid_model().eval()
    square_size, _, square_centre = square.window(u[..., :3], 8)
    torch.testing.assert_close(square_size[..., 1], size[..., 1])
    torch.testing.assert_close(square_centre, centre)
    inference = model(torch.rand(2, 48, 48), sample=False)
    assert inference.objects["z_where"].shape == (2, 64, 4)
    assert inference.objects["cell_where"].shape == (2, 64, 4)
    boxes = model.objects.windows(inference.objects)
    assert ((boxes[..., 2] - boxes[..., 0]) <= (boxes[..., 3] - boxes[..., 1]) + 1e-5).all()
    sampled = model.sample(3, torch.Generator().manual_seed(0), counts=(2,))
    assert sampled.objects["z_where"].shape == (3, 64, 4)
    assert (sampled.z_pres.sum(1) == 2).all() and sampled.images.shape == (3, 48, 48)
    # Moved inside the canvas, each axis by its own half-size.
    inside = model.sample(20, torch.Generator().manual_seed(1), counts=(3,), within_canvas=True)
    present = inside.z_pres > 0
    boxes = model.objects.windows(inside.objects)[present]
    assert boxes.min() >= -1e-4 and boxes.max() <= 48 + 1e-4
    assert (boxes[:, 2] - boxes[:, 0] < boxes[:, 3] - boxes[:, 1] - 0.5).any()
    # A window moved by the search keeps its width's latent.
    moved = model.shifted(u, 1.0, 0.0)
    assert torch.equal(moved[..., 3], u[..., 3]) and torch.equal(moved[..., 0], u[..., 0])


def test_covered_cells_are_those_centred_in_another_present_window():
    """The neighbourhood search of ``covered`` finds what comparing every pair of cells finds."""
    model = grid_model(seed=1)
    generator = torch.Generator().manual_seed(0)
    batch, rows = 3, 8
    index = torch.arange(rows * rows)
    centre = torch.stack([index % rows * 6 + 3.0, index // rows * 6 + 3.0], -1).repeat(batch, 1, 1)
    centre = centre + (torch.rand(batch, rows * rows, 2, generator=generator) - 0.5) * 6
    size = 4 + torch.rand(batch, rows * rows, 2, generator=generator) * 10  # width, height
    present = torch.rand(batch, rows * rows, generator=generator) < 0.4
    apart = (centre.unsqueeze(2) - centre.unsqueeze(1)).abs()  # cell i to cell j
    inside = (apart < size.unsqueeze(1) / 2).all(-1)
    inside &= ~torch.eye(rows * rows, dtype=torch.bool)
    expected = (inside & present.unsqueeze(1)).any(2)
    assert expected.sum() > 20
    assert torch.equal(model.covered(present, centre, size, rows), expected)


def test_refine_reads_a_neighbour_again_from_what_the_others_leave():
    """explain_away in a cell's patch reads the glimpse that the whole canvas gives: the image
    less every other present object's drawing, at the cell's window."""
    model = grid_model(seed=3).eval()
    x = torch.rand(2, 48, 48) ** 4
    with torch.no_grad():
        cells = model.propose(x, sample=False)
        z_pres = torch.zeros_like(cells.logits)
        z_pres[:, [9, 10, 17, 50]] = 1.0  # 9, 10 and 17 are neighbours
        which = torch.zeros_like(z_pres, dtype=torch.bool)
        which[:, 10] = True
        read = model.explain_away(model.ring_image(x, cells.padded), cells, z_pres, which)
        others = z_pres.clone()
        others[:, 10] = 0
        unexplained = x - model.paint(cells.patches, others, cells.padded)
        glimpse = read_glimpse(unexplained, read.z_where[:, 10], 14)  # at the window it chose
        loc, _ = model.objects.encoder(glimpse.flatten(1))
        drawn = model.paint(read.patches, z_pres * ~untouched_cells(10), read.padded)
        alone = model.objects.draw({"z_where": read.z_where[:, 10], "z_what": loc})
    torch.testing.assert_close(read.z_what[:, 10], loc, atol=1e-5, rtol=0)
    torch.testing.assert_close(drawn, alone, atol=1e-5, rtol=0)  # its drawing, at that window
    untouched = untouched_cells(10)
    for name in grid._READ_FIELDS:
        assert torch.equal(getattr(read, name)[:, untouched], getattr(cells, name)[:, untouched])
    assert not torch.allclose(read.z_what[:, 10], cells.z_what[:, 10])


def untouched_cells(*cells: int) -> torch.Tensor:
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[list(cells)] = False
    return untouched


@pytest.mark.parametrize("side", [48, 50])
def test_reading_again_moves_a_window_onto_what_its_object_draws(side):
    """An object whose window lies off the ink it draws moves onto it, a pixel at a time, as
    it is read again (in ``refine``, the window of a digit's neighbour that also drew the digit
    moves back onto the neighbour once the digit's own cell draws it). At 50 px the cells tile
    a padded canvas of 54."""
    model = grid_model(seed=4).eval()
    with torch.no_grad():
        decoder = model.objects.decoder.net[-1]  # every glimpse a flat square of ink
        torch.nn.init.zeros_(decoder.weight)
        torch.nn.init.constant_(decoder.bias, 4.0)
        target = torch.tensor([23.0, 20.0])  # two pixels right, one up
        square = {
            "z_where": torch.cat([torch.tensor([model.side / side]), target / side * 2 - 1])[None],
            "z_what": torch.zeros(1, model.objects.z_what_dim),
        }
        x = model.objects.at_canvas(side).draw(square).clamp(0, 1)
        cells = model.propose(x, sample=False)
        per_row = cells.padded // 6
        cell = 3 * per_row + 3
        cells.u[:, cell] = 0.0  # its window at the cell's centre, its side the prior's
        z_pres = torch.zeros_like(cells.logits)
        z_pres[:, cell] = 1.0
        ring = model.ring_image(x, cells.padded)
        moved = [model.explain_away(ring, cells, z_pres, z_pres > 0, rounds) for rounds in (1, 3)]
        centres = [model.window(m.u, per_row)[2][0, cell] for m in moved]
        drawn = model.objects.at_canvas(cells.padded).draw(
            {"z_where": moved[1].z_where[:, cell], "z_what": moved[1].z_what[:, cell]}
        )
    step = centres[0] - torch.tensor([21.0, 21.0])  # one round: one pixel, towards the ink
    torch.testing.assert_close(step.abs().sum(), torch.tensor(1.0))
    assert (centres[0] - target).abs().sum() < 3.0 - 0.5
    torch.testing.assert_close(centres[1], target)
    torch.testing.assert_close(moved[1].z_where[0, cell, 1:], target / cells.padded * 2 - 1)
    # Its drawing is the object drawn at the window it moved to.
    painted = model.paint(moved[1].patches, z_pres, cells.padded)
    torch.testing.assert_close(painted, drawn, atol=1e-5, rtol=0)
    untouched = torch.ones(per_row * per_row, dtype=torch.bool)
    untouched[cell] = False
    assert torch.equal(moved[1].u[:, untouched], cells.u[:, untouched])


def test_refining_many_images_a_few_at_a_time_changes_nothing(monkeypatch):
    model = grid_model(seed=2).eval()
    x = torch.zeros(5, 48, 48)
    for image in range(5):  # bright squares the objects can draw, a different set per image
        for k, (top, left) in enumerate(((4, 4), (4, 30), (30, 4), (30, 30))):
            if (image + k) % 3:
                x[image, top : top + 10, left : left + 10] = 1.0
    with torch.no_grad():
        torch.nn.init.constant_(model.objects.decoder.net[-1].bias, 4.0)
        cells = model.propose(x, sample=False)
        z_pres = (torch.sigmoid(cells.logits) > 0.5).float()
        whole, z_whole = model.refine(x, cells, z_pres, None, passes=2)
        monkeypatch.setattr(grid, "_REFINE_VALUES", 1)  # one image at a time
        apart, z_apart = model.refine(x, cells, z_pres, None, passes=2)
    assert not torch.equal(z_whole, z_pres)  # the search did change something
    assert torch.equal(z_whole, z_apart)
    torch.testing.assert_close(whole.patches, apart.patches)
    torch.testing.assert_close(whole.z_what, apart.z_what)


def test_capped_composite_caps_the_canvas_at_white():
    model = grid_model(seed=1)
    objects = dataclasses.replace(model.config.objects, composite="capped")
    capped = build_model(dataclasses.replace(model.config, objects=objects))
    canvas = torch.tensor([[0.5, 1.5], [2.0, 0.0]])
    assert torch.equal(capped.objects.canvas_image(canvas), canvas.clamp(max=1))
    assert torch.equal(model.objects.canvas_image(canvas), canvas)


def test_sampled_scenes_hold_their_count_on_a_canvas_cells_do_not_tile():
    """On 50 px the last row and column of 6 px cells are centred beyond the image: a scene
    drawn with a count never puts an object there."""
    model = grid_model(canvas_size=50)
    assert model.most_objects == 8 * 8
    drawn = model.sample(40, generator=torch.Generator().manual_seed(0), counts=(64,))
    assert (drawn.count == 64).all()
    centres = (drawn.objects["z_where"][..., 1:] + 1) * 25  # pixels
    present = drawn.z_pres > 0
    assert (centres[present] < 50).all()
    with pytest.raises(ValueError, match="0..64"):
        model.sample(1, counts=(65,))


def test_grid_refuses_dair_and_data_parallel_shards():
    from airscene.errors import AirsceneError
    from airscene.train import Trainer

    with pytest.raises(ConfigError, match="dair"):
        ModelConfig(inference="grid", dair=True)
    run = GridAIR.recipe(SCATTERED_DIGITS.preset())
    with pytest.raises(ConfigError, match="z-pres-baseline"):
        dataclasses.replace(run, train=dataclasses.replace(run.train, z_pres_baseline="stop"))
    with pytest.raises(AirsceneError, match="one process"):
        Trainer(run, torch.device("cpu"), shards=(0, 1))


def test_figures_say_that_box_colours_follow_grid_cells_not_inference_steps(monkeypatch, tmp_path):
    """The grid finds its objects all at once: a figure's box colours name their cells."""
    from airscene import visualise

    titles = []
    monkeypatch.setattr(visualise, "scene_grid", lambda *a, title=None, **k: titles.append(title))
    x = torch.rand(2, 48, 48, generator=torch.Generator().manual_seed(0)) ** 8
    visualise.show_inference(grid_model(), x, tmp_path / "grid.png")
    sequential = build_model(ModelConfig(canvas_size=48))
    visualise.show_inference(sequential, x, tmp_path / "air.png")
    assert titles == [
        "AIR: inferred objects (box colour = grid cell, row by row)",
        "AIR: inferred objects (box colour = inference step)",
    ]
