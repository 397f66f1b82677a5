"""Figures: grids of scenes with boxes and captions, written as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# One colour per inference step (or per object slot), reused cyclically.
STEP_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, end exclusive


def scene_grid(
    images: np.ndarray,
    path: str | Path,
    boxes: Sequence[Sequence[Box]] | None = None,
    box_colours: Sequence[Sequence[str]] | None = None,
    captions: Sequence[str] | None = None,
    columns: int | None = None,
    title: str | None = None,
) -> Path:
    """Save a grid of greyscale ``images`` (B, H, W) in [0, 1] or uint8, each with its boxes
    (pixel coordinates, drawn as rectangles) and caption, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = len(images)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        axis.set_axis_off()
        if index >= count:
            continue
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1)
        for j, (x0, y0, x1, y1) in enumerate(boxes[index] if boxes is not None else ()):
            colour = box_colours[index][j] if box_colours else STEP_COLOURS[j % len(STEP_COLOURS)]
            # Pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates.
            axis.add_patch(
                Rectangle(
                    (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.2
                )
            )
        if captions is not None:
            axis.set_title(captions[index], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
