"""3D scenes for the paper's renderer experiment: 0-3 objects on a floor, drawn by the fixed
renderer (``airscene.render3d``), with their full description as ground truth.

Per scene the count is drawn from ``counts``; per object a shape (uniform), a position uniform on
the floor (redrawn until it keeps ``min_centre_distance`` from the objects already placed, so no
two objects intersect) and a rotation uniform in [0, 360) degrees. Each object's box is the box of
its *visible* pixels in the image (where it is seen, after occlusion, by more than half), end
exclusive, like the Multi-MNIST boxes; an object hidden entirely has the box [0, 0, 0, 0].
Generation is seeded per split and cached as pickle-free ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from airscene.config import DataConfig, RunConfig, scenes3d_run
from airscene.data.family import SceneFamily
from airscene.data.scenes import cache_dir, cached, write_npz, write_png_scenes
from airscene.errors import AirsceneError
from airscene.render3d import (
    MAX_OBJECTS,
    SHAPES,
    Renderer,
    SceneObject,
    SceneSpace,
    scene_tensors,
)

GENERATOR_VERSION = 2  # 2: edges between faces shaded softly
_SPLIT_STREAM = {"train": 0, "test": 1}


@dataclass
class Scenes3D:
    """Rendered 3D scenes and what is in them; absent object slots hold shape -1."""

    images: np.ndarray  # (n, H, W) uint8
    counts: np.ndarray  # (n,) int64
    shapes: np.ndarray  # (n, 3) int64 indices into SHAPES, -1 where no object
    positions: np.ndarray  # (n, 3, 2) float32 centres on the floor
    rotations_deg: np.ndarray  # (n, 3) float32 in [0, 360)
    boxes: np.ndarray  # (n, 3, 4) int16 visible-pixel box x0, y0, x1, y1 (end exclusive)

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index: slice | np.ndarray) -> Scenes3D:
        return Scenes3D(*(getattr(self, name)[index] for name in _ARRAYS))

    def descriptions(self) -> list[list[SceneObject]]:
        """The scenes as ``SceneObject`` lists (what ``render3d`` reads)."""
        return _descriptions(self.counts, self.shapes, self.positions, self.rotations_deg)


def _descriptions(
    counts: np.ndarray, shapes: np.ndarray, positions: np.ndarray, rotations_deg: np.ndarray
) -> list[list[SceneObject]]:
    """Scene descriptions from the arrays of ``Scenes3D``."""
    return [
        [
            SceneObject(
                SHAPES[shapes[i, j]],
                (float(positions[i, j, 0]), float(positions[i, j, 1])),
                float(rotations_deg[i, j]),
            )
            for j in range(int(counts[i]))
        ]
        for i in range(len(counts))
    ]


def sample_descriptions(
    n: int, counts: tuple[int, ...], rng: np.random.Generator, space: SceneSpace
) -> list[list[SceneObject]]:
    """``n`` random scene descriptions (see the module docstring)."""
    if not counts or min(counts) < 0 or max(counts) > MAX_OBJECTS:
        raise AirsceneError(f"3D scenes hold 0 to {MAX_OBJECTS} objects, got counts {counts}")
    # A hair over the minimum, so positions rounded for ground_truth.json stay valid.
    extent, apart = space.floor_extent, space.min_centre_distance + 1e-5
    scenes = []
    for count in rng.choice(np.asarray(counts), size=n):
        objects: list[SceneObject] = []
        while len(objects) < count:
            position = rng.uniform(-extent, extent, size=2)
            if all(np.hypot(*(position - o.position)) >= apart for o in objects):
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                rotation = float(rng.uniform(0.0, 360.0))
                objects.append(
                    SceneObject(shape, (float(position[0]), float(position[1])), rotation)
                )
        scenes.append(objects)
    return scenes


@torch.no_grad()
def render_with_boxes(
    scenes: list[list[SceneObject]], renderer: Renderer | None = None, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W) uint8 and each object's visible-pixel box (n, 3, 4)."""
    renderer = renderer or Renderer()
    size = renderer.space.image_size
    images = np.zeros((len(scenes), size, size), dtype=np.uint8)
    boxes = np.zeros((len(scenes), MAX_OBJECTS, 4), dtype=np.int16)
    shape, position, rotation, presence = scene_tensors(scenes)
    for start in range(0, len(scenes), batch):
        part = slice(start, start + batch)
        coverage, depth, shade = renderer.objects(shape[part], position[part], rotation[part])
        coverage = coverage * presence[part].unsqueeze(-1)
        image = renderer.composite(coverage, depth, shade)
        images[part] = np.round(image.clamp(0, 1).numpy() * 255).astype(np.uint8)
        seen = renderer.visibility(coverage, depth).view(*coverage.shape[:2], size, size) > 0.5
        for i, j in zip(*np.nonzero(presence[part].numpy()), strict=True):
            rows, cols = np.nonzero(seen[i, j].numpy())
            if len(rows):
                boxes[start + i, j] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return images, boxes


