"""Users' images: finding and reading them, fitting them to the canvas, and `airscene infer`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_MODEL, model_config

from airscene.checkpoint import save_checkpoint
from airscene.cli import main
from airscene.config import RunConfig
from airscene.data.images import (
    ImageError,
    find_images,
    fit_to_canvas,
    looks_dark_on_light,
    read_image,
    to_grey,
)
from airscene.model import build_model
from airscene.pipeline import Pipeline, load


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model=model_config(**TINY_MODEL))
    return save_checkpoint(tmp_path / "tiny", config, build_model(config.model), step=1)


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((50, 50)) * 255).astype(np.uint8)).save(
            folder / f"scene{i}.png"
        )
    # A grey picture saved as RGB JPEG (its channels equal but for JPEG's chroma noise).
    grey_rgb = np.repeat((rng.random((80, 120, 1)) * 255).astype(np.uint8), 3, axis=2)
    Image.fromarray(grey_rgb).save(folder / "colour.jpg")
    (folder / "notes.txt").write_text("not an image, and not picked up from a directory")
    return folder


def test_find_images_files_directories_globs(image_dir, tmp_path):
    from_dir = find_images([image_dir])
    assert [p.name for p in from_dir] == ["colour.jpg", "scene0.png", "scene1.png", "scene2.png"]
    assert [p.name for p in find_images([str(image_dir / "scene*.png")])] == [
        "scene0.png",
        "scene1.png",
        "scene2.png",
    ]
    assert find_images([image_dir / "notes.txt"]) == [
        image_dir / "notes.txt"
    ]  # named files are taken as given
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        find_images([tmp_path / "empty"])
    with pytest.raises(ImageError, match="matches no files"):
        find_images([str(tmp_path / "*.png")])
    with pytest.raises(ImageError, match="no such file"):
        find_images([tmp_path / "missing.png"])


def test_read_image_formats_and_failures(image_dir, tmp_path):
    grey = read_image(image_dir / "scene0.png")
    assert (
        grey.shape == (50, 50) and grey.dtype == np.float32 and 0 <= grey.min() and grey.max() <= 1
    )
    assert read_image(image_dir / "colour.jpg").shape == (80, 120)
    assert read_image(image_dir / "colour.jpg", channels=3).shape == (3, 80, 120)
    colourful = (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(colourful).save(tmp_path / "colourful.png")
    with pytest.raises(
        ImageError, match="colourful.png: a colour image, and this model reads grey"
    ):
        read_image(tmp_path / "colourful.png")
    with pytest.raises(ImageError, match="scene0.png: a grey image .*reads colour images"):
        read_image(image_dir / "scene0.png", channels=3)
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))  # fully transparent: nothing to see
    rgba.save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="clear.png: the image is transparent everywhere"):
        read_image(tmp_path / "clear.png")
    rgba.putpixel((2, 3), (255, 255, 255, 255))  # one white opaque pixel: over black
    rgba.save(tmp_path / "dot.png")
    dot = read_image(tmp_path / "dot.png")
    assert dot[3, 2] == 1.0 and float(dot.sum()) == 1.0
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(image_dir / "notes.txt")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((image_dir / "scene0.png").read_bytes()[:200])
    with pytest.raises(ImageError, match="truncated.png"):
        read_image(truncated)


def test_to_grey_arrays_and_tensors():
    ramp = np.linspace(0, 255, 48, dtype=np.uint8).reshape(6, 8)
    np.testing.assert_allclose(to_grey(ramp), ramp / 255.0, atol=1e-6)
    rgb = np.stack([ramp] * 3, axis=-1)
    np.testing.assert_allclose(to_grey(rgb), ramp / 255.0, atol=1e-5)
    np.testing.assert_allclose(
        to_grey(torch.from_numpy(np.moveaxis(rgb, -1, 0).copy())), ramp / 255.0, atol=1e-5
    )
    assert float(to_grey(np.full((4, 4), 7.0)).max()) == 1.0  # floats are clipped to [0, 1]
    with pytest.raises(ImageError, match="2-D"):
        to_grey(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageError, match="NaN"):
        to_grey(np.full((3, 3), np.nan))


def test_fit_pads_small_images_and_maps_boxes_back_exactly():
    image = np.zeros((30, 40), dtype=np.float32)
    image[5:15, 10:20] = 1.0
    canvas, fit = fit_to_canvas(image, 50)
    assert canvas.shape == (50, 50) and (fit.offset_x, fit.offset_y) == (5.0, 10.0)
    ys, xs = np.nonzero(canvas)
    box_on_canvas = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    np.testing.assert_allclose(fit.to_image(box_on_canvas), [10, 5, 20, 15])


def test_fit_shrinks_large_images_keeping_aspect():
    image = np.zeros((100, 200), dtype=np.float32)
    image[40:60, 100:140] = 1.0
    canvas, fit = fit_to_canvas(image, 50)
    assert fit.scale_x == pytest.approx(0.25) and fit.scale_y == pytest.approx(0.25)
    assert canvas[:12].max() == 0 and canvas[-12:].max() == 0  # padded above and below
    np.testing.assert_allclose(fit.to_image(np.array([25.0, 22.0, 35.0, 27.0])), [100, 40, 140, 60])


def test_dark_on_light_detection():
    light = np.ones((20, 20), dtype=np.float32)
    light[5:15, 8:12] = 0.0
    assert looks_dark_on_light(light) and not looks_dark_on_light(1.0 - light)


def test_pipeline_results_for_every_kind_of_input(tiny_checkpoint, image_dir):
    pipeline = load(tiny_checkpoint)
    assert isinstance(pipeline, Pipeline)
    items = [image_dir / "scene0.png", str(image_dir / "colour.jpg"), Image.open(image_dir / "scene1.png"),
             np.zeros((50, 50), dtype=np.uint8), torch.zeros(64, 64), image_dir / "notes.txt"]  # fmt: skip
    results = pipeline.infer(items, batch_size=4)
    assert len(results) == len(items)
    assert (
        results[-1].error is not None
        and "notes.txt" in results[-1].error
        and results[-1].count is None
    )
    assert (
        results[1].width == 120
        and results[1].height == 80
        and results[1].path.endswith("colour.jpg")
    )
    for result in results[:-1]:
        assert result.error is None and result.count == len(result.objects) <= 3
        for obj in result.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 <= x1 <= result.width and 0 <= y0 <= y1 <= result.height
            assert len(obj.z_where) == 3 and len(obj.z_what) == 4 and 0.5 <= obj.presence <= 1
        record = result.to_record()
        assert json.loads(json.dumps(record)) == record and "error" not in record
    batch = pipeline.infer(np.zeros((5, 50, 50), dtype=np.float32))  # one array holding 5 images
    assert len(batch) == 5


def test_cli_infer_jsonl_overlay_and_bad_files(tiny_checkpoint, image_dir, tmp_path, capsys):
    out, overlay = tmp_path / "out.jsonl", tmp_path / "overlay"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = [
        "infer",
        str(image_dir),
        str(broken),
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main([*args, "--overlay", str(overlay)]) == 2  # one unreadable file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # random pixels: the unreadable file, and the rest flagged
    assert err[0].startswith("airscene: error: 1 of 5 images could not be read (see their records)")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert (
        len(records) == 5 and "error" in records[-1] and all("error" not in r for r in records[:4])
    )
    assert sorted(p.name for p in overlay.iterdir()) == [
        "00000-colour.png", "00001-scene0.png", "00002-scene1.png", "00003-scene2.png"
    ]  # fmt: skip
    assert Image.open(overlay / "00001-scene0.png").size[0] >= 256

    before = out.read_bytes()
    assert main(args) == 2  # --out exists: refused, untouched
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before

    (tmp_path / "empty").mkdir()
    assert main(["infer", str(tmp_path / "empty"), "--model", str(tiny_checkpoint)]) == 2
    assert "holds no images" in capsys.readouterr().err

    assert (
        main(["infer", str(image_dir / "scene0.png"), "--model", str(tiny_checkpoint), "--quiet"])
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["path"].endswith("scene0.png") and record["width"] == 50
