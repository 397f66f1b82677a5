"""The grid over coloured objects with masks and a background (``airscene.masked_grid``)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from airscene.cli import main
from airscene.config import ConfigError, MaskedConfig, ModelConfig, sprites_run
from airscene.errors import AirsceneError
from airscene.grid import GridAIR
from airscene.masked_grid import MaskedGridAIR
from airscene.masked_objects import MaskedObjects
from airscene.model import build_model
from airscene.objective import cellwise_objective
from airscene.registry import inference_scheme


def masked_grid(seed: int = 0, **fields) -> MaskedGridAIR:
    run = inference_scheme("grid", "masked").recipe(sprites_run())
    objects = dataclasses.replace(run.model.objects, encoder_hidden=16, decoder_hidden=16)
    model = dataclasses.replace(run.model, objects=objects, grid_channels=8, **fields)
    torch.manual_seed(seed)
    return build_model(model)


def opaque(model: MaskedGridAIR, colour: float = 4.0) -> None:
    """Every object an opaque square of its window (colour logits ``colour``)."""
    with torch.no_grad():
        model.objects.decoder.net[0][-1].weight.zero_()
        model.objects.decoder.net[0][-1].bias.fill_(colour)
        model.objects.decoder.net[0][-1].bias[-(16 * 16) :] = 8.0  # the mask


def test_the_grid_of_masked_objects_is_its_own_scheme_and_its_recipe_is_valid():
    assert inference_scheme("grid", "masked") is MaskedGridAIR
    run = MaskedGridAIR.recipe(sprites_run())
    assert run.model.inference == "grid" and not run.model.dair and run.model.core_pool == 1
    assert run.model.background == "smooth" and run.model.channels == 3
    assert isinstance(build_model(run.model), MaskedGridAIR)
    with pytest.raises(ConfigError, match="masked objects"):
        ModelConfig(inference="grid", background="smooth")  # grey summed ink has none


def test_the_grey_grid_refuses_objects_that_have_their_own(tmp_path, capsys):
    config = MaskedGridAIR.recipe(sprites_run()).model
    with pytest.raises(AirsceneError, match="masked_grid:MaskedGridAIR"):
        GridAIR(config)
    run = tmp_path / "run"
    argv = ["train", "--kind", "multi-mnist", "--objects", "masked", "--inference", "grid",
            "--run-dir", str(run)]  # fmt: skip
    assert main(argv) == 2  # the digits' preset has no masked objects for the recipe to fit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "masked" in err[0] and not run.exists()


def test_summed_composite_is_the_ordered_one_apart_and_mixes_colours_where_objects_overlap():
    objects = MaskedObjects(MaskedConfig(), canvas_size=8, channels=3)
    red, blue = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    red[0, [0, 3], :4, :4] = 1.0  # opaque red (premultiplied colour, then the mask)
    blue[0, 2:, 4:, 4:] = 0.5  # blue, half transparent
    background = torch.full((1, 3, 8, 8), 0.2)
    ordered = red + (1 - red[:, 3:]) * blue  # apart, painting in order adds them
    torch.testing.assert_close(
        objects.composite_summed(red + blue, background), objects.composite(ordered, background)
    )
    over = red.clone()
    over[0, 2:, :4, :4] += 1.0  # an opaque blue object on the red one
    mixed = objects.composite_summed(over, background)
    torch.testing.assert_close(mixed[0, :, 0, 0], torch.tensor([0.5, 0.0, 0.5]))  # their mean
    torch.testing.assert_close(mixed[0, :, 7, 0], torch.full((3,), 0.2))  # background alone


@pytest.mark.parametrize("side", [64, 60])
def test_each_cells_patch_scores_are_the_scene_likelihood_with_it_and_without_it(side):
    """What a cell's z_pres changes in log p(x | z), scored in its patch (the image's pixels
    only, the background under them), equals the change of the whole image's likelihood; cells
    on the edge included, whose windows reach beyond the image, and on a canvas the cells pad
    (60 px: 8 cells of 8 px)."""
    model = masked_grid(seed=1, canvas_size=side).train().double()
    opaque(model, colour=0.5)
    x = torch.rand(2, 3, side, side, dtype=torch.float64)
    cells = model.propose(x, torch.Generator().manual_seed(2))
    z_pres = torch.rand(cells.logits.shape, generator=torch.Generator().manual_seed(3)) < 0.3
    z_pres = z_pres.double()
    present, absent = model.patch_log_likelihoods(x, cells, z_pres)
    for cell in range(z_pres.shape[1]):
        on, off = z_pres.clone(), z_pres.clone()
        on[:, cell], off[:, cell] = 1.0, 0.0
        whole_on = model.reconstruction(x, cells, on)[0]
        whole_off = model.reconstruction(x, cells, off)[0]
        torch.testing.assert_close(
            present[:, cell] - absent[:, cell], whole_on - whole_off, rtol=0, atol=1e-8
        )


def test_the_objects_do_not_train_the_background_and_it_learns_from_the_image():
    model = masked_grid(seed=3).train()
    x = torch.rand(3, 3, 64, 64)
    inference, objective = cellwise_objective(model, x, torch.Generator().manual_seed(0), 0.3)
    background = list(model.background.parameters())
    decoder = list(model.objects.decoder.parameters())
    whole = inference.log_likelihood.sum()  # the background's term: the objects held fixed
    assert all(g is None for g in torch.autograd.grad(whole, decoder, allow_unused=True,
                                                      retain_graph=True))  # fmt: skip
    cells = model.propose(x, torch.Generator().manual_seed(0))
    z_pres = torch.ones_like(cells.logits)
    present, _ = model.patch_log_likelihoods(x, cells, z_pres)  # what the objects learn from
    assert all(g is None for g in torch.autograd.grad(present.sum(), background,
                                                      allow_unused=True))  # fmt: skip
    objective.loss.backward()
    assert sum(p.grad.abs().sum() for p in background if p.grad is not None) > 0


def test_refining_switches_off_a_shape_claimed_twice_but_not_a_lone_object(monkeypatch):
    """Cells 9 and 10 draw the same opaque square centred between them; cell 50 draws a square
    where the image is black. Only an object centred in another's window may go: one claim
    of the two is switched off (the image is the same, one object fewer), cell 50 stays."""
    model = masked_grid(seed=2, background="none").eval()
    opaque(model)
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 1:17, 8:24] = 1.0  # a white square centred at (16, 9), between cells 9 and 10
    window = model.window

    def meeting(u, per_row, cell=None):
        side, offset, centre = window(u, per_row, cell)
        offset, centre = offset.clone(), centre.clone()
        for cell, shift in ((9, 3.9), (10, -3.9)):
            offset[:, cell] = torch.tensor([shift, -3.0])  # both drawn where they are centred
            centre[:, cell] = torch.tensor([16.0, 9.0])
        return side, offset, centre

    monkeypatch.setattr(model, "window", meeting)
    with torch.no_grad():
        cells = model.propose(x, sample=False)
        z_pres = torch.zeros_like(cells.logits)
        z_pres[:, [9, 10, 50]] = 1.0
        before = model.scene_score(x, cells, z_pres)
        cells, refined = model.refine(x, cells, z_pres, None, passes=3)
        after = model.scene_score(x, cells, refined)
    assert refined[0, 9] + refined[0, 10] == 1
    assert refined[0, 50] == 1 and refined.sum() == 2
    assert after > before


def test_refining_switches_on_a_shape_q_missed_and_nothing_else():
    """A white square on black exactly where cell 27's window lies, every cell off at q's mode
    and cell 27 the one q most nearly found: the search switches it on and no other (any other
    window draws white where the image is black)."""
    model = masked_grid(seed=5, background="none").eval()
    opaque(model)
    with torch.no_grad():
        model.network.head.weight.zero_()  # every window at its cell's centre, its prior size
        model.network.head.bias[1:4] = 0.0
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 20:36, 20:36] = 1.0  # cell 27's window: centred at (28, 28), 16 px
    with torch.no_grad():
        cells = model.propose(x, sample=False)
        cells.logits[0, 27] += 1.0  # still below 1/2 (-1 against the others' -2)
        before = model.scene_score(x, cells, torch.zeros_like(cells.logits))
        cells, refined = model.refine(x, cells, torch.zeros_like(cells.logits), None, passes=3)
        after = model.scene_score(x, cells, refined)
    assert refined.nonzero()[:, 1].tolist() == [27]
    assert after > before


def blue_canvas() -> torch.Tensor:
    """A plain blue image (1, 3, 64, 64): the segmentation tests' background."""
    canvas = torch.zeros(1, 3, 64, 64)
    canvas[0, 2] = 1.0
    return canvas


