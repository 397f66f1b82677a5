"""A scene family: one kind of generated data (``DataConfig.kind``) and what the verbs need of it.

``airscene.registry.SCENE_FAMILIES`` lists them. The data verbs, training and evaluation load,
export and caption scenes through this interface, so a new family (digits scattered over a large
canvas, coloured sprites) is a module that implements it and one registry line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from airscene.config import DataConfig, RunConfig


class GroundTruth(Protocol):
    """What every family's scenes hold: images, counts and a box per object slot."""

    images: np.ndarray  # (n, H, W) uint8
    counts: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, K, 4) x0, y0, x1, y1 in canvas pixels (end exclusive)

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


class SceneFamily:
    """One kind of scene (see the module)."""

    kind: str
    title: str  # a figure's title for these scenes and their ground truth
    # The DataConfig fields that shape these scenes; None: every field. Another one given to
    # ``data make`` is refused rather than silently ignored.
    fields: tuple[str, ...] | None = None
    writes_npz: bool = True  # whether ``data make --format npz --out`` can write them

    def preset(self) -> RunConfig:
        """The run ``train --kind KIND`` starts from (data, model and recipe); flags override."""
        raise NotImplementedError

    def load(self, config: DataConfig, split: str, n: int | None = None) -> GroundTruth:
        """The scenes of ``split`` ('train' or 'test'), ``n`` overriding the config's size;
        generated once, then read from the cache."""
        raise NotImplementedError

    def export_png(self, scenes: Any, out_dir: Path, config: DataConfig) -> Path:
        """One PNG per scene with ``ground_truth.json`` and ``counts.csv``; refuses a non-empty
        ``out_dir``."""
        raise NotImplementedError

    def save_npz(self, scenes: Any, path: Path, config: DataConfig) -> None:
        """The scenes as a pickle-free ``.npz`` (only where ``writes_npz``)."""
        raise NotImplementedError

    def captions(self, scenes: Any) -> list[str]:
        """One line per scene of what is in it, for figures."""
        raise NotImplementedError
