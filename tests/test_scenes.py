"""Multi-MNIST scene generation: distribution, geometry, determinism, splits, cache and export."""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chisquare

import airscene.data.scenes as scenes_module
from airscene.config import DataConfig, to_dict
from airscene.data.mnist import load_mnist
from airscene.data.scenes import (
    Scenes,
    cache_dir,
    export_png,
    generate_scenes,
    load_npz,
    load_scenes,
    save_npz,
    scene_rng,
)
from airscene.errors import AirsceneError

# ---------------------------------------------------------------------------------------------
# Independent reference helpers (written from the spec, not from the generator's code)


def ink_box(patch: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive, of the nonzero pixels of a 2-D patch."""
    ys, xs = np.nonzero(patch)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def present_mask(scenes: Scenes) -> np.ndarray:
    return np.arange(scenes.boxes.shape[1])[None, :] < scenes.counts[:, None]


def render(scenes: Scenes, digits: np.ndarray, canvas: int = 50) -> np.ndarray:
    """Redraw each scene from its digit indices and boxes (no rescaling): each 28x28 digit is
    placed so that its own ink box lands on the scene's box; overlaps are summed and clipped."""
    out = np.zeros((len(scenes), canvas, canvas), dtype=np.int64)
    for i in range(len(scenes)):
        for k in range(int(scenes.counts[i])):
            digit = digits[scenes.digit_index[i, k]]
            lx0, ly0, lx1, ly1 = ink_box(digit)
            x0, y0, x1, y1 = (int(v) for v in scenes.boxes[i, k])
            assert (x1 - x0, y1 - y0) == (lx1 - lx0, ly1 - ly0)
            cx, cy = x0 - lx0, y0 - ly0
            assert 0 <= cx <= canvas - 28 and 0 <= cy <= canvas - 28  # whole patch on canvas
            out[i, cy : cy + 28, cx : cx + 28] += digit
    return np.minimum(out, 255).astype(np.uint8)


def boxes_intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def intersecting_pairs(scenes: Scenes) -> int:
    total = 0
    for i in range(len(scenes)):
        k = int(scenes.counts[i])
        for p in range(k):
            for q in range(p + 1, k):
                total += boxes_intersect(scenes.boxes[i, p], scenes.boxes[i, q])
    return total


def make(config: DataConfig, split: str, n: int) -> Scenes:
    return generate_scenes(config, split, n, scene_rng(config, split))


def check_geometry(scenes: Scenes, canvas: int = 50) -> None:
    """Boxes on the canvas, all ink inside the union of a scene's boxes, every box tight."""
    present = present_mask(scenes)
    boxes = scenes.boxes.astype(np.int64)
    assert (boxes[~present] == -1).all()
    assert (scenes.labels[~present] == -1).all() and (scenes.digit_index[~present] == -1).all()
    live = boxes[present]
    assert (live[:, 0] >= 0).all() and (live[:, 1] >= 0).all()
    assert (live[:, 2] <= canvas).all() and (live[:, 3] <= canvas).all()
    assert (live[:, 2] > live[:, 0]).all() and (live[:, 3] > live[:, 1]).all()
    assert ((scenes.labels[present] >= 0) & (scenes.labels[present] <= 9)).all()
    for i in range(len(scenes)):
        covered = np.zeros((canvas, canvas), dtype=bool)
        for x0, y0, x1, y1 in boxes[i, : scenes.counts[i]]:
            covered[y0:y1, x0:x1] = True
            crop = scenes.images[i, y0:y1, x0:x1]
            # Tight: ink on the top, bottom, left and right edge of the box.
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        assert not (scenes.images[i] > 0)[~covered].any(), f"ink outside the boxes in scene {i}"
        if scenes.counts[i] == 0:
            assert not scenes.images[i].any()


# ---------------------------------------------------------------------------------------------
# Counts


def test_arrays_have_documented_shapes_and_dtypes() -> None:
    scenes = make(DataConfig(counts=(0, 1, 3)), "test", 50)
    assert len(scenes) == 50
    assert scenes.images.shape == (50, 50, 50) and scenes.images.dtype == np.uint8
    assert scenes.counts.shape == (50,) and scenes.counts.dtype == np.int64
    assert scenes.boxes.shape == (50, 3, 4) and scenes.boxes.dtype == np.int16
    assert scenes.labels.shape == (50, 3) and scenes.labels.dtype == np.int8
    assert scenes.digit_index.shape == (50, 3) and scenes.digit_index.dtype == np.int32
    head = scenes[:7]
    assert len(head) == 7 and np.array_equal(head.boxes, scenes.boxes[:7])


@pytest.mark.parametrize(
    ("counts", "probs"),
    [((0, 1, 2), None), ((0, 1, 2), (0.1, 0.3, 0.6)), ((0, 1, 3), (0.5, 0.25, 0.25))],
)
def test_counts_follow_requested_distribution(counts, probs) -> None:
    n = 6000
    config = DataConfig(counts=counts, count_probs=probs)
    scenes = make(config, "train", n)
    assert set(np.unique(scenes.counts)) == set(counts)
    observed = np.array([(scenes.counts == c).sum() for c in counts])
    expected = n * np.asarray(config.probabilities)
    assert observed.sum() == n
    assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)
    # And each frequency within 5 standard deviations of its expectation.
    p = np.asarray(config.probabilities)
    assert (np.abs(observed - expected) < 5 * np.sqrt(n * p * (1 - p))).all()


