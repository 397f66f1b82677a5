"""Multi-MNIST scenes (Eslami et al. 2016, sec. 3.1): n MNIST digits on a blank 50x50 canvas.

Generation is vectorised over scenes (one numpy pass per object slot), seeded through an
explicit ``np.random.Generator``, and cached on disk as a pickle-free ``.npz`` keyed by
everything that determines the result (config, split, size, MNIST files, generator version).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from airscene.config import OWN_DATA_FIELDS, DataConfig, RunConfig, to_dict
from airscene.data.family import SceneFamily
from airscene.data.mnist import load_mnist
from airscene.errors import AirsceneError

# Bump when the generator's output for a given config changes: old caches are then ignored.
GENERATOR_VERSION = 1
_SPLIT_STREAM = {"train": 0, "test": 1}
# Give up once this many placement rounds in a row place no scene. Not a cap on all rounds: a
# 3-digit scene is placed in only ~0.5% of rounds, so among 10,000 scenes one often needs
# over 2,000 rounds; a stall of 5,000 rounds has odds ~e^-25 unless the config is impossible.
_STALL_ROUNDS = 5_000
_REDRAW_DIGITS_EVERY = 10
# Placement "digit" redraws every clashing digit each round: digits that have not found room
# in this many rounds (new digits every hundred) do not fit the canvas.
_DIGIT_ROUNDS = 1_000


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes with their ground truth.

    ``images`` (B, H, W) uint8; ``counts`` (B,) int64; per object slot k < max_count:
    ``boxes`` (B, K, 4) int16 ink box ``x0, y0, x1, y1`` in canvas pixels (end exclusive),
    ``labels`` (B, K) int8 digit class, ``digit_index`` (B, K) int32 index into the MNIST
    split; empty slots hold -1.
    """

    images: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    digit_index: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice | np.ndarray) -> Scenes:
        return Scenes(
            images=self.images[index],
            counts=self.counts[index],
            boxes=self.boxes[index],
            labels=self.labels[index],
            digit_index=self.digit_index[index],
        )

    @classmethod
    def unlabelled(cls, images: np.ndarray, counts: np.ndarray | None = None) -> Scenes:
        """Images without boxes or labels (e.g. a user's own), with counts if known (else -1)."""
        n = len(images)
        known = counts if counts is not None else np.full(n, -1, dtype=np.int64)
        return cls(
            images=images,
            counts=np.asarray(known, dtype=np.int64),
            boxes=np.zeros((n, 0, 4), dtype=np.int16),
            labels=np.zeros((n, 0), dtype=np.int8),
            digit_index=np.zeros((n, 0), dtype=np.int32),
        )


def _ink_boxes(patches: np.ndarray) -> np.ndarray:
    """Ink box (x0, y0, x1, y1), end exclusive, of each (M, S, S) patch; blank patches get the full box."""
    ink = patches > 0
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (M, S) each
    size = patches.shape[1]
    has_ink = rows.any(axis=1)
    y0 = np.where(has_ink, rows.argmax(axis=1), 0)
    y1 = np.where(has_ink, size - rows[:, ::-1].argmax(axis=1), size)
    x0 = np.where(has_ink, cols.argmax(axis=1), 0)
    x1 = np.where(has_ink, size - cols[:, ::-1].argmax(axis=1), size)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _resize(patches: np.ndarray, size: int) -> np.ndarray:
    """Resize (M, 28, 28) uint8 digits to (M, size, size) with antialiased bilinear filtering."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(patches.astype(np.float32)).unsqueeze(1)
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def _patches(
    images: np.ndarray,
    digit_index: np.ndarray,
    sizes: np.ndarray,
    rows: np.ndarray | None = None,
    present_rows: np.ndarray | None = None,
):
    """Yield ``(size, flat slot ids, patches)`` per digit size, for all slots of ``rows`` or
    for the present slots (``present_rows`` mask); grouping by size keeps resizing vectorised."""
    k_max = digit_index.shape[1]
    if present_rows is not None:
        slots = np.flatnonzero(present_rows.ravel())
    else:
        slots = (rows[:, None] * k_max + np.arange(k_max)).ravel()
    slot_sizes = sizes.ravel()[slots]
    for size in np.unique(slot_sizes):
        group = slots[slot_sizes == size]
        patches = images[digit_index.ravel()[group]]
        same = size == images.shape[-1]
        yield int(size), group, (patches if same else _resize(patches, int(size)))


def _boxes_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether boxes (..., 4) intersect in a region of positive area (touching edges do not)."""
    return (
        (a[..., 0] < b[..., 2])
        & (b[..., 0] < a[..., 2])
        & (a[..., 1] < b[..., 3])
        & (b[..., 1] < a[..., 3])
    )