def segment_drawn(model, drawings, x, background, cells, monkeypatch):
    """``model``'s segmentation of images ``x`` where the cells ``cells`` are present and draw
    ``drawings`` (M, 4, H, W), over ``background``."""
    monkeypatch.setattr(MaskedObjects, "draw", lambda self, values: drawings)
    inference = model(x, sample=False)
    inference.z_pres.zero_()
    inference.z_pres[0, cells] = 1.0
    inference.background = background
    return model.segmentation(x, inference)[0]


def test_segmentation_gives_each_pixel_to_the_object_whose_colour_it_shows(monkeypatch):
    """A red square whose decoded mask is 0.9 inside and 0.3 on its outermost ring, and a green
    one (mask 0.9) overlapping its corner, over blue; the image shows the red one in front. By
    the masks alone the ring would be the background's (0.3 < 0.7) and the overlap anyone's;
    by each pixel's owner under the posterior the ring and the overlap are red's, the rest of
    the green square green's, and nothing beyond them is either's."""
    model = masked_grid(background="none").eval()
    drawings = torch.zeros(2, 4, 64, 64)
    drawings[0, 3, 20:30, 20:30] = 0.3
    drawings[0, 3, 21:29, 21:29] = 0.9
    drawings[1, 3, 26:36, 26:36] = 0.9
    drawings[0, 0] = drawings[0, 3]  # red, premultiplied
    drawings[1, 1] = drawings[1, 3]  # green
    x = blue_canvas()
    x[0, :, 26:36, 26:36] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    x[0, :, 20:30, 20:30] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    found = segment_drawn(model, drawings, x, blue_canvas(), [27, 28], monkeypatch)
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[26:36, 26:36] = 29
    truth[20:30, 20:30] = 28
    assert torch.equal(found, truth)