def test_a_skewed_distribution_is_not_uniform() -> None:
    """The chi-square check above can fail: uniform draws do not pass for skewed probabilities."""
    scenes = make(DataConfig(), "train", 6000)
    observed = np.bincount(scenes.counts, minlength=3)
    assert chisquare(observed, 6000 * np.array([0.1, 0.3, 0.6])).pvalue < 1e-6


@pytest.mark.parametrize("counts", [(0, 1, 3), (3,), (1,), (0,), (2,)])
def test_other_count_sets(counts) -> None:
    config = DataConfig(counts=counts)
    scenes = make(config, "test", 300)
    assert set(np.unique(scenes.counts)) == set(counts)
    assert scenes.boxes.shape == (300, max(counts), 4)
    present = present_mask(scenes)
    assert present.sum() == scenes.counts.sum()
    check_geometry(scenes)
    assert intersecting_pairs(scenes) == 0
    if max(counts) > 0:
        np.testing.assert_array_equal(render(scenes, load_mnist("test").images), scenes.images)


# ---------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize(
    "config",
    [
        DataConfig(),
        DataConfig(counts=(3,)),
        DataConfig(counts=(2,), overlap=True),
        DataConfig(counts=(1, 2), scale_range=(0.5, 1.5)),
    ],
    ids=["default", "three", "overlap", "scaled"],
)
def test_boxes_on_canvas_cover_all_ink_and_are_tight(config: DataConfig) -> None:
    check_geometry(make(config, "train", 400))


def test_box_is_the_placed_digits_ink_box() -> None:
    scenes = make(DataConfig(counts=(1, 2, 3)), "train", 400)
    digits = load_mnist("train").images
    for i in range(len(scenes)):
        for k in range(int(scenes.counts[i])):
            digit = digits[scenes.digit_index[i, k]]
            lx0, ly0, lx1, ly1 = ink_box(digit)
            x0, y0, x1, y1 = (int(v) for v in scenes.boxes[i, k])
            # Boxes are disjoint, so the crop holds this digit's ink and nothing else.
            np.testing.assert_array_equal(scenes.images[i, y0:y1, x0:x1], digit[ly0:ly1, lx0:lx1])
    np.testing.assert_array_equal(render(scenes, digits), scenes.images)


@pytest.mark.parametrize("counts", [(0, 1, 2), (3,)])
def test_no_two_boxes_intersect_without_overlap(counts) -> None:
    # (3,) with 1,000 train scenes of seed 0 is a regression case: a 3-digit scene is placed in
    # ~0.5% of rounds, and a fixed cap of 2,000 rounds used to fail here.
    scenes = make(DataConfig(counts=counts), "train", 1000)
    assert intersecting_pairs(scenes) == 0
    # Digits are spread over the whole canvas, not packed in one place.
    live = scenes.boxes[present_mask(scenes)].astype(int)
    assert live[:, 0].min() <= 5 and live[:, 2].max() >= 45
    assert live[:, 1].min() <= 5 and live[:, 3].max() >= 45


