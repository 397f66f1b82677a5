"""Figures: grids of scenes with boxes and captions, written as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# One colour per inference step (or per object slot), reused cyclically.
STEP_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, end exclusive


def _displayed(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """One image (H, W) or (C, H, W) as ``imshow`` takes it: its array and how to colour it."""
    if image.ndim == 3:  # colour, channel first
        rgb = image.transpose(1, 2, 0)
        return (rgb if rgb.dtype == np.uint8 else np.clip(rgb, 0, 1)), {}
    return image, {"cmap": "gray", "vmin": 0, "vmax": 255 if image.dtype == np.uint8 else 1}


def scene_grid(
    images: np.ndarray,
    path: str | Path,
    boxes: Sequence[Sequence[Box]] | None = None,
    box_colours: Sequence[Sequence[str]] | None = None,
    captions: Sequence[str] | None = None,
    columns: int | None = None,
    title: str | None = None,
) -> Path:
    """Save a grid of ``images``, grey (B, H, W) or colour (B, 3, H, W), in [0, 1] or uint8,
    each with its boxes
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
        shown, style = _displayed(images[index])
        axis.imshow(shown, **style)
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


def inference_figure(
    images: np.ndarray,
    reconstructions: np.ndarray,
    z_pres: np.ndarray,
    boxes: np.ndarray,
    path: str | Path,
    true_counts: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    found_order: str = "inference step",
) -> Path:
    """Images (top row) and reconstructions (second row) with the inferred boxes (B, N, 4),
    coloured by their index (the inference step, or what ``found_order`` names: the model's
    own), and the inferred count against the truth; given the inferred
    ``segmentation`` (B, H, W: 0 background, t + 1 the object of step t), a third row of the
    masks in each step's colour."""
    count = len(images)
    step_boxes = [
        [tuple(boxes[i, t]) for t in range(boxes.shape[1]) if z_pres[i, t] > 0]
        for i in range(count)
    ]
    step_colours = [
        [STEP_COLOURS[t % len(STEP_COLOURS)] for t in range(boxes.shape[1]) if z_pres[i, t] > 0]
        for i in range(count)
    ]
    inferred = z_pres.sum(1).astype(int)
    captions = [
        f"found {inferred[i]}"
        + (f" / true {int(true_counts[i])}" if true_counts is not None else "")
        for i in range(count)
    ]
    rows = [images, np.clip(reconstructions, 0, 1)]
    captions += ["reconstruction"] * count
    boxes_drawn, colours = step_boxes + step_boxes, step_colours + step_colours
    if segmentation is not None:
        rows.append(mask_image(segmentation, colour=images.ndim == 4))
        captions += ["masks"] * count
        boxes_drawn, colours = boxes_drawn + [[]] * count, colours + [[]] * count
    return scene_grid(
        np.concatenate(rows),
        path,
        boxes=boxes_drawn,
        box_colours=colours,
        captions=captions,
        columns=count,
        title=f"AIR: inferred objects (box colour = {found_order})",
    )


def mask_image(segmentation: np.ndarray, colour: bool = True) -> np.ndarray:
    """A segmentation (B, H, W) (0 background, t + 1 the object of step t) as images in [0, 1]:
    each step's pixels in its ``STEP_COLOURS`` entry over black, (B, 3, H, W); or, not
    ``colour``, grey levels (B, H, W)."""
    from matplotlib.colors import to_rgb

    palette = np.array([(0.0, 0.0, 0.0)] + [to_rgb(c) for c in STEP_COLOURS])
    labels = np.where(segmentation > 0, (segmentation - 1) % len(STEP_COLOURS) + 1, 0)
    rgb = palette[labels].transpose(0, 3, 1, 2)  # (B, 3, H, W)
    return rgb if colour else rgb.mean(1)


def show_inference(model, images, path: str | Path, true_counts: np.ndarray | None = None) -> Path:
    """``inference_figure`` of ``model``'s deterministic inference on ``images`` (B, H, W) or
    (B, C, H, W), a tensor, with the boxes its object model draws (``ObjectModel.figure_boxes``)
    and, where it draws masks, its segmentation (the scheme's ``segmentation``)."""
    import torch

    with torch.no_grad():
        inference = model(images, sample=False)
        objects = model.objects.at_canvas(images.shape[-1])
        boxes = objects.figure_boxes(inference.objects)
        segmentation = model.segmentation(images, inference)
    return inference_figure(
        images.cpu().numpy(),
        inference.canvas.cpu().numpy(),
        inference.z_pres.cpu().numpy(),
        boxes.cpu().numpy(),
        path,
        true_counts=true_counts,
        segmentation=None if segmentation is None else segmentation.cpu().numpy(),
        found_order=model.found_order,
    )


def draw_overlay(
    image: np.ndarray, boxes: Sequence[Box], path: str | Path, min_side: int = 256
) -> Path:
    """Save an image, grey (H, W) or colour (3, H, W), in [0, 1] with ``boxes`` (its own
    pixels) drawn and numbered 1, 2, ... in inference order, enlarged (nearest neighbour) to at
    least ``min_side``."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = image.shape[-2:]
    zoom = max(1, int(np.ceil(min_side / max(1, min(height, width)))))
    pixels = image.transpose(1, 2, 0) if image.ndim == 3 else image
    picture = Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8))
    canvas = picture.resize((width * zoom, height * zoom), Image.Resampling.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(canvas.size) // 16))
    for number, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        colour = STEP_COLOURS[(number - 1) % len(STEP_COLOURS)]
        draw.rectangle(
            [x0 * zoom, y0 * zoom, x1 * zoom - 1, y1 * zoom - 1], outline=colour, width=2
        )
        draw.text((x0 * zoom + 3, y0 * zoom + 1), str(number), fill=colour, font=font)
    path = Path(path)
    canvas.save(path)
    return path
