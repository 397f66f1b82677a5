"""Coloured sprites: filled shapes in saturated colours over coloured backgrounds, in the spirit
of DeepMind's Multi-dSprites (the slot models' benchmark), generated here.

Per scene the count is drawn from ``counts`` (0-4 by default); per object a shape (square,
circle or triangle), a side of ``SIZES`` pixels, a position that keeps it wholly in the canvas
and a saturated colour (hue uniform, saturation 0.75-1, value 0.8-1). Objects are drawn in slot
order, each later one over the earlier ones; a scene where some object keeps less than
``MIN_VISIBLE`` of its pixels is drawn again, so every object stays mostly visible. The
background is one of three, equally often: a flat colour, a linear gradient between two colours
in a random direction, or smooth colour noise (a 4x4 grid of colours, bilinearly upsampled);
its colours are muted (saturation at most 0.5, value 0.15-0.6), so objects stand out by colour
and brightness. Shapes have hard edges: the ground-truth masks are exact.

Ground truth per scene: the count; per object slot (in drawing order, back to front) its shape,
colour and the box of its visible pixels (end exclusive); and ``segmentation`` (H, W), each
pixel 0 for the background or k + 1 for the object of slot k seen there (the visible masks that
foreground ARI compares with). Images are stored channel first, (n, 3, H, W) uint8, as the
model reads them. Generation is seeded per split and cached as pickle-free ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airscene.config import DataConfig, RunConfig, sprites_run
from airscene.data.family import SceneFamily
from airscene.data.scenes import cache_dir, cached, split_size, write_npz, write_png_scenes
from airscene.errors import AirsceneError

GENERATOR_VERSION = 1
_SPLIT_STREAM = {"train": 0, "test": 1}
SHAPES = ("square", "circle", "triangle")
BACKGROUNDS = ("flat", "gradient", "noise")
SIZES = (10, 18)  # an object's side in pixels, both ends included
MIN_VISIBLE = 0.6  # of its own pixels, every object keeps at least this many visible
_CHUNK = 4096  # scenes drawn at once
_STALL_ROUNDS = 1_000


@dataclass
class Sprites:
    """Coloured sprite scenes and what is in them; absent object slots hold shape -1."""

    images: np.ndarray  # (n, 3, H, W) uint8, channel first
    counts: np.ndarray  # (n,) int64
    shapes: np.ndarray  # (n, K) int8 indices into SHAPES, -1 where no object
    colours: np.ndarray  # (n, K, 3) uint8 RGB of each object
    boxes: np.ndarray  # (n, K, 4) int16 visible-pixel box x0, y0, x1, y1 (end exclusive)
    segmentation: np.ndarray  # (n, H, W) uint8: 0 background, k + 1 the object of slot k
    backgrounds: np.ndarray  # (n,) int8 indices into BACKGROUNDS

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index: slice | np.ndarray) -> Sprites:
        return Sprites(*(getattr(self, name)[index] for name in _ARRAYS))

    def masks(self) -> np.ndarray:
        """Each object's visible mask, (n, K, H, W) bool."""
        slots = np.arange(1, self.shapes.shape[1] + 1, dtype=np.uint8)
        return self.segmentation[:, None] == slots[:, None, None]


_ARRAYS = ("images", "counts", "shapes", "colours", "boxes", "segmentation", "backgrounds")


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of colours given as hue, saturation and value in [0, 1], (..., 3)."""
    k = (np.stack([5.0, 3.0, 1.0], axis=-1) + hue[..., None] * 6) % 6
    ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
    return value[..., None] * (1 - saturation[..., None] * ramp)


def shape_masks(
    shapes: np.ndarray, sides: np.ndarray, corners: np.ndarray, canvas: int
) -> np.ndarray:
    """Masks (..., H, W) bool of shapes (...) of ``sides`` px whose box starts at ``corners``
    (..., 2: x0, y0), judged at pixel centres."""
    centres = np.arange(canvas) + 0.5
    x = centres[None, :] - corners[..., 0, None, None]  # (..., 1, W) from the box's left
    y = centres[:, None] - corners[..., 1, None, None]  # (..., H, 1) from its top
    side = sides[..., None, None].astype(np.float64)
    inside = (x >= 0) & (x < side) & (y >= 0) & (y < side)
    half = side / 2
    circle = (x - half) ** 2 + (y - half) ** 2 <= half**2
    triangle = np.abs(x - half) <= y / 2  # apex at the top centre, base along the bottom
    shape = shapes[..., None, None]
    return inside & ((shape == 0) | ((shape == 1) & circle) | ((shape == 2) & triangle))


def _backgrounds(kinds: np.ndarray, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Backgrounds (n, H, W, 3) in [0, 1] of ``kinds`` (indices into BACKGROUNDS)."""
    import torch
    import torch.nn.functional as F

    n = len(kinds)

    def muted(*shape: int) -> np.ndarray:
        hue = rng.random(shape)
        return hsv_to_rgb(hue, rng.uniform(0, 0.5, shape), rng.uniform(0.15, 0.6, shape))

    first, second = muted(n), muted(n)  # (n, 3) each
    angle = rng.uniform(0, 2 * np.pi, n)
    centres = (np.arange(canvas) + 0.5) / canvas - 0.5
    along = (
        np.cos(angle)[:, None, None] * centres[None, None, :]
        + np.sin(angle)[:, None, None] * centres[None, :, None]
    )  # (n, H, W), within +-0.71
    t = np.clip(along / np.sqrt(2) + 0.5, 0, 1)[..., None]
    gradient = first[:, None, None] * (1 - t) + second[:, None, None] * t
    coarse = torch.from_numpy(muted(n, 4, 4)).permute(0, 3, 1, 2)  # (n, 3, 4, 4)
    noise = F.interpolate(coarse, size=(canvas, canvas), mode="bilinear", align_corners=True)
    noise = noise.permute(0, 2, 3, 1).numpy()
    flat = np.broadcast_to(first[:, None, None], gradient.shape)
    choice = kinds[:, None, None, None]
    return np.where(choice == 0, flat, np.where(choice == 1, gradient, noise))