def _boxes_clash(a: np.ndarray, b: np.ndarray, max_overlap: float) -> np.ndarray:
    """Whether boxes (..., 4) overlap by more than ``max_overlap`` of the smaller one's area
    (0: any intersection of positive area clashes; touching edges do not)."""
    if max_overlap == 0:
        return _boxes_intersect(a, b)
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    shared = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return shared > max_overlap * np.minimum(area_a, area_b)


def _crowded(config: DataConfig, scenes: int) -> str:
    return (
        f"could not place {config.max_count} digits overlapping at most {config.max_overlap:g} "
        f"on a {config.canvas_size}px canvas for {scenes} scenes; allow more overlap "
        "(--max-overlap, --overlap), fewer digits or a larger canvas"
    )


def generate_scenes(config: DataConfig, split: str, n: int, rng: np.random.Generator) -> Scenes:
    """Draw ``n`` scenes for ``split`` ('train' digits or 'test' digits) with generator ``rng``."""
    mnist = load_mnist(split, config.mnist_dir)
    digits = mnist.images  # (M, 28, 28); shrunk once here where every digit has one size
    canvas = config.canvas_size
    k_max = config.max_count
    fixed_size = config.digit_size or 28
    if config.scale_range is None and k_max > 0 and canvas < fixed_size:
        # Placement assumes the whole patch fits; otherwise indices run off the canvas.
        raise AirsceneError(
            f"a {canvas}px canvas cannot hold a {fixed_size}x{fixed_size} MNIST digit; use "
            "--canvas-size >= that or shrink the digits with --digit-size or --scale-range"
        )

    counts = rng.choice(np.asarray(config.counts), size=n, p=np.asarray(config.probabilities))
    present = np.arange(k_max)[None, :] < counts[:, None]  # (B, K)
    digit_index = np.zeros((n, k_max), dtype=np.int64)
    sizes = np.full((n, k_max), fixed_size, dtype=np.int64)
    if config.digit_size is not None and config.digit_size != 28:
        digits = _resize(digits, config.digit_size)
    local_boxes = np.zeros((n, k_max, 4), dtype=np.int64)  # ink box inside the digit's patch
    corners = np.zeros((n, k_max, 2), dtype=np.int64)  # (x, y) of each patch's top-left pixel

    def draw_digits(rows: np.ndarray) -> None:
        digit_index[rows] = rng.integers(0, len(mnist.images), size=(len(rows), k_max))
        if config.scale_range is not None:
            factors = rng.uniform(*config.scale_range, size=(len(rows), k_max))
            sizes[rows] = np.clip(np.round(28 * factors).astype(np.int64), 1, canvas)
        for _size, slots, patches in _patches(digits, digit_index, sizes, rows):
            local_boxes.reshape(-1, 4)[slots] = _ink_boxes(patches)

    def draw_corners(rows: np.ndarray) -> None:
        # Uniform over positions that keep the whole patch inside the canvas.
        room = canvas - sizes[rows] + 1  # (R, K)
        corners[rows] = (rng.random((len(rows), k_max, 2)) * room[..., None]).astype(np.int64)

    def clashing(pending: np.ndarray) -> np.ndarray:
        """(P, K): the digits of scenes ``pending`` whose box clashes with an earlier digit's."""
        boxes = local_boxes[pending] + np.tile(corners[pending], 2)
        moved = np.zeros((len(pending), k_max), dtype=bool)
        for i, j in pairs:
            both = present[pending, i] & present[pending, j]
            moved[:, j] |= both & _boxes_clash(boxes[:, i], boxes[:, j], config.max_overlap)
        return moved

    def place_whole_scenes(pending: np.ndarray) -> None:
        """Placement "scene": a scene whose ink boxes clash is redrawn whole (uniform over the
        valid placements of its digits); a scene still stuck after a while also redraws its
        digits, since some triples of wide digits cannot share a 50x50 canvas at all."""
        stalled = 0
        for round_ in itertools.count():
            if round_ % _REDRAW_DIGITS_EVERY == 0:
                draw_digits(pending)
            draw_corners(pending)
            if config.overlap or not pairs:
                break
            clash = clashing(pending).any(1)
            stalled = stalled + 1 if clash.all() else 0
            pending = pending[clash]
            if len(pending) == 0:
                break
            if stalled >= _STALL_ROUNDS:
                raise AirsceneError(_crowded(config, len(pending)))

    def place_each_digit(pending: np.ndarray) -> None:
        """Placement "digit": each digit that clashes with an earlier one is redrawn alone."""
        draw_digits(pending)
        draw_corners(pending)
        for round_ in itertools.count(1):
            moved = clashing(pending)
            keep = moved.any(1)
            pending, moved = pending[keep], moved[keep]
            if len(pending) == 0:
                break
            if round_ >= _DIGIT_ROUNDS:
                raise AirsceneError(_crowded(config, len(pending)))
            if round_ % (10 * _REDRAW_DIGITS_EVERY) == 0:  # stuck: other digits, other places
                draw_digits(pending)
                draw_corners(pending)
                continue
            scene, slot = np.nonzero(moved)
            room = canvas - sizes[pending[scene], slot] + 1
            fresh = (rng.random((len(scene), 2)) * room[:, None]).astype(np.int64)
            corners[pending[scene], slot] = fresh

    pairs = [(i, j) for i in range(k_max) for j in range(i + 1, k_max)]
    if config.placement == "digit" and not config.overlap:
        place_each_digit(np.arange(n))
    else:
        place_whole_scenes(np.arange(n))

    boxes = np.where(present[..., None], local_boxes + np.tile(corners, 2), -1)
    accumulated = np.zeros((n, canvas, canvas), dtype=np.uint16)
    flat_corners = corners.reshape(-1, 2)
    for size, slots, patches in _patches(digits, digit_index, sizes, present_rows=present):
        scene, slot_k = slots // k_max, slots % k_max
        offsets = np.arange(size)
        rows = (flat_corners[slots, 1, None] + offsets)[:, :, None]  # (M, S, 1)
        cols = (flat_corners[slots, 0, None] + offsets)[:, None, :]  # (M, 1, S)
        # Drawn one object slot at a time: each scene then appears once per assignment,
        # so no index repeats and a plain fancy-indexed += is exact.
        for k in np.unique(slot_k):
            m = slot_k == k
            accumulated[scene[m, None, None], rows[m], cols[m]] += patches[m]
    images = add_clutter(np.minimum(accumulated, 255).astype(np.uint8), config.clutter, rng)

    return Scenes(
        images=images,
        counts=counts.astype(np.int64),
        boxes=boxes.astype(np.int16),
        labels=np.where(present, mnist.labels[digit_index], -1).astype(np.int8),
        digit_index=np.where(present, digit_index, -1).astype(np.int32),
    )