def test_segmentation_lets_colour_decide_a_rim_of_two_pixels_round_each_drawn_mask(monkeypatch):
    """A red square drawn with mask 0.95 over rows and columns 20-29, the decoder's colour
    beyond it black (meaningless there), on a dark grey that black is nearer than red is: the
    image's red reaches one pixel above it and two to its left (a corner the decoder drew
    short) and, three pixels below it, one red pixel stands apart. The rim's red pixels are the
    square's (by its own colour: by the decoder's black there the background would keep them),
    the lone one three pixels away is not, and no grey pixel is."""
    model = masked_grid(background="none").eval()
    drawings = torch.zeros(1, 4, 64, 64)
    drawings[0, 3, 20:30, 20:30] = 0.95
    drawings[0, 0] = drawings[0, 3]  # red, premultiplied; black beyond the mask
    x = torch.full((1, 3, 64, 64), 0.1)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    x[0, :, 20:30, 20:30] = red[..., None]
    x[0, :, 19, 24] = red[:, 0]  # a pixel above the drawn top edge
    x[0, :, 25, 18:20] = red  # two to the left of the drawn left edge
    x[0, :, 32, 24] = red[:, 0]  # three below the bottom edge: beyond the rim
    found = segment_drawn(model, drawings, x, torch.full_like(x, 0.1), [27], monkeypatch)
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[20:30, 20:30] = 28
    truth[19, 24] = truth[25, 18] = truth[25, 19] = 28
    assert model.segmentation_rim == 2
    assert torch.equal(found, truth)


def test_segmentation_keeps_to_each_object_what_it_draws_against_a_neighbours_rim(monkeypatch):
    """Two red squares side by side, each drawn with mask 0.95 over its own columns (20-29 for
    cell 28, 30-39 for cell 27), over blue: each keeps its own pixels, though the other's rim
    reaches two columns into them in the same colour (a tie the lower cell would win)."""
    model = masked_grid(background="none").eval()
    drawings = torch.zeros(2, 4, 64, 64)
    drawings[0, 3, 20:30, 30:40] = 0.95  # cell 27
    drawings[1, 3, 20:30, 20:30] = 0.95  # cell 28
    drawings[:, 0] = drawings[:, 3]
    x = blue_canvas()
    x[0, :, 20:30, 20:40] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    found = segment_drawn(model, drawings, x, blue_canvas(), [27, 28], monkeypatch)
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[20:30, 30:40] = 28
    truth[20:30, 20:30] = 29
    assert torch.equal(found, truth)


def test_sampled_scenes_are_their_objects_over_a_background_from_its_prior(monkeypatch):
    """Opaque objects over a background the prior draws as a flat 0.25: each scene holds its
    count's objects, the background shows exactly where no object lies, and objects show."""
    model = masked_grid(seed=4).eval()
    opaque(model)
    flat = lambda n, like, generator=None: like.new_full((n, 3, 64, 64), 0.25)  # noqa: E731
    monkeypatch.setattr(model.background, "sample", flat)
    sample = model.sample(5, torch.Generator().manual_seed(0), counts=(2, 3))
    assert sample.images.shape == (5, 3, 64, 64)
    assert set(sample.z_pres.sum(1).tolist()) <= {2.0, 3.0}
    image, cell = sample.z_pres.nonzero(as_tuple=True)
    objects = {k: v[image, cell] for k, v in sample.objects.items()}
    covered = torch.zeros(5, 64, 64).index_add(0, image, model.objects.draw(objects)[:, 3])
    shown = (sample.images != 0.25).any(1)
    assert torch.equal(shown, covered > 0)
    assert shown.flatten(1).any(1).all()


def test_sprites_train_on_the_grid_and_every_verb_reads_the_model(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--kind", "sprites", "--inference", "grid", "--run-dir", str(run),
            "--steps", "2", "--batch-size", "4", "--n-train", "16", "--n-test", "8",
            "--eval-every", "2", "--eval-scenes", "8", "--encoder-hidden", "8",
            "--decoder-hidden", "8", "--grid-channels", "8"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["model"]["inference"] == "grid" and config["model"]["background"] == "smooth"
    assert config["train"]["steps"] == 2 and config["model"]["cell_size"] == 8
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run), "--n", "8", "--quiet", "--out", str(out)]) == 0
    assert "foreground_ari" in json.loads(out.read_text())
    image = tmp_path / "scene.png"
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(image)
    records = tmp_path / "found.jsonl"
    assert main(["infer", "--model", str(run), str(image), "--out", str(records)]) == 0
    assert json.loads(records.read_text().splitlines()[0])["count"] >= 0
    assert main(["sample", "--model", str(run), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
