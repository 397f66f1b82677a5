"""Colour (issue 31): coloured sprites over coloured backgrounds, objects with masks composited
front to back over a learned colour background, and the foreground ARI of their masks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from airscene.cli import main
from airscene.config import ConfigError, GlimpseConfig, MaskedConfig, ModelConfig, sprites_run
from airscene.data.images import read_image
from airscene.data.sprites import (
    MIN_VISIBLE,
    SHAPES,
    export_sprites_png,
    hsv_to_rgb,
    load_sprites,
    make_sprites,
    shape_masks,
)
from airscene.errors import AirsceneError
from airscene.masked_objects import adjusted_rand_index, occurrence_rank
from airscene.model import build_model


@pytest.fixture(scope="module")
def sprites():
    return make_sprites(300, "test", seed=0)


def test_sprites_are_seeded_colour_scenes_of_the_asked_counts(sprites):
    assert sprites.images.shape == (300, 3, 64, 64) and sprites.images.dtype == np.uint8
    assert set(np.unique(sprites.counts)) == {0, 1, 2, 3, 4}
    again = make_sprites(300, "test", seed=0)
    assert (again.images == sprites.images).all()
    train = make_sprites(300, "train", seed=0)
    assert not (train.images == sprites.images).all()
    few = make_sprites(50, "test", seed=0, counts=(1, 2))
    assert set(np.unique(few.counts)) <= {1, 2}


def test_every_object_is_mostly_visible_and_drawn_in_its_own_colour(sprites):
    masks = sprites.masks()  # (n, K, H, W) visible masks
    smallest_shape = shape_masks(np.array(2), np.array(10), np.zeros(2), 64).sum()
    for i in range(len(sprites)):
        for k in range(sprites.shapes.shape[1]):
            seen = masks[i, k]
            if k >= sprites.counts[i]:
                assert not seen.any() and sprites.shapes[i, k] == -1
                continue
            assert seen.sum() >= MIN_VISIBLE * smallest_shape
            pixels = sprites.images[i][:, seen].T  # (pixels, 3)
            assert (pixels == sprites.colours[i, k]).all()
            rows, cols = np.nonzero(seen)
            box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert list(sprites.boxes[i, k]) == box


def test_shapes_and_colours():
    square, circle, triangle = (
        shape_masks(np.array(s), np.array(12), np.array([4.0, 4.0]), 24) for s in range(3)
    )
    assert square.sum() == 144 and square[4:16, 4:16].all()
    assert 100 <= circle.sum() <= 120 and not circle[4, 4]  # pi 36 = 113
    assert 60 <= triangle.sum() <= 84 and triangle[15, 4:16].sum() > triangle[5, 4:16].sum()
    rgb = hsv_to_rgb(np.array([0.0, 1 / 3, 2 / 3]), np.ones(3), np.ones(3))
    assert np.allclose(rgb, np.eye(3), atol=1e-9)
    assert np.allclose(hsv_to_rgb(np.array(0.5), np.array(0.0), np.array(0.4)), 0.4)


def test_sprites_are_cached_and_exported_with_their_masks(sprites, tmp_path):
    first = load_sprites(20, "test")
    assert (load_sprites(20, "test").segmentation == first.segmentation).all()
    out = export_sprites_png(first, tmp_path / "png")
    record = json.loads((out / "ground_truth.json").read_text())["images"][3]
    image = np.asarray(Image.open(out / record["file"]))
    assert image.shape == (64, 64, 3) and (image == first.images[3].transpose(1, 2, 0)).all()
    mask = np.asarray(Image.open(out / record["mask"]))
    assert (mask == first.segmentation[3]).all()
    assert record["count"] == first.counts[3] == len(record["objects"])
    assert all(o["shape"] in SHAPES for o in record["objects"])
    with pytest.raises(AirsceneError, match="not empty"):
        export_sprites_png(first, out)


def test_data_make_writes_sprites(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert (
        main(["data", "make", "--kind", "sprites", "--n", "12", "--format", "png", "--out", out])
        == 0
    )
    assert len(list((tmp_path / "s" / "test" / "masks").glob("*.png"))) == 12
    assert main(["data", "make", "--kind", "sprites", "--digit-size", "14", "--n", "4"]) == 2
    assert "not a setting of --kind sprites" in capsys.readouterr().err


def test_occurrence_rank_counts_earlier_entries_of_the_same_image():
    rank = occurrence_rank(torch.tensor([2, 0, 2, 1, 0, 2]))
    assert rank.tolist() == [0, 0, 1, 0, 1, 2]


def colour_model(**changes):
    return build_model(sprites_run().model.__class__(**{**vars(sprites_run().model), **changes}))


def test_objects_cover_what_lies_behind_them_the_first_in_front():
    objects = colour_model(background="none").objects
    red, blue = torch.zeros(4, 64, 64), torch.zeros(4, 64, 64)
    red[0, 10:30, 10:30], red[3, 10:30, 10:30] = 1.0, 1.0  # premultiplied colour, then mask
    blue[2, 20:40, 20:40], blue[3, 20:40, 20:40] = 0.6, 0.6  # partly transparent
    objects.draw = lambda values: torch.stack([red, blue])[values["z_what"][:, 0].long()]
    canvas = objects.blank_canvas(torch.zeros(1, 3, 64, 64))
    values = {"z_what": torch.tensor([[0.0], [1.0]]), "z_where": torch.zeros(2, 3)}
    canvas = objects.paint(canvas, torch.tensor([0, 0]), values)
    image = objects.canvas_image(canvas)
    assert torch.allclose(image[0, :, 25, 25], torch.tensor([1.0, 0, 0]))  # red is in front
    assert torch.allclose(image[0, :, 35, 35], torch.tensor([0, 0, 0.6]))
    background = torch.full((1, 3, 64, 64), 0.2)
    scene = objects.composite(canvas, background)
    assert torch.allclose(scene[0, :, 35, 35], torch.tensor([0.08, 0.08, 0.68]))  # 0.4 shows
    assert torch.allclose(scene[0, :, 25, 25], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(scene[0, :, 50, 50], torch.full((3,), 0.2))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(objects.unexplained(x - background, canvas, background), x - scene)
    z_pres = torch.tensor([[1.0, 1.0, 0.0]])
    latents = {"z_what": torch.tensor([[[0.0], [1.0], [0.0]]]), "z_where": torch.zeros(1, 3, 3)}
    labels = objects.segmentation(latents, z_pres)[0]
    assert labels[25, 25] == 1 and labels[35, 35] == 2 and labels[50, 50] == 0


def test_adjusted_rand_index():
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, 3, 3])) == 1.0
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(
        0.5714285714
    )
    assert adjusted_rand_index(np.array([1, 1, 1]), np.array([2, 2, 2])) == 1.0
    assert adjusted_rand_index(np.array([1, 1, 1, 1]), np.array([0, 0, 1, 1])) == 0.0


def test_a_colour_model_infers_samples_and_learns_through_every_part():
    torch.manual_seed(0)
    model = colour_model()
    x = torch.from_numpy(make_sprites(6, "test").images).float() / 255
    inference = model(x, generator=torch.Generator().manual_seed(1))
    assert inference.canvas.shape == (6, 3, 64, 64) and torch.isfinite(inference.elbo).all()
    inference.elbo.sum().backward()
    for part in (model.objects.decoder, model.objects.encoder, model.background, model.core):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    drawn = model.sample(5, generator=torch.Generator().manual_seed(2), counts=(2,))
    assert drawn.images.shape == (5, 3, 64, 64)
    assert 0 <= drawn.images.min() and drawn.images.max() <= 1
    assert model.core_view(x).shape == (6, 3 * 32 * 32)  # sprites' core reads pooled images


def test_colour_needs_objects_with_a_colour():
    with pytest.raises(ConfigError, match="masked"):
        ModelConfig(channels=3, objects=GlimpseConfig())
    with pytest.raises(ConfigError, match="core_pool"):
        ModelConfig(core_pool=3)
    ModelConfig(channels=3, objects=MaskedConfig(), canvas_size=64)


def test_train_on_sprites_logs_the_masks_foreground_ari(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--kind", "sprites", "--steps", "2", "--n-train", "64", "--n-test", "16"]
    assert main([*args, "--eval-every", "2", "--eval-scenes", "16", "--run-dir", str(run)]) == 0
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    ari = dict(zip(header.split(","), row.split(","), strict=True))["eval_foreground_ari"]
    assert 0 <= abs(float(ari)) <= 1


def eight_channel_tiff(path, height=8, width=8):
    """A baseline TIFF of 8 uint8 samples per pixel (a multispectral image), written by hand."""
    import struct

    pixels = bytes(range(256)) * (height * width * 8 // 256 + 1)
    pixels = pixels[: height * width * 8]
    bits_at = 8 + 2 + 12 * 10 + 4  # after the header and the IFD
    data_at = bits_at + 16
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 8, bits_at),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, data_at),
        (277, 3, 1, 8),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<8H", *[8] * 8) + pixels
    )


def test_a_colour_model_reads_colour_and_says_why_it_cannot_read_the_rest(tmp_path, capsys):
    from airscene.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = sprites_run()
    checkpoint = save_checkpoint(tmp_path / "colour", config, build_model(config.model), step=1)
    scenes = make_sprites(2, "test", seed=3, counts=(2,))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(scenes.images[0].transpose(1, 2, 0)).save(folder / "a-scene.png")
    rgba = np.concatenate(
        [scenes.images[1].transpose(1, 2, 0), np.full((64, 64, 1), 255, np.uint8)], axis=2
    )
    rgba[:10, :, 3] = 0  # a transparent band along the top: over the image's own background
    Image.fromarray(rgba, "RGBA").save(folder / "b-band.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(folder / "c-clear.png")
    Image.fromarray(scenes.images[0][0]).save(folder / "d-grey.png")
    eight_channel_tiff(folder / "e-eight.tif")
    out = tmp_path / "found.jsonl"
    overlays = tmp_path / "overlays"
    argv = ["infer", str(folder), "--model", str(checkpoint), "--out", str(out), "--quiet"]
    assert main([*argv, "--overlay", str(overlays)]) == 2
    records = {json.loads(line)["path"].split("/")[-1]: json.loads(line) for line in out.open()}
    assert "error" not in records["a-scene.png"] and "error" not in records["b-band.png"]
    assert records["a-scene.png"]["count"] is not None
    assert "transparent everywhere" in records["c-clear.png"]["error"]
    assert "a grey image" in records["d-grey.png"]["error"]
    assert "e-eight.tif" in records["e-eight.tif"]["error"]
    assert all("\n" not in record.get("error", "") for record in records.values())
    assert "3 of 5 images could not be read" in capsys.readouterr().err
    overlay = np.asarray(Image.open(next(overlays.glob("*a-scene.png"))))
    assert overlay.shape[2] == 3 and overlay.std(axis=2).mean() > 1  # drawn in colour
    figure = tmp_path / "show.png"
    assert main(["show", "--model", str(checkpoint), "--n", "3", "--out", str(figure)]) == 0
    width, height = Image.open(figure).size
    assert height > width  # three rows of three: scenes, reconstructions and the masks
    assert main(["sample", "--model", str(checkpoint), "--n", "3", "--out", str(figure)]) == 0
    band = read_image(folder / "b-band.png", channels=3)
    behind = np.median(scenes.images[1][:, 10:].reshape(3, -1), axis=1) / 255
    assert np.abs(band[:, 2, 30] - behind).max() < 0.1  # the band took the border's colour


def test_the_sprites_recipe_trains_on_a_folder_of_your_colour_images(tmp_path, capsys):
    folder = export_sprites_png(make_sprites(24, "train", seed=4), tmp_path / "mine")
    run = tmp_path / "run"
    argv = ["train", "--kind", "sprites", "--data", str(folder), "--steps", "2"]
    assert main([*argv, "--eval-every", "2", "--run-dir", str(run)]) == 0
    assert "eval_count_accuracy" in (run / "metrics.csv").read_text()
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(grey / "0.png")
    assert (
        main(["train", "--kind", "sprites", "--data", str(grey), "--run-dir", str(tmp_path / "g")])
        == 2
    )
    assert "a grey image" in capsys.readouterr().err


def test_a_window_cannot_grow_over_the_whole_image():
    objects = colour_model().objects
    params = torch.zeros(3, 6)
    params[:, 0] = torch.tensor([-50.0, 0.0, 50.0])
    loc, _ = objects.where_posterior(params)
    low, high = objects.config.window_range
    assert loc[0, 0] == pytest.approx(low) and loc[2, 0] == pytest.approx(high)
    start, _ = objects.where_posterior(objects.initial_params()[None])
    assert start[0, 0] == pytest.approx(objects.config.z_where_prior_loc[0])
    with pytest.raises(ConfigError, match="window_range"):
        MaskedConfig(window_range=(0.3, 0.5))


def test_a_smooth_background_holds_every_sprites_background_and_nothing_sharp():
    from airscene.background import SmoothBackground

    background = SmoothBackground(sprites_run().model)
    empty = make_sprites(60, "test", seed=5, counts=(0,))
    x = torch.from_numpy(empty.images).float() / 255  # backgrounds alone
    points = torch.tensor([0, 21, 42, 63])  # the grid's corners on pixel centres
    grid = torch.logit(x[:, :, points][:, :, :, points].clamp(1e-3, 1 - 1e-3))
    mean = grid.mean((2, 3))
    detail = (grid - mean[..., None, None]) / background.detail
    drawn = background.decode(torch.cat([mean, detail.flatten(1)], dim=1))
    assert set(empty.backgrounds) == {0, 1, 2}  # flat, gradient and smooth noise, each exact
    assert (drawn - x).abs().max() < 2.5 / 255
    square = torch.zeros(1, 3, 64, 64)
    square[:, :, 20:34, 20:34] = 1.0  # a white 14 px square on black: the closest field to it
    z_bg = torch.zeros(1, 51, requires_grad=True)
    optimiser = torch.optim.Adam([z_bg], lr=0.1)
    for _ in range(300):
        optimiser.zero_grad()
        ((background.decode(z_bg) - square) ** 2).sum().backward()
        optimiser.step()
    closest = background.decode(z_bg.detach())
    assert (closest - square)[:, :, 20:34, 20:34].abs().mean() > 0.4  # it cannot draw it


def test_a_smoothness_prior_makes_broad_colour_cheap_and_an_objects_blob_dear():
    from airscene.background import SmoothBackground, grid_correlation

    factor = grid_correlation(8, 64, 20.0)
    correlation = factor @ factor.T
    assert torch.allclose(correlation.diagonal(), torch.ones(64), atol=1e-3)  # unit variance
    assert 0.88 < correlation[0, 1] < 0.92  # neighbours 9 px apart: exp(-81 / 800)
    points = torch.linspace(0, 63, 8)
    y, x = torch.meshgrid(points, points, indexing="ij")

    def z_drawing(field: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """The z (64,) whose departures factor @ z are ``field`` at the grid's points."""
        return torch.linalg.solve_triangular(factor, field.reshape(64, 1), upper=False).flatten()

    def kl_of(field: torch.Tensor, smoothness: float) -> float:
        """½|z|² of the z that draws ``field``."""
        factor = grid_correlation(8, 64, smoothness) if smoothness else torch.eye(64)
        return 0.5 * float((z_drawing(field, factor) ** 2).sum())

    def bump(width: float) -> torch.Tensor:  # one logit at the canvas's centre
        return torch.exp(-((y - 31.5) ** 2 + (x - 31.5) ** 2) / (2 * width**2))

    broad, blob = bump(20.0), bump(8.0)  # a patch of colour; an object of ~18 px
    with pytest.raises(ConfigError, match="needs --background smooth"):
        ModelConfig(background_smoothness=20.0)  # no background to correlate
    # (With independent colours, kl_of(..., 0.0), the blob would cost less than the patch.)
    assert kl_of(blob, 20.0) > 100 * kl_of(broad, 20.0)
    model = colour_model(background_grid=8, background_detail=1.0, background_smoothness=20.0)
    assert isinstance(model.background, SmoothBackground)
    assert torch.equal(model.background.correlation, factor)
    assert not any("correlation" in name for name in model.state_dict())  # fixed by the config
    z_bg = torch.zeros(1, 3 + 3 * 64)
    z_bg[0, 3 : 3 + 64] = z_drawing(broad, factor)
    drawn = model.background.decode(z_bg)  # red departs by the broad bump, the rest stays grey
    expected = torch.nn.functional.interpolate(
        torch.sigmoid(broad)[None, None], size=(64, 64), mode="bilinear", align_corners=True
    )
    assert torch.allclose(drawn[0, 0], expected[0, 0], atol=1e-4)
    assert drawn[0, 1:].sub(0.5).abs().max() < 1e-6


