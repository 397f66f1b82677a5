"""Inference on users' images: ``airscene.load("default").infer(images)``.

A ``Pipeline`` wraps a trained model: it reads files, PIL images, arrays or tensors as the model
reads them (grey, or RGB for a colour model; an image of the other kind is refused), inverts
dark-on-light grey images, fits each to the model's canvas, runs inference in batches, and maps
every box back to the input's own pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.checkpoint import Checkpoint, load_model
from airscene.config import MAX_CANVAS
from airscene.data.images import (
    ImageError,
    as_channels,
    fit_to_canvas,
    looks_dark_on_light,
    read_image,
)
from airscene.evaluate import RESIDUAL_QUANTILE, residual
from airscene.model import AIR
from airscene.train import resolve_device


@dataclass
class SceneResult:
    """What was found in one image (or why it could not be read)."""

    path: str | None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    inverted: bool | None = None
    objects: list[Any] = field(default_factory=list)  # the object model's records
    # (``airscene.objects.DetectedObject``, ``airscene.objects3d.RenderedObject``), each with
    # at least ``step``, ``box`` (in the input's pixels) and ``presence``
    residual: float | None = None  # how much of the image the reconstruction gets wrong, as a
    # fraction of its intensity (``airscene.evaluate.residual``, on the model's canvas)
    warning: str | None = None  # why the answer may be wrong: the image is explained worse
    # than the model's held-out scenes, or an object lies where none can
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (one JSON Lines record)."""
        record = asdict(self)
        for name in ("warning", "error"):
            if record[name] is None:
                record.pop(name)
        return record


def _is_batch(images: Any) -> bool:
    """Whether one array/tensor is a batch of images rather than one (colour) image."""
    shape = tuple(images.shape)
    if len(shape) == 4:
        return True
    if len(shape) == 3:
        return not (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4))
    return False


def _as_items(images: Any) -> list[Any]:
    if (
        isinstance(images, (str, Path))
        or not isinstance(images, Iterable)
        and not hasattr(images, "shape")
    ):
        return [images]
    if hasattr(images, "shape"):
        return list(images) if _is_batch(images) else [images]
    return list(images)


