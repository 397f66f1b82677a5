"""The scattered-digits scene family: many small digits that may touch and overlap a little."""

import json

import numpy as np
import pytest
from scipy import ndimage

from airscene.cli import main
from airscene.data.scattered import SCATTERED_DIGITS
from airscene.data.scenes import generate_scenes, scene_rng


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    shared = max(width, 0) * max(height, 0)
    return shared / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def test_scenes_hold_small_digits_that_touch_but_overlap_little():
    config = SCATTERED_DIGITS.preset().data
    scenes = generate_scenes(config, "test", 300, scene_rng(config, "test"))
    assert scenes.images.shape == (300, 48, 48) and set(scenes.counts) == set(range(1, 10))
    overlaps, components = [], []
    for image, boxes, count in zip(scenes.images, scenes.boxes, scenes.counts, strict=True):
        boxes = boxes[:count]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) <= 14).all()  # the 28 px frame shrunk to 14
        overlaps += [overlap_of_smaller(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]]
        components.append(ndimage.label(image > 0)[1])
    assert max(overlaps) <= 0.2 + 1e-9 and np.mean(np.array(overlaps) > 0) > 0.05
    # Touching digits merge: counting connected blobs of ink is wrong on many crowded scenes.
    crowded = scenes.counts >= 7
    assert np.mean(np.array(components)[crowded] != scenes.counts[crowded]) > 0.3


def test_data_make_scattered_digits_and_its_bad_input(tmp_path, capsys):
    out = tmp_path / "scenes"
    argv = ["data", "make", "--kind", "scattered-digits", "--split", "test", "--n", "20"]
    assert main([*argv, "--format", "png", "--out", str(out)]) == 0
    truth = json.loads((out / "test" / "ground_truth.json").read_text())
    assert len(truth["images"]) == 20 and truth["config"]["digit_size"] == 14
    capsys.readouterr()
    # A canvas smaller than a digit; more digits than fit at the allowed overlap.
    for flags, words in (
        (["--canvas-size", "10"], "digit_size must lie in 4..10"),
        (["--canvas-size", "16", "--counts", "12", "--max-overlap", "0"], "could not place 12"),
    ):
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_the_family_trains_with_its_own_preset(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--kind", "scattered-digits", "--run-dir", str(run), "--steps", "1",
            "--batch-size", "4", "--n-train", "16", "--n-test", "8", "--eval-every", "1",
            "--eval-scenes", "8", "--lstm-size", "8", "--predictor-hidden", "8",
            "--baseline-lstm-size", "8", "--encoder-hidden", "8", "--decoder-hidden", "8",
            "--z-what-dim", "2"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"]["canvas_size"] == config["model"]["canvas_size"] == 48
    assert config["model"]["max_steps"] == 10


@pytest.mark.parametrize("placement", ["scene", "digit"])
def test_placement_is_seeded(placement):
    import dataclasses

    config = dataclasses.replace(SCATTERED_DIGITS.preset().data, placement=placement, counts=(3,))
    a = generate_scenes(config, "train", 20, scene_rng(config, "train"))
    b = generate_scenes(config, "train", 20, scene_rng(config, "train"))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