def test_overlap_mode_sums_and_clips() -> None:
    config = DataConfig(counts=(2,), overlap=True)
    scenes = make(config, "train", 1000)
    assert intersecting_pairs(scenes) > 100
    digits = load_mnist("train").images
    np.testing.assert_array_equal(render(scenes, digits), scenes.images)
    # Clipping (not uint8 wrap-around) happened somewhere: a raw sum above 255 shows as 255.
    raw = np.zeros((len(scenes), 50, 50), dtype=np.int64)
    for i in range(len(scenes)):
        for k in range(2):
            digit = digits[scenes.digit_index[i, k]]
            lx0, ly0, _, _ = ink_box(digit)
            cx, cy = int(scenes.boxes[i, k, 0]) - lx0, int(scenes.boxes[i, k, 1]) - ly0
            raw[i, cy : cy + 28, cx : cx + 28] += digit
    saturated = raw > 255
    assert saturated.sum() > 0
    assert (scenes.images[saturated] == 255).all()


def test_scale_range_gives_varied_sizes_within_range() -> None:
    low, high = 0.5, 1.5
    config = DataConfig(counts=(1, 2), scale_range=(low, high))
    scenes = make(config, "test", 600)
    digits = load_mnist("test").images
    present = present_mask(scenes)
    boxes = scenes.boxes[present].astype(int)
    index = scenes.digit_index[present]
    original = np.array([ink_box(digits[j]) for j in index])
    h0, w0 = original[:, 3] - original[:, 1], original[:, 2] - original[:, 0]
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    # Each digit is scaled by one factor in [low, high] (+2 px for antialiasing spill).
    assert (h >= np.floor(h0 * low) - 1).all() and (h <= np.ceil(h0 * high) + 2).all()
    assert (w >= np.floor(w0 * low) - 1).all() and (w <= np.ceil(w0 * high) + 2).all()
    ratio = h / h0
    assert ratio.min() < 0.65 and ratio.max() > 1.35, (ratio.min(), ratio.max())
    assert np.std(ratio) > 0.2
    assert h.max() <= round(28 * high) and w.max() <= round(28 * high)
    check_geometry(scenes)
    assert intersecting_pairs(scenes) == 0
    # Without scale_range every digit keeps its size exactly.
    plain = make(DataConfig(counts=(1, 2)), "test", 200)
    p = present_mask(plain)
    plain_boxes = plain.boxes[p].astype(int)
    plain_orig = np.array([ink_box(digits[j]) for j in plain.digit_index[p]])
    np.testing.assert_array_equal(
        plain_boxes[:, 2:] - plain_boxes[:, :2], plain_orig[:, 2:] - plain_orig[:, :2]
    )


def test_impossible_config_raises_clear_error() -> None:
    config = DataConfig(counts=(6,), canvas_size=50, overlap=False)
    with pytest.raises(
        AirsceneError, match=r"could not place 6 digits overlapping at most 0 .*--overlap"
    ):
        make(config, "test", 3)
    # The same counts are fine once overlap is allowed.
    assert (make(DataConfig(counts=(6,), overlap=True), "test", 3).counts == 6).all()


def test_canvas_smaller_than_a_digit_raises_clear_error() -> None:
    with pytest.raises(AirsceneError, match=r"20px canvas cannot hold a 28x28 MNIST digit"):
        make(DataConfig(canvas_size=20, counts=(1,), overlap=True), "test", 5)
    # Shrunk digits fit on a small canvas.
    small = make(DataConfig(canvas_size=20, counts=(1,), scale_range=(0.5, 0.7)), "test", 50)
    assert small.images.shape == (50, 20, 20)
    check_geometry(small, canvas=20)