# SuPAIR's (Stelzner et al. 2019) cluttered variants of Multi-MNIST: the image scaled to
# 0.8 x + 0.1 before noise of this sd, and grid lines this bright every this many pixels.
NOISE_SD = 0.2
GRID_INTENSITY = 0.4
GRID_SPACING = 5


def add_clutter(images: np.ndarray, clutter: str, rng: np.random.Generator) -> np.ndarray:
    """``images`` (n, H, W) uint8 with ``clutter`` under their digits, drawn with ``rng`` after
    the digits (so a seed's digits are the same with and without it): ``noise``: 0.8 x + 0.1
    plus Gaussian noise of sd ``NOISE_SD``, clipped to [0, 1]; ``grid``: horizontal and vertical
    lines of ``GRID_INTENSITY`` every ``GRID_SPACING`` px from a random phase per image, a
    pixel the brighter of line and ink; ``mixed``: each image one of none, noise and grid."""
    if clutter == "none":
        return images
    if clutter == "mixed":  # each scene clean, noisy or over grid lines, equally often
        which = rng.integers(0, 3, size=len(images))
        mixed = images.copy()
        for code, kind in ((1, "noise"), (2, "grid")):
            mixed[which == code] = add_clutter(images[which == code], kind, rng)
        return mixed
    x = images.astype(np.float32) / 255
    n, height, width = images.shape
    if clutter == "noise":
        noise = rng.normal(0.0, NOISE_SD, size=x.shape).astype(np.float32)
        x = np.clip(0.8 * x + 0.1 + noise, 0.0, 1.0)
    elif clutter == "grid":
        phase = rng.integers(0, GRID_SPACING, size=(n, 2))
        rows = (np.arange(height)[None, :] - phase[:, 1:]) % GRID_SPACING == 0  # (n, H)
        cols = (np.arange(width)[None, :] - phase[:, :1]) % GRID_SPACING == 0  # (n, W)
        lines = rows[:, :, None] | cols[:, None, :]
        x = np.where(lines, np.maximum(x, GRID_INTENSITY), x)
    else:
        raise AirsceneError(f"unknown clutter {clutter!r} (known: none, noise, grid)")
    return np.round(x * 255).astype(np.uint8)