def _draw_chunk(
    counts: np.ndarray, slots: int, canvas: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One try at scenes of ``counts``: their arrays, and which of them keep every object
    mostly visible."""
    n = len(counts)
    present = np.arange(slots)[None, :] < counts[:, None]  # (n, K)
    shapes = np.where(present, rng.integers(0, len(SHAPES), (n, slots)), -1).astype(np.int8)
    sides = rng.integers(SIZES[0], SIZES[1] + 1, (n, slots))
    corners = rng.random((n, slots, 2)) * (canvas - sides)[..., None]
    rgb = hsv_to_rgb(
        rng.random((n, slots)), rng.uniform(0.75, 1, (n, slots)), rng.uniform(0.8, 1, (n, slots))
    )
    colours = np.where(present[..., None], np.round(rgb * 255), 0).astype(np.uint8)
    masks = shape_masks(shapes, sides, corners, canvas) & present[..., None, None]  # (n,K,H,W)
    segmentation = np.zeros((n, canvas, canvas), dtype=np.uint8)
    for k in range(slots):  # later slots over earlier ones
        segmentation[masks[:, k]] = k + 1
    visible = segmentation[:, None] == np.arange(1, slots + 1, dtype=np.uint8)[:, None, None]
    own = masks.sum((2, 3))
    seen = visible.sum((2, 3))
    keeps = np.all(~present | (seen >= MIN_VISIBLE * np.maximum(own, 1)), axis=1)
    kinds = rng.integers(0, len(BACKGROUNDS), n).astype(np.int8)
    image = _backgrounds(kinds, canvas, rng)
    palette = np.concatenate([np.zeros((n, 1, 3)), colours / 255.0], axis=1)  # slot k + 1
    drawn = np.take_along_axis(palette, segmentation.reshape(n, -1, 1).astype(np.int64), axis=1)
    image = np.where(segmentation[..., None] > 0, drawn.reshape(image.shape), image)
    images = np.round(image * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    rows, cols = visible.any(3), visible.any(2)  # (n, K, H), (n, K, W)
    boxes = np.stack(
        [
            cols.argmax(2),
            rows.argmax(2),
            canvas - cols[..., ::-1].argmax(2),
            canvas - rows[..., ::-1].argmax(2),
        ],
        axis=-1,
    )
    boxes = np.where(present[..., None], boxes, -1).astype(np.int16)
    arrays = {
        "images": np.ascontiguousarray(images),
        "counts": counts.astype(np.int64),
        "shapes": shapes,
        "colours": colours,
        "boxes": boxes,
        "segmentation": segmentation,
        "backgrounds": kinds,
    }
    return arrays, keeps


def make_sprites(
    n: int,
    split: str = "train",
    seed: int = 0,
    counts: tuple[int, ...] = (0, 1, 2, 3, 4),
    canvas: int = 64,
) -> Sprites:
    """``n`` scenes of ``split`` (train and test draw from separate streams of ``seed``)."""
    if split not in _SPLIT_STREAM:
        raise AirsceneError(f"split must be 'train' or 'test', got {split!r}")
    if canvas < SIZES[1]:
        raise AirsceneError(f"sprites of up to {SIZES[1]} px need a canvas of at least that")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5, _SPLIT_STREAM[split]]))
    slots = max(counts)
    wanted = np.asarray(counts)[rng.integers(0, len(counts), n)]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
    order: list[np.ndarray] = []
    pending, stalled = np.arange(n), 0
    while len(pending):
        batch = pending[:_CHUNK]
        arrays, keeps = _draw_chunk(wanted[batch], slots, canvas, rng)
        stalled = 0 if keeps.any() else stalled + 1
        if stalled >= _STALL_ROUNDS:
            raise AirsceneError(f"{max(counts)} sprites do not fit a {canvas} px canvas")
        for name in _ARRAYS:
            parts[name].append(arrays[name][keeps])
        order.append(batch[keeps])
        pending = np.concatenate([pending[_CHUNK:], batch[~keeps]])
    position = np.argsort(np.concatenate(order), kind="stable")
    return Sprites(*(np.concatenate(parts[name])[position] for name in _ARRAYS))


def load_sprites(
    n: int,
    split: str = "train",
    seed: int = 0,
    counts: tuple[int, ...] = (0, 1, 2, 3, 4),
    canvas: int = 64,
    use_cache: bool = True,
) -> Sprites:
    """``make_sprites``, generated once and then read back from the on-disk cache."""
    key = json.dumps(
        {"n": n, "split": split, "seed": seed, "counts": list(counts), "canvas": canvas,
         "version": GENERATOR_VERSION},
        sort_keys=True,
    )  # fmt: skip
    path = cache_dir() / f"sprites-{split}-{n}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    return cached(
        path if use_cache else None,
        load=_load_npz,
        make=lambda: make_sprites(n, split, seed, counts, canvas),
        save=lambda scenes: write_npz(path, {name: getattr(scenes, name) for name in _ARRAYS}),
    )


def _load_npz(path: Path) -> Sprites:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Sprites(**{name: data[name] for name in _ARRAYS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise AirsceneError(f"{path}: not a readable sprites file ({error})") from None


def ground_truth_records(scenes: Sprites, names: list[str]) -> list[dict]:
    """Per image: ``file``, ``count``, ``background``, ``mask`` (the segmentation PNG) and
    ``objects`` ({shape, colour, box, label: the object's value in the mask}), back to front."""
    records = []
    for i, name in enumerate(names):
        objects = [
            {
                "shape": SHAPES[int(scenes.shapes[i, j])],
                "colour": [int(v) for v in scenes.colours[i, j]],
                "box": [int(v) for v in scenes.boxes[i, j]],
                "label": j + 1,
            }
            for j in range(int(scenes.counts[i]))
        ]
        records.append(
            {
                "file": name,
                "count": int(scenes.counts[i]),
                "background": BACKGROUNDS[int(scenes.backgrounds[i])],
                "mask": f"masks/{name}",
                "objects": objects,
            }
        )
    return records


def export_sprites_png(scenes: Sprites, out_dir: str | Path) -> Path:
    """One RGB PNG per scene, its segmentation under ``masks/`` (0 background, k + 1 the object
    of slot k), ``ground_truth.json`` and ``counts.csv``; refuses a non-empty ``out_dir``."""
    from PIL import Image

    out = write_png_scenes(
        scenes.images.transpose(0, 2, 3, 1),
        scenes.counts,
        out_dir,
        lambda names: {"images": ground_truth_records(scenes, names)},
    )
    (out / "masks").mkdir()
    width = max(5, len(str(len(scenes) - 1)))
    for i, segmentation in enumerate(scenes.segmentation):
        Image.fromarray(segmentation).save(out / "masks" / f"{i:0{width}d}.png")
    return out


class SpritesFamily(SceneFamily):
    """Coloured shapes over coloured backgrounds (see the module)."""

    kind = "sprites"
    title = "Coloured sprites: visible boxes and shapes"
    fields = ("kind", "canvas_size", "counts", "seed", "n_train", "n_test")
    writes_npz = False  # kept in the cache; exported as PNG files with masks and descriptions

    def preset(self) -> RunConfig:
        return sprites_run()

    def load(self, config: DataConfig, split: str, n: int | None = None) -> Sprites:
        size = n if n is not None else split_size(config, split)
        return load_sprites(size, split, config.seed, config.counts, config.canvas_size)

    def export_png(self, scenes: Sprites, out_dir: Path, config: DataConfig) -> Path:
        return export_sprites_png(scenes, out_dir)

    def captions(self, scenes: Sprites) -> list[str]:
        return [
            f"n={count}: " + " ".join(SHAPES[int(s)] for s in shapes[:count])
            for shapes, count in zip(scenes.shapes, scenes.counts, strict=True)
        ]


SPRITES = SpritesFamily()