def test_other_canvas_size() -> None:
    scenes = make(DataConfig(canvas_size=64, counts=(3,)), "test", 200)
    assert scenes.images.shape == (200, 64, 64)
    check_geometry(scenes, canvas=64)
    assert intersecting_pairs(scenes) == 0
    np.testing.assert_array_equal(
        render(scenes, load_mnist("test").images, canvas=64), scenes.images
    )


# ---------------------------------------------------------------------------------------------
# Determinism and splits


def _equal(a: Scenes, b: Scenes) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("images", "counts", "boxes", "labels", "digit_index")
    )


def test_same_seed_same_scenes_different_seed_different() -> None:
    config = DataConfig()
    first, second = make(config, "train", 300), make(config, "train", 300)
    assert _equal(first, second)
    other = make(DataConfig(seed=1), "train", 300)
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.digit_index, other.digit_index)
    # Train and test use independent streams of the same seed.
    assert not np.array_equal(make(config, "test", 300).counts, first.counts)


def test_test_scenes_use_test_digits_and_train_scenes_train_digits() -> None:
    config = DataConfig(counts=(1, 2))
    train_digits, test_digits = load_mnist("train"), load_mnist("test")
    test = make(config, "test", 500)
    present = present_mask(test)
    index = test.digit_index[present]
    assert index.min() >= 0 and index.max() < 10_000
    np.testing.assert_array_equal(test.labels[present], test_digits.labels[index])
    np.testing.assert_array_equal(render(test, test_digits.images), test.images)
    # The same indices into the train digits would give other digits.
    assert (train_digits.labels[index] != test.labels[present]).mean() > 0.5

    train = make(config, "train", 500)
    present = present_mask(train)
    index = train.digit_index[present]
    assert index.max() >= 10_000  # draws from all 60,000 train digits
    np.testing.assert_array_equal(train.labels[present], train_digits.labels[index])
    np.testing.assert_array_equal(render(train, train_digits.images), train.images)


def test_user_mnist_dir_is_used(fake_mnist_dir: Path) -> None:
    config = DataConfig(counts=(1, 2), mnist_dir=str(fake_mnist_dir))
    scenes = make(config, "test", 200)
    assert scenes.digit_index.max() < 200  # the fake test split has 200 digits
    np.testing.assert_array_equal(render(scenes, load_mnist("test").images[:200]), scenes.images)


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_dir_follows_environment(isolated_cache: Path) -> None:
    assert cache_dir() == isolated_cache / "scenes"


def test_cache_hit_returns_identical_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    config = DataConfig(n_train=400)
    assert not cache_dir().exists()
    first = load_scenes(config, "train")
    files = list(cache_dir().glob("train-400-*.npz"))
    assert len(files) == 1
    assert _equal(load_npz(files[0]), first)
    assert _equal(first, make(config, "train", 400))  # the cache holds exactly the generated set

    def no_generation(*args, **kwargs):
        raise AssertionError("generate_scenes called on a cache hit")

    before = files[0].stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(scenes_module, "generate_scenes", no_generation)
        second = load_scenes(config, "train")
    assert _equal(first, second)
    assert files[0].stat().st_mtime_ns == before
    # n overrides the config's split size, and is its own cache entry.
    assert len(load_scenes(config, "train", n=50)) == 50
    assert len(list(cache_dir().glob("train-*.npz"))) == 2


def test_cache_key_separates_configs_not_mnist_location(fake_mnist, tmp_path: Path) -> None:
    load_scenes(DataConfig(), "test", n=100)
    load_scenes(DataConfig(seed=3), "test", n=100)
    load_scenes(DataConfig(counts=(1,)), "test", n=100)
    assert len(list(cache_dir().glob("test-100-*.npz"))) == 3
    load_scenes(DataConfig(), "test", n=100)
    assert len(list(cache_dir().glob("test-100-*.npz"))) == 3
    # Two directories with the same MNIST files share a cache entry; the embedded copy does not.
    twin = fake_mnist.write(tmp_path.resolve() / "twin")
    a = load_scenes(DataConfig(mnist_dir=str(fake_mnist.dir)), "test", n=100)
    assert len(list(cache_dir().glob("test-100-*.npz"))) == 4
    b = load_scenes(DataConfig(mnist_dir=str(twin)), "test", n=100)
    assert len(list(cache_dir().glob("test-100-*.npz"))) == 4
    assert _equal(a, b)


