"""Inference on users' images: ``airscene.load("default").infer(images)``.

A ``Pipeline`` wraps a trained model: it reads files, PIL images, arrays or tensors, converts
them to grey, inverts dark-on-light images, fits each to the model's canvas, runs inference in
batches, and maps every box back to the input's own pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.checkpoint import Checkpoint, load_model
from airscene.data.images import ImageError, fit_to_canvas, looks_dark_on_light, read_image, to_grey
from airscene.evaluate import ink_boxes
from airscene.model import AIR
from airscene.spatial import z_where_to_box


@dataclass
class DetectedObject:
    """One object found in an image, in inference order."""

    step: int  # 0-based inference step that found it
    box: list[float]  # x0, y0, x1, y1 (end exclusive) of the object's drawn ink, in input pixels
    window: list[float]  # the attention window (glimpse) in input pixels
    presence: float  # q(z_pres = 1) at this step
    z_where: list[float]  # scale, x, y on the model's canvas (normalised coordinates)
    z_what: list[float]  # appearance code


@dataclass
class RenderedObject:
    """One object found in an image by a 3D model (the renderer's objects), in inference order."""

    step: int  # 0-based inference step that found it
    shape: str  # one of airscene.render3d.SHAPES
    position: list[float]  # x, y of its centre on the floor (world units)
    rotation_deg: float  # about the vertical axis, in [0, 360) (defined modulo the symmetry)
    presence: float  # q(z_pres = 1) at this step
    box: list[float]  # x0, y0, x1, y1 (end exclusive) of where it draws, in input pixels


@dataclass
class SceneResult:
    """What was found in one image (or why it could not be read)."""

    path: str | None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    inverted: bool | None = None
    objects: list[DetectedObject | RenderedObject] = field(default_factory=list)
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (one JSON Lines record)."""
        record = asdict(self)
        if self.error is None:
            record.pop("error")
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

        ``invert``: True/False forces it; None (default) inverts images whose border is bright
        (dark objects on a light background). An unreadable file gets a result with ``error``.
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
        for item in chunk:
            path = str(item) if isinstance(item, (str, Path)) else None
            try:
                grey = read_image(item) if path is not None else to_grey(item)
            except ImageError as error:
                results.append(SceneResult(path=path, error=str(error)))
                continue
            inverted = looks_dark_on_light(grey) if invert is None else invert
            canvas, fit = fit_to_canvas(1.0 - grey if inverted else grey, self.canvas_size)
            results.append(
                SceneResult(path=path, width=fit.width, height=fit.height, inverted=inverted)
            )
            canvases.append(canvas)
            fits.append(fit)
            slots.append(len(results) - 1)
        if not canvases:
            return results
        x = torch.from_numpy(np.stack(canvases)).to(self.device)
        if self.model.config.objects.kind == "render3d":
            self._fill_rendered(x, results, slots, fits)
            return results
        with torch.no_grad():
            inference = self.model(x, sample=False)
            inks = ink_boxes(self.model, inference).cpu().numpy()
            windows = z_where_to_box(inference.z_where, self.canvas_size).cpu().numpy()
        z_pres = inference.z_pres.cpu().numpy()
        presence = inference.z_pres_prob.cpu().numpy()
        z_where = inference.z_where.cpu().numpy()
        z_what = inference.z_what.cpu().numpy()
        for row, (slot, fit) in enumerate(zip(slots, fits, strict=True)):
            result = results[slot]
            steps = [t for t in range(z_pres.shape[1]) if z_pres[row, t] > 0]
            result.count = len(steps)
            box_image = fit.to_image(inks[row])
            window_image = fit.to_image(windows[row])
            result.objects = [
                DetectedObject(
                    step=t,
                    box=[round(float(v), 2) for v in box_image[t]],
                    window=[round(float(v), 2) for v in window_image[t]],
                    presence=round(float(presence[row, t]), 6),
                    z_where=[round(float(v), 6) for v in z_where[row, t]],
                    z_what=[round(float(v), 6) for v in z_what[row, t]],
                )
                for t in steps
            ]
        return results

    @torch.no_grad()
    def _fill_rendered(self, x: torch.Tensor, results: list[SceneResult], slots, fits) -> None:
        """A 3D model's answer for canvases ``x``: count, and per object shape, position,
        rotation, presence and box, into ``results[slot]``."""
        from airscene.evaluate3d import drawn_boxes
        from airscene.render3d import SHAPES

        inference = self.model(x, sample=False)
        boxes = drawn_boxes(self.model, inference).numpy()
        found = {
            "z_pres": inference.z_pres,
            "presence": inference.z_pres_prob,
            "shape": inference.objects["shape"].long(),
            "position": inference.objects["position"],
            "rotation": self.model.objects.rotation_deg(inference.objects),
        }
        found = {k: v.cpu().numpy() for k, v in found.items()}
        for row, (slot, fit) in enumerate(zip(slots, fits, strict=True)):
            steps = [t for t in range(found["z_pres"].shape[1]) if found["z_pres"][row, t] > 0]
            box_image = fit.to_image(boxes[row])
            results[slot].count = len(steps)
            results[slot].objects = [
                RenderedObject(
                    step=t,
                    shape=SHAPES[int(found["shape"][row, t])],
                    position=[round(float(v), 5) for v in found["position"][row, t]],
                    rotation_deg=round(float(found["rotation"][row, t]), 3),
                    presence=round(float(found["presence"][row, t]), 6),
                    box=[round(float(v), 2) for v in box_image[t]],
                )
                for t in steps
            ]


def load(name_or_path: str | Path = "default", device: str | torch.device = "cpu") -> Pipeline:
    """A ``Pipeline`` for a shipped model ('default'), a checkpoint, or a run directory."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, checkpoint = load_model(name_or_path, device)
    return Pipeline(model, checkpoint)


__all__ = ["DetectedObject", "Pipeline", "RenderedObject", "SceneResult", "load"]