@pytest.mark.parametrize("networks", ["dense", "conv"])
def test_masked_objects_start_nearly_transparent_with_either_glimpse_networks(networks):
    torch.manual_seed(0)
    objects = colour_model(objects=MaskedConfig(glimpse_networks=networks)).objects
    glimpse = objects.decoder(torch.randn(5, objects.z_what_dim))  # premultiplied colour, mask
    assert glimpse.shape == (5, 4, 16, 16)
    mask = glimpse[:, 3]
    assert 0.05 < mask.mean() < 0.25  # sigmoid(mask_bias = -2) = 0.12
    assert (glimpse[:, :3] <= mask[:, None] + 1e-6).all()  # colour premultiplied by the mask
    with pytest.raises(ConfigError, match="multiple of 4"):
        MaskedConfig(glimpse_networks="conv", glimpse_size=18)


def test_training_lets_the_smooth_backgrounds_detail_in_over_its_steps():
    from airscene.config import TrainConfig
    from airscene.train import background_detail_at

    config = TrainConfig(steps=10, background_detail_steps=4)
    assert [background_detail_at(s, config) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert background_detail_at(1, TrainConfig()) == 1.0
    background = colour_model().background
    z_bg = torch.randn(2, 51)
    background.detail_fraction = 0.0  # the mean colour alone: a flat image
    flat = background.decode(z_bg)
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))
    background.detail_fraction = 1.0
    assert not torch.allclose(background.decode(z_bg), flat)