def scene_rng(config: DataConfig, split: str) -> np.random.Generator:
    """The generator for ``split``: train and test draw from independent streams of ``config.seed``."""
    return np.random.default_rng(np.random.SeedSequence([config.seed, _SPLIT_STREAM[split]]))


def split_size(config: DataConfig, split: str) -> int:
    return config.n_train if split == "train" else config.n_test


def cache_dir() -> Path:
    """Where scenes are cached: ``$AIRSCENE_CACHE`` or ``~/.cache/airscene``."""
    root = os.environ.get("AIRSCENE_CACHE") or Path.home() / ".cache" / "airscene"
    return Path(root) / "scenes"


def cache_key(config: DataConfig, split: str) -> str:
    """Digest of everything that determines the scenes of ``split``."""
    fields = to_dict(config)
    fields.pop("mnist_dir")  # the files' content counts, not where they lie
    fields.pop("kind")  # the generator reads the other fields only: a kind is their defaults
    later_fields = (
        ("max_overlap", 0.0),
        ("digit_size", None),
        ("placement", "scene"),
        ("clutter", "none"),
    )
    for later, default in later_fields:
        if fields[later] == default:  # fields added later keep the key of scenes made before
            fields.pop(later)
    fields.pop("n_train" if split == "test" else "n_test")
    for own_data_field in OWN_DATA_FIELDS:
        fields.pop(own_data_field)
    fields["split"] = split
    fields["mnist"] = load_mnist(split, config.mnist_dir).fingerprint
    fields["generator_version"] = GENERATOR_VERSION
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def save_npz(scenes: Scenes, path: Path, config: DataConfig | None = None) -> None:
    """Write scenes as an uncompressed ``.npz`` (no pickled objects), atomically."""
    arrays = {
        "images": scenes.images,
        "counts": scenes.counts,
        "boxes": scenes.boxes,
        "labels": scenes.labels,
        "digit_index": scenes.digit_index,
    }
    if config is not None:
        arrays["config_json"] = np.array(json.dumps(to_dict(config)))
    write_npz(path, arrays)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an uncompressed ``.npz`` at ``path``, atomically (written beside, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


T = TypeVar("T")


def cached(
    path: Path | None, load: Callable[[Path], T], make: Callable[[], T], save: Callable[[T], None]
) -> T:
    """What ``load`` reads from the cache file ``path``, or else what ``make`` makes, then saved
    there by ``save`` (``path`` None: no cache). An unreadable cache file is regenerated, and a
    cache that cannot be written is not fatal: the data is in memory."""
    if path is not None and path.is_file():
        try:
            return load(path)
        except AirsceneError as error:
            warnings.warn(f"regenerating scenes: {error}", stacklevel=3)
    value = make()
    if path is not None:
        try:
            save(value)
        except OSError as error:
            warnings.warn(f"could not cache scenes at {path}: {error}", stacklevel=3)
    return value


def load_npz(path: str | Path) -> Scenes:
    """Read scenes written by ``save_npz``; a missing or malformed file raises ``AirsceneError``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return Scenes(
                images=data["images"],
                counts=data["counts"],
                boxes=data["boxes"],
                labels=data["labels"],
                digit_index=data["digit_index"],
            )
    except FileNotFoundError:
        raise AirsceneError(f"{path}: no such scenes file") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        # A truncated or bit-flipped .npz raises BadZipFile (not an OSError); an empty one EOFError.
        raise AirsceneError(f"{path}: not a readable airscene scenes file ({error})") from None


def load_scenes(
    config: DataConfig, split: str = "train", n: int | None = None, use_cache: bool = True
) -> Scenes:
    """The scenes of ``split`` for ``config`` (``n`` overrides the config's split size).

    Generated once, then read back from the on-disk cache, so every call with the same
    arguments returns identical arrays.
    """
    if split not in _SPLIT_STREAM:
        raise AirsceneError(f"split must be 'train' or 'test', got {split!r}")
    if n is not None:
        field = "n_train" if split == "train" else "n_test"
        config = dataclasses.replace(config, **{field: n})
    size = split_size(config, split)
    path = cache_dir() / f"{split}-{size}-{cache_key(config, split)[:20]}.npz"
    return cached(
        path if use_cache else None,
        load=load_npz,
        make=lambda: generate_scenes(config, split, size, scene_rng(config, split)),
        save=lambda scenes: save_npz(scenes, path, config),
    )


def ground_truth_records(scenes: Scenes, names: list[str]) -> list[dict]:
    """One JSON-ready record per scene: file name, count, and each object's box and label."""
    records = []
    for i, name in enumerate(names):
        k = int(scenes.counts[i])
        objects = [
            {"box": [int(v) for v in scenes.boxes[i, j]], "label": int(scenes.labels[i, j])}
            for j in range(k)
        ]
        records.append({"file": name, "count": k, "objects": objects})
    return records


def export_png(scenes: Scenes, out_dir: str | Path, config: DataConfig | None = None) -> Path:
    """Write each scene as an 8-bit greyscale PNG, plus ``ground_truth.json`` and ``counts.csv``.

    Refuses a non-empty ``out_dir`` so nothing already there is overwritten.
    """
    return write_png_scenes(
        scenes.images,
        scenes.counts,
        out_dir,
        lambda names: {
            "config": to_dict(config) if config else None,
            "images": ground_truth_records(scenes, names),
        },
    )


def write_png_scenes(
    images: np.ndarray, counts: np.ndarray, out_dir: str | Path, truth: Callable[[list[str]], dict]
) -> Path:
    """``images`` (n, H, W) uint8 as ``00000.png``, ... in ``out_dir``, with ``counts.csv`` and
    ``ground_truth.json`` (``truth`` of the file names); refuses a non-empty ``out_dir``."""
    from PIL import Image

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AirsceneError(f"{out}: exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images) - 1)))
    names = [f"{i:0{width}d}.png" for i in range(len(images))]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(out / name)
    (out / "ground_truth.json").write_text(json.dumps(truth(names), indent=1))
    with open(out / "counts.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "count"])
        writer.writerows((name, int(c)) for name, c in zip(names, counts, strict=True))
    return out


class MultiMnist(SceneFamily):
    """The paper's Multi-MNIST scenes: MNIST digits placed on a blank canvas."""

    kind = "multi-mnist"
    title = "Multi-MNIST: ink boxes and labels"

    def preset(self) -> RunConfig:
        return RunConfig()

    def load(self, config: DataConfig, split: str, n: int | None = None) -> Scenes:
        return load_scenes(config, split, n=n)

    def export_png(self, scenes: Scenes, out_dir: Path, config: DataConfig) -> Path:
        return export_png(scenes, out_dir, config)

    def save_npz(self, scenes: Scenes, path: Path, config: DataConfig) -> None:
        save_npz(scenes, path, config)

    def captions(self, scenes: Scenes) -> list[str]:
        return [
            f"n={count}: " + " ".join(str(int(label)) for label in labels[:count])
            for labels, count in zip(scenes.labels, scenes.counts, strict=True)
        ]


MULTI_MNIST = MultiMnist()


class ClutteredMnist(MultiMnist):
    """The paper's scenes with clutter under the digits (``DataConfig.clutter``): SuPAIR's noisy
    and grid-line variants, on which it measured AIR's count accuracy at about 0.

    The preset trains DAIR over a learned background (``airscene.background``): the paper's
    p(x | z) has no place for the clutter but objects, and plain AIR with the background fails
    to go past one object on the grid lines (``results/clutter/findings.md``)."""

    def __init__(self, kind: str, clutter: str, title: str) -> None:
        self.kind, self.clutter, self.title = kind, clutter, title

    def preset(self) -> RunConfig:
        run = RunConfig()
        data = dataclasses.replace(run.data, kind=self.kind, clutter=self.clutter)
        model = dataclasses.replace(run.model, background="learned", dair=True)
        return dataclasses.replace(run, data=data, model=model)


NOISY_MNIST = ClutteredMnist("noisy-mnist", "noise", "Multi-MNIST with noise: ink boxes and labels")
GRID_MNIST = ClutteredMnist(
    "grid-mnist", "grid", "Multi-MNIST over grid lines: ink boxes and labels"
)
CLUTTERED_MNIST = ClutteredMnist(
    "cluttered-mnist", "mixed", "Multi-MNIST clean, with noise or over grid lines: ink boxes"
)