class Pipeline:
    """A trained AIR model ready for users' images."""

    def __init__(self, model: AIR, checkpoint: Checkpoint | None = None) -> None:
        self.model = model.eval()
        self.checkpoint = checkpoint
        self.residual_limit = residual_limit_of(checkpoint)
        # The most objects a scene held in training, where the data says (not for own images).
        data = checkpoint.config.data if checkpoint is not None else None
        self.most_trained = max(data.counts) if data and data.data_path is None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def canvas_size(self) -> int:
        return self.model.config.canvas_size

    def infer(
        self, images: Any, batch_size: int = 256, invert: bool | None = None, progress: bool = False
    ) -> list[SceneResult]:
        """Find the objects in ``images``: a path, PIL image, array or tensor, or a list of them.

        ``invert``: True/False forces it; None (default) inverts grey images whose border is
        bright (dark objects on a light background); colour images are never inverted (a colour
        model has learned their backgrounds). An unreadable file, or an image of the wrong kind
        (colour for a grey model, grey for a colour one), gets a result with ``error``.
        """
        return list(self.iter_infer(_as_items(images), batch_size, invert, progress))

    def iter_infer(
        self,
        items: list[Any],
        batch_size: int = 256,
        invert: bool | None = None,
        progress: bool = False,
    ) -> Iterator[SceneResult]:
        """Stream results, reading and inferring ``batch_size`` images at a time."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(items), disable=not progress, desc="infer", unit="img", dynamic_ncols=True
        )
        try:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                yield from self._infer_chunk(chunk, invert)
                bar.update(len(chunk))
        finally:
            bar.close()

    def _infer_chunk(self, chunk: list[Any], invert: bool | None) -> list[SceneResult]:
        results: list[SceneResult] = []
        canvases, fits, slots = [], [], []
        channels = self.model.config.channels
        for item in chunk:
            path = str(item) if isinstance(item, (str, Path)) else None
            try:
                if path is not None:
                    image = read_image(item, channels)
                else:
                    image = as_channels(item, channels)
            except ImageError as error:
                results.append(SceneResult(path=path, error=str(error)))
                continue
            if channels == 1:
                inverted = looks_dark_on_light(image) if invert is None else invert
            else:
                inverted = False
            read = 1.0 - image if inverted else image
            canvas, fit = fit_to_canvas(read, self.reading_side(image))
            results.append(
                SceneResult(path=path, width=fit.width, height=fit.height, inverted=inverted)
            )
            canvases.append(canvas)
            fits.append(fit)
            slots.append(len(results) - 1)
        by_side: dict[int, list[int]] = {}  # images read at the same size share a batch
        for i, canvas in enumerate(canvases):
            by_side.setdefault(canvas.shape[-1], []).append(i)
        batches = [
            (side, members[start : start + per_batch])
            for side, members in by_side.items()
            for per_batch in [max(1, PIXELS_PER_BATCH // side**2)]
            for start in range(0, len(members), per_batch)
        ]
        for side, members in batches:
            x = torch.from_numpy(np.stack([canvases[i] for i in members])).to(self.device)
            with torch.no_grad():
                inference = self.model(x, sample=False)
                objects = self.model.objects.at_canvas(side)
                described = objects.describe(inference, [fits[i].to_image for i in members])
                doubts = objects.doubts(inference)
                residuals = residual(x, inference.canvas).tolist()
            most = self.most_expected(side)
            self._report([slots[i] for i in members], results, described, doubts, residuals, most)
        return results

    def reading_side(self, image: np.ndarray) -> int:
        """The side of the square canvas an image (H, W) is read on: the model's canvas (a
        larger image shrunk to it), or, for a model that reads any size
        (``reads_any_size``: the grid scheme), the image's own larger side, up to MAX_CANVAS."""
        if not self.model.reads_any_size:
            return self.canvas_size
        return min(MAX_CANVAS, max(self.canvas_size, *image.shape[-2:]))

    def most_expected(self, side: int) -> int | None:
        """The most objects an image read at ``side`` px should hold: the most a training scene
        held, in proportion to the area for a model that reads any size (the same density of
        objects on a larger canvas); None where the training data does not say."""
        if self.most_trained is None:
            return None
        return math.ceil(self.most_trained * max(1.0, (side / self.canvas_size) ** 2))

    def _report(self, slots, results, described, doubts, residuals, most) -> None:
        """Fill the results ``slots`` with their images' objects, residual and warnings
        (``most``: the count above which an image is flagged, or None)."""
        for slot, objects, doubt, unexplained in zip(
            slots, described, doubts, residuals, strict=True
        ):
            result = results[slot]
            result.count, result.objects = len(objects), objects
            result.residual = round(unexplained, 5)
            reasons = [doubt] if doubt else []
            if most is not None and len(objects) > most:
                held = (
                    f"the {most} its training scenes held at most"
                    if most == self.most_trained
                    else f"{most}, the densest of its training scenes at this size"
                )
                reasons.append(
                    f"found {len(objects)} objects, more than {held}: there may be more, or "
                    "they may be split"
                )
            if self.residual_limit is not None and unexplained > self.residual_limit:
                reasons.insert(
                    0,
                    f"explained worse than {100 * RESIDUAL_QUANTILE:g}% of the model's held-out "
                    f"scenes (residual {unexplained:.3f} > {self.residual_limit:.3f}): the image "
                    "may be unlike what it was trained on",
                )
            result.warning = "; ".join(reasons) or None


# Images read at their own size (a grid model) go through the model this many pixels at a time.
PIXELS_PER_BATCH = 256 * 64 * 64

CALIBRATION_FILE = "calibration.json"  # a shipped model's residual limit, beside its checkpoint


def residual_limit_of(checkpoint: Checkpoint | None) -> float | None:
    """The residual above which an image is flagged: a shipped model's ``calibration.json``, or
    what its training's last evaluation measured on held-out scenes; None if neither is known."""
    if checkpoint is None:
        return None
    calibration = checkpoint.path / CALIBRATION_FILE
    if calibration.is_file():
        return float(json.loads(calibration.read_text())["residual_limit"])
    limit = checkpoint.metrics.get("eval_residual_limit")
    return float(limit) if isinstance(limit, int | float) and math.isfinite(limit) else None


def load(name_or_path: str | Path = "default", device: str | torch.device = "cpu") -> Pipeline:
    """A ``Pipeline`` for a shipped model ('default'), a checkpoint, or a run directory."""
    model, checkpoint = load_model(name_or_path, resolve_device(str(device)))
    return Pipeline(model, checkpoint)


__all__ = ["Pipeline", "SceneResult", "load"]
