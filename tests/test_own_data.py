"""Training and evaluating on the user's own images: folders, .npy/.npz arrays, counts files."""

import json

import numpy as np
import pytest
from tiny import TINY_FLAGS

from airscene.cli import main
from airscene.config import DataConfig
from airscene.data.images import ImageError, load_image_dataset
from airscene.data.scenes import export_png, load_scenes

TINY_FLAGS = [*TINY_FLAGS, "--batch-size", "8", "--threads", "1"]


@pytest.fixture
def png_folder(tmp_path):
    scenes = load_scenes(DataConfig(n_train=30), "train")
    return export_png(scenes, tmp_path / "pngs"), scenes


def test_folder_with_counts_file(png_folder):
    folder, scenes = png_folder
    images, counts = load_image_dataset(folder, 50)
    assert images.dtype == np.uint8 and images.shape == (30, 50, 50)
    np.testing.assert_array_equal(images, scenes.images)  # 50x50 PNGs go on the canvas unchanged
    np.testing.assert_array_equal(counts, scenes.counts)  # counts.csv found beside the images
    (folder / "counts.csv").unlink()
    images, counts = load_image_dataset(folder, 50)  # then ground_truth.json
    np.testing.assert_array_equal(counts, scenes.counts)
    (folder / "ground_truth.json").unlink()
    assert load_image_dataset(folder, 50)[1] is None


def test_arrays_npy_npz_and_what_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.random((6, 100, 100)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    images, counts = load_image_dataset(tmp_path / "big.npy", 50)
    assert images.shape == (6, 50, 50) and counts is None

    x = (rng.random((5, 50, 50)) * 255).astype(np.uint8)
    np.savez(tmp_path / "data.npz", x=x, counts=np.array([0, 1, 2, 1, 0]))
    images, counts = load_image_dataset(tmp_path / "data.npz", 50)
    np.testing.assert_array_equal(images, x)
    assert counts.tolist() == [0, 1, 2, 1, 0]
    np.savez(tmp_path / "other.npz", images=x)
    assert load_image_dataset(tmp_path / "other.npz", 50, array_name="images")[0].shape == (
        5,
        50,
        50,
    )
    with pytest.raises(ImageError, match="no array 'x' .*images"):
        load_image_dataset(tmp_path / "other.npz", 50)

    objects = np.empty(2, dtype=object)
    objects[:] = [[1], [2, 3]]
    np.savez(tmp_path / "pickled.npz", x=x, y=objects)  # like Pyro's labels: needs pickle
    with pytest.raises(ImageError, match="pickle"):
        load_image_dataset(tmp_path / "pickled.npz", 50, array_name="y")
    assert load_image_dataset(tmp_path / "pickled.npz", 50)[0].shape == (
        5,
        50,
        50,
    )  # x alone is fine
    with pytest.raises(ImageError, match="expected a folder"):
        load_image_dataset(tmp_path / "notes.txt", 50)
    np.savez(tmp_path / "bad.npz", x=x, counts=np.array([1, 2]))
    with pytest.raises(ImageError, match="2 counts for 5 images"):
        load_image_dataset(tmp_path / "bad.npz", 50)


def test_train_and_eval_on_a_folder_of_pngs(png_folder, tmp_path, capsys):
    folder, _ = png_folder
    run = tmp_path / "run"
    flags = ["--steps", "4", "--log-every", "2", "--eval-every", "2", "--holdout-fraction", "0.2"]
    assert main(["train", "--run-dir", str(run), "--data", str(folder), *flags, *TINY_FLAGS]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    header, last = (
        rows[0].split(","),
        dict(zip(rows[0].split(","), rows[-1].split(","), strict=True)),
    )
    assert (
        "eval_count_accuracy" in header and last["eval_count_accuracy"] != ""
    )  # counts.csv turned it on
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["data"]["data_path"] == str(folder)

    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenes"] == 30 and 0 <= report["count_accuracy"] <= 1


def test_train_on_an_unlabelled_array(tmp_path):
    x = (np.random.default_rng(1).random((20, 50, 50)) * 255).astype(np.uint8)
    np.savez(tmp_path / "multi_mnist_uint8.npz", x=x)
    run = tmp_path / "run"
    flags = ["--steps", "3", "--log-every", "3", "--eval-every", "3"]
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(run),
                "--data",
                str(tmp_path / "multi_mnist_uint8.npz"),
                *flags,
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    last = (run / "metrics.csv").read_text().splitlines()[-1]
    assert last.split(",")[0] == "3"


def test_bad_data_path_is_a_one_line_error(tmp_path, capsys):
    assert (
        main(["train", "--run-dir", str(tmp_path / "r"), "--data", str(tmp_path / "missing.npz")])
        == 2
    )
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("airscene: error:")
    ]
    assert len(errors) == 1 and "missing.npz" in errors[0]
    assert not (tmp_path / "r").exists()  # nothing made for a run that could not start
