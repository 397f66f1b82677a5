"""3D scenes: seeded, valid (on the floor, apart), boxes of visible pixels, PNG export, CLI."""

import json
import math

import numpy as np
import pytest

from airscene.cli import main
from airscene.data.scenes3d import load_scenes3d, make_scenes3d
from airscene.render3d import SHAPES, SceneSpace, read_scenes, render_scenes


@pytest.fixture(scope="module")
def scenes():
    return make_scenes3d(120, "train", seed=4)


def test_scenes_are_seeded_and_splits_differ(scenes):
    again = make_scenes3d(120, "train", seed=4)
    assert np.array_equal(scenes.images, again.images) and np.array_equal(scenes.boxes, again.boxes)
    test = make_scenes3d(120, "test", seed=4)
    assert not np.array_equal(scenes.positions, test.positions)


def test_scenes_are_valid_descriptions(scenes):
    space = SceneSpace()
    assert set(np.unique(scenes.counts)) == {0, 1, 2, 3}
    assert set(np.unique(scenes.shapes[scenes.shapes >= 0])) == {0, 1, 2}
    for i, objects in enumerate(scenes.descriptions()):
        assert len(objects) == scenes.counts[i]
        assert np.all(scenes.shapes[i, len(objects) :] == -1)
        for j, a in enumerate(objects):
            assert all(abs(v) <= space.floor_extent for v in a.position)
            assert 0 <= a.rotation_deg < 360
            for b in objects[j + 1 :]:
                assert math.dist(a.position, b.position) >= space.min_centre_distance
    # They render back to the same images (the ground truth describes the image).
    rendered = np.round(render_scenes(scenes.descriptions()).numpy() * 255).astype(np.uint8)
    assert np.array_equal(rendered, scenes.images)


def test_boxes_hold_each_objects_visible_pixels(scenes):
    floor = np.median(scenes.images[scenes.counts == 0])
    for i in range(len(scenes)):
        for j in range(int(scenes.counts[i])):
            x0, y0, x1, y1 = scenes.boxes[i, j]
            if x1 == 0:  # hidden entirely behind another object
                continue
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            inside = scenes.images[i, y0:y1, x0:x1].astype(int)
            assert np.abs(inside - floor).max() > 40  # the object's pixels are in its box
    # Every pixel that differs from the floor lies in some object's box (or on its soft edge, a
    # pixel around it: the box holds the pixels where the object is seen by more than half).
    for i in np.nonzero(scenes.counts > 0)[0][:20]:
        ink = np.abs(scenes.images[i].astype(int) - floor) > 40
        covered = np.zeros_like(ink)
        for x0, y0, x1, y1 in scenes.boxes[i, : scenes.counts[i]]:
            covered[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        assert not (ink & ~covered).any()


def test_cached_scenes_are_read_back_equal(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRSCENE_CACHE", str(tmp_path))
    first = load_scenes3d(10, "test", seed=1)
    assert list(tmp_path.rglob("scenes3d-test-10-*.npz"))
    second = load_scenes3d(10, "test", seed=1)
    assert np.array_equal(first.images, second.images) and np.array_equal(
        first.positions, second.positions
    )


def test_cli_data_make_scenes3d_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIRSCENE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "scenes3d"
    assert main(["data", "make", "--kind", "scenes3d", "--n", "12", "--split", "train",
                 "--format", "png", "--out", str(out)]) == 0  # fmt: skip
    truth = json.loads((out / "train" / "ground_truth.json").read_text())
    assert len(truth["images"]) == 12 and truth["scene_space"]["shapes"] == list(SHAPES)
    record = next(r for r in truth["images"] if r["count"] > 0)
    assert (
        set(record) == {"file", "count", "objects"} and (out / "train" / record["file"]).is_file()
    )
    assert set(record["objects"][0]) == {"shape", "position", "rotation_deg", "box"}
    # What data make describes, render3d accepts.
    read_scenes({"scenes": [{"objects": r["objects"]} for r in truth["images"]]}, SceneSpace())
    assert (out / "train" / "counts.csv").read_text().startswith("file,count")
    # Multi-MNIST-only flags and counts over 3 are one-line errors.
    capsys.readouterr()
    assert main(["data", "make", "--kind", "scenes3d", "--n", "2", "--overlap"]) == 2
    assert "--overlap: not a setting of --kind scenes3d" in capsys.readouterr().err
    assert main(["data", "make", "--kind", "scenes3d", "--n", "2", "--counts", "0,4"]) == 2
    assert main(["data", "make", "--kind", "scenes3d", "--n", "12", "--split", "train",
                 "--format", "png", "--out", str(out)]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