def test_use_cache_false_writes_nothing() -> None:
    scenes = load_scenes(DataConfig(), "test", n=30, use_cache=False)
    assert len(scenes) == 30
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "bitflip", "missing_key"])
def test_corrupt_cache_file_is_regenerated_with_warning(damage: str) -> None:
    config = DataConfig()
    first = load_scenes(config, "test", n=120)
    (path,) = cache_dir().glob("test-120-*.npz")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not an npz file at all")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(flipped))
    else:
        np.savez(path, images=first.images)
    with pytest.warns(UserWarning, match=r"regenerating scenes: .*test-120-"):
        again = load_scenes(config, "test", n=120)
    assert _equal(first, again)
    # The cache file was rewritten and is good again: the next call is silent.
    assert _equal(load_npz(path), first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _equal(load_scenes(config, "test", n=120), first)


def test_load_npz_errors_are_airscene_errors(tmp_path: Path) -> None:
    with pytest.raises(AirsceneError, match="no such scenes file"):
        load_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AirsceneError, match="not a readable airscene scenes file"):
        load_npz(bad)


def test_save_npz_round_trip_with_config(tmp_path: Path) -> None:
    config = DataConfig(counts=(0, 1, 3))
    scenes = make(config, "test", 40)
    path = tmp_path / "deep" / "dir" / "s.npz"
    save_npz(scenes, path, config)
    assert _equal(load_npz(path), scenes)
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["config_json"])) == to_dict(config)
    assert not list(path.parent.glob(".tmp-*"))  # no temporary file left behind


def test_cache_is_faster_than_generation() -> None:
    config = DataConfig(scale_range=(0.6, 1.2))  # resizing makes generation measurably slow
    started = time.perf_counter()
    first = load_scenes(config, "test", n=1500)
    generate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = load_scenes(config, "test", n=1500)
    cached_seconds = time.perf_counter() - started
    assert _equal(first, second)
    assert cached_seconds < generate_seconds


# ---------------------------------------------------------------------------------------------
# PNG export


def test_export_png_files_match_arrays(tmp_path: Path) -> None:
    config = DataConfig(counts=(0, 1, 3))
    scenes = make(config, "test", 25)
    out = export_png(scenes, tmp_path / "pngs", config)
    assert out == tmp_path / "pngs"
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(25)]
    for i, name in enumerate(names):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (50, 50)
            np.testing.assert_array_equal(np.asarray(image), scenes.images[i])

    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["config"] == to_dict(config)
    assert [r["file"] for r in truth["images"]] == names
    for i, record in enumerate(truth["images"]):
        assert record["count"] == scenes.counts[i]
        assert len(record["objects"]) == scenes.counts[i]
        for k, obj in enumerate(record["objects"]):
            assert obj["box"] == scenes.boxes[i, k].tolist()
            assert obj["label"] == scenes.labels[i, k]

    with open(out / "counts.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["file", "count"]
    assert rows[1:] == [[name, str(int(c))] for name, c in zip(names, scenes.counts, strict=True)]


def test_export_png_refuses_non_empty_directory(tmp_path: Path) -> None:
    scenes = make(DataConfig(), "test", 5)
    out = tmp_path / "pngs"
    out.mkdir()
    export_png(scenes, out)  # an existing empty directory is fine
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    other = make(DataConfig(seed=9), "test", 5)
    with pytest.raises(AirsceneError, match="exists and is not empty"):
        export_png(other, out)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(AirsceneError):
        export_png(scenes, a_file)
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["config"] is None


def test_cache_key_ignores_fields_about_own_data():
    import dataclasses

    from airscene.data.scenes import cache_key

    base = DataConfig(n_train=10)
    other = dataclasses.replace(base, holdout_fraction=0.5, data_array="images")
    assert cache_key(base, "train") == cache_key(other, "train")
    assert cache_key(base, "train") != cache_key(dataclasses.replace(base, seed=1), "train")