def make_scenes3d(
    n: int, split: str = "train", seed: int = 0, counts: tuple[int, ...] = (0, 1, 2, 3)
) -> Scenes3D:
    """``n`` scenes of ``split`` (train and test draw from separate streams of ``seed``)."""
    if split not in _SPLIT_STREAM:
        raise AirsceneError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, _SPLIT_STREAM[split]]))
    descriptions = sample_descriptions(n, counts, rng, SceneSpace())
    shapes = np.full((n, MAX_OBJECTS), -1, dtype=np.int64)
    positions = np.zeros((n, MAX_OBJECTS, 2), dtype=np.float32)
    rotations = np.zeros((n, MAX_OBJECTS), dtype=np.float32)
    for i, objects in enumerate(descriptions):
        for j, o in enumerate(objects):
            shapes[i, j] = SHAPES.index(o.shape)
            positions[i, j] = o.position
            rotations[i, j] = o.rotation_deg
    counts_out = np.array([len(o) for o in descriptions], dtype=np.int64)
    # Rendered from the stored (float32) description, so the ground truth re-renders exactly.
    images, boxes = render_with_boxes(_descriptions(counts_out, shapes, positions, rotations))
    return Scenes3D(images, counts_out, shapes, positions, rotations, boxes)


def load_scenes3d(
    n: int,
    split: str = "train",
    seed: int = 0,
    counts: tuple[int, ...] = (0, 1, 2, 3),
    use_cache: bool = True,
) -> Scenes3D:
    """``make_scenes3d``, generated once and then read back from the on-disk cache."""
    key = json.dumps(
        {"n": n, "split": split, "seed": seed, "counts": list(counts), "version": GENERATOR_VERSION,
         "space": repr(SceneSpace())},
        sort_keys=True,
    )  # fmt: skip
    path = cache_dir() / f"scenes3d-{split}-{n}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    return cached(
        path if use_cache else None,
        load=_load_npz,
        make=lambda: make_scenes3d(n, split, seed, counts),
        save=lambda scenes: write_npz(path, {name: getattr(scenes, name) for name in _ARRAYS}),
    )


_ARRAYS = ("images", "counts", "shapes", "positions", "rotations_deg", "boxes")


def _load_npz(path: Path) -> Scenes3D:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Scenes3D(**{name: data[name] for name in _ARRAYS})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise AirsceneError(f"{path}: not a readable 3D scenes file ({error})") from None


def ground_truth_records(scenes: Scenes3D, names: list[str]) -> list[dict]:
    """Per image: ``file``, ``count`` and ``objects`` ({shape, position, rotation_deg, box})."""
    records = []
    for i, name in enumerate(names):
        objects = [
            {
                "shape": SHAPES[int(scenes.shapes[i, j])],
                "position": [round(float(v), 6) for v in scenes.positions[i, j]],
                "rotation_deg": round(float(scenes.rotations_deg[i, j]), 4),
                "box": [int(v) for v in scenes.boxes[i, j]],
            }
            for j in range(int(scenes.counts[i]))
        ]
        records.append({"file": name, "count": int(scenes.counts[i]), "objects": objects})
    return records


def export_png3d(scenes: Scenes3D, out_dir: str | Path) -> Path:
    """One 8-bit PNG per scene, ``ground_truth.json`` and ``counts.csv``; refuses a non-empty
    ``out_dir`` so nothing already there is overwritten."""
    return write_png_scenes(
        scenes.images,
        scenes.counts,
        out_dir,
        lambda names: {
            "scene_space": SceneSpace().describe(),
            "images": ground_truth_records(scenes, names),
        },
    )


class Scenes3DFamily(SceneFamily):
    """The 3D experiment's scenes: 0-3 objects on a floor, drawn by the fixed renderer."""

    kind = "scenes3d"
    title = "3D scenes: visible boxes and shapes"
    fields = ("kind", "counts", "seed", "n_train", "n_test")
    writes_npz = False  # kept in the cache; exported as PNG files with their descriptions

    def preset(self) -> RunConfig:
        return scenes3d_run()

    def load(self, config: DataConfig, split: str, n: int | None = None) -> Scenes3D:
        size = n if n is not None else (config.n_train if split == "train" else config.n_test)
        return load_scenes3d(size, split, config.seed, config.counts)

    def export_png(self, scenes: Scenes3D, out_dir: Path, config: DataConfig) -> Path:
        return export_png3d(scenes, out_dir)

    def captions(self, scenes: Scenes3D) -> list[str]:
        return [
            f"n={count}: " + " ".join(SHAPES[int(s)] for s in shapes[:count])
            for shapes, count in zip(scenes.shapes, scenes.counts, strict=True)
        ]


SCENES3D = Scenes3DFamily()
