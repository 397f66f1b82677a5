"""Users' own images: finding them, reading them, and fitting them to the model's canvas.

Any Pillow format is read as grey in [0, 1] for a grey model, or as RGB (3, H, W) for a colour
one (``read_image``'s ``channels``). An image that fits the canvas is padded around (objects
keep their size in pixels); a larger one is shrunk to fit first. The ``CanvasFit`` of each
image maps boxes on the canvas back to the image's own pixels.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airscene.errors import AirsceneError

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pbm",
)


class ImageError(AirsceneError):
    """An image that cannot be read, or an input path that names no images."""


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files, directories (their image files, sorted) and glob patterns into paths.

    A path that does not exist, or a directory or pattern with no images, is an error.
    """
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise ImageError(
                    f"{path}: directory holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)"
                )
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise ImageError(f"{text}: pattern matches no files")
            paths.extend(found)
        else:
            raise ImageError(f"{path}: no such file or directory")
    return paths


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """An image file as grey float32 (H, W) in [0, 1], or with ``channels`` 3 as RGB (3, H, W)
    (``as_channels``); unreadable files raise ``ImageError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return as_channels(image, channels)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


def to_grey(image) -> np.ndarray:
    """A PIL image, numpy array or tensor as grey float32 (H, W) in [0, 1].

    Arrays may be (H, W), (H, W, 1|3|4) or (1|3|4, H, W); integer arrays are read as 0..255,
    float arrays (and floating-point image files) as 0..1. Transparent images are composited
    over a background chosen from their opaque pixels (``_composite``), never silently black.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32)
            return np.clip(array / max(float(array.max()), 1.0), 0, 1)
        if image.mode == "F":  # floating point: [0, 1] as it is, [0, 255] as 8-bit values
            array = np.asarray(image, dtype=np.float32)
            return to_grey(array / (255.0 if float(np.nanmax(array, initial=0)) > 1 else 1.0))
        if not _has_alpha(image):
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    else:
        array = _channels_last(image)
    if array.ndim == 3:
        if array.shape[-1] == 1:
            array = array[..., 0]
        elif array.shape[-1] in (3, 4):
            grey = array[..., :3].astype(np.float32) @ np.array(
                [0.299, 0.587, 0.114], dtype=np.float32
            )
            array = grey if array.shape[-1] == 3 else _composite(grey, array[..., 3])
    if array.ndim != 2 or min(array.shape) == 0:
        raise ImageError(
            f"expected a 2-D grey or colour image, got an array of shape {np.shape(image)}"
        )
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ImageError("image holds NaN or infinite values")
    return np.clip(array, 0.0, 1.0)


# A colour image whose channels differ by more than this (at its 99th percentile pixel) is not
# grey: more than JPEG's chroma noise on a grey scan saved as RGB.
GREY_SPREAD = 0.1
# Pillow's modes of colour images without transparency (read through RGB).
COLOUR_MODES = ("RGB", "P", "CMYK", "YCbCr", "LAB", "HSV")


def _has_alpha(image) -> bool:
    """Whether a PIL image has transparency (an alpha band, or a palette's transparent entry)."""
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def as_channels(image, channels: int) -> np.ndarray:
    """A PIL image, array or tensor as the model reads it: grey (H, W) for ``channels`` 1
    (``to_grey``), RGB (3, H, W) for 3 (``to_colour``). An image of the other kind is refused
    in one line: a colour image for a grey model (its channels differ), a grey one for a colour
    model."""
    if channels == 3:
        return to_colour(image)
    if _colour_spread(image) > GREY_SPREAD:
        raise ImageError(
            "a colour image, and this model reads grey images: convert it to grey first, or use "
            "a colour model (to train one: airscene train --kind sprites --inference grid "
            "--data DIR)"
        )
    return to_grey(image)


def _colour_spread(image) -> float:
    """How far a colour image's channels lie apart (the 99th percentile pixel's max - min, in
    [0, 1]); 0 for a grey image or one that cannot be read as colour."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode != "RGBA" and image.mode not in COLOUR_MODES:
            return 0.0
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        try:
            array = _channels_last(image)
        except ImageError:
            return 0.0
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            return 0.0
        array = array[..., :3]
    spread = array.max(-1) - array.min(-1)
    return float(np.quantile(spread, 0.99)) if spread.size else 0.0


def _channels_last(image) -> np.ndarray:
    """An array or tensor as float32 in [0, 1], channels last where it has any."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        array = array.astype(np.float32) / (1.0 if array.dtype == np.bool_ else 255.0)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    return np.asarray(array, dtype=np.float32)


def to_colour(image) -> np.ndarray:
    """A PIL image, numpy array or tensor as RGB float32 (3, H, W) in [0, 1].

    Arrays may be (H, W, 3|4) or (3|4, H, W). A transparent image is composited over its own
    background estimate (the median colour of its opaque border pixels, or of all its opaque
    pixels), never silently over black. A grey image is refused: a colour model was trained on
    colour, and a grey image tells it nothing of the colours it expects."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if _has_alpha(image):
            array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        elif image.mode in COLOUR_MODES:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        else:
            raise ImageError(
                f"a grey image (mode {image.mode}), and this model reads colour images (3 "
                "channels): use a grey model, or save the image as RGB"
            )
    else:
        array = _channels_last(image)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
        raise ImageError(
            "a grey image, and this model reads colour images (3 channels): use a grey model, "
            "or give it as RGB"
        )
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) == 0:
        raise ImageError(
            f"expected a colour image (H, W, 3|4) or (3|4, H, W), got an array of shape "
            f"{np.shape(image)}"
        )
    if not np.all(np.isfinite(array)):
        raise ImageError("image holds NaN or infinite values")
    array = np.clip(array, 0.0, 1.0)
    if array.shape[-1] == 4:
        array = _composite_colour(array[..., :3], array[..., 3])
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _composite_colour(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A colour image (H, W, 3) with transparency ``alpha`` over its own background estimate:
    the median colour of the opaque pixels on its border (a background usually reaches the
    edge), else of all its opaque pixels. Nothing opaque at all is an error."""
    opaque = alpha > 0.5
    if not opaque.any():
        raise ImageError("the image is transparent everywhere (its alpha is 0): nothing to see")
    border = np.zeros_like(opaque)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    ring = opaque & border
    background = np.median(rgb[ring if ring.any() else opaque], axis=0)
    return alpha[..., None] * rgb + (1 - alpha[..., None]) * background


def _composite(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A grey image with transparency ``alpha`` in [0, 1], over a background chosen from its
    opaque pixels: white behind dark strokes, black behind light ones (black would hide dark
    strokes). An image with nothing opaque is an error: there is nothing to see."""
    alpha = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    opaque = alpha > 0.5
    if not opaque.any():
        raise ImageError("the image is transparent everywhere (its alpha is 0): nothing to see")
    background = 1.0 if float(np.median(grey[opaque])) < 0.5 else 0.0
    return alpha * grey + (1 - alpha) * background


def looks_dark_on_light(image: np.ndarray) -> bool:
    """Whether objects are dark on a light background: the border is mostly bright."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(np.median(border)) > 0.5


@dataclass(frozen=True)
class CanvasFit:
    """How an image was placed on the canvas: canvas pixel = image pixel * scale + offset."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int  # the image's own size
    height: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``x0, y0, x1, y1`` (..., 4) on the canvas -> in the image's pixels, clipped to it."""
        out = np.array(boxes, dtype=np.float64, copy=True)
        out[..., 0::2] = (out[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.offset_y) / self.scale_y
        out[..., 0::2] = np.clip(out[..., 0::2], 0, self.width)
        out[..., 1::2] = np.clip(out[..., 1::2], 0, self.height)
        return out


def fit_to_canvas(image: np.ndarray, canvas_size: int) -> tuple[np.ndarray, CanvasFit]:
    """Place an image, grey (H, W) or colour (C, H, W), on a square canvas: shrunk (keeping its
    aspect ratio) only if larger than the canvas, then centred. A grey image is padded with
    the paper's black background (0); a colour one by repeating its edge pixels, so that its
    own background goes on (a colour model has learned backgrounds, not a black frame)."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[-2:]
    scale = min(1.0, canvas_size / max(height, width))
    if scale < 1.0:
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        planes = torch.from_numpy(np.ascontiguousarray(image)).reshape(1, -1, height, width)
        image = (
            F.interpolate(
                planes, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )[0]
            .reshape(*image.shape[:-2], new_h, new_w)
            .numpy()
        )
        scale_x, scale_y = new_w / width, new_h / height
    else:
        new_h, new_w, scale_x, scale_y = height, width, 1.0, 1.0
    top, left = (canvas_size - new_h) // 2, (canvas_size - new_w) // 2
    if image.ndim == 3:
        pad = ((0, 0), (top, canvas_size - new_h - top), (left, canvas_size - new_w - left))
        canvas = np.pad(image, pad, mode="edge").astype(np.float32)
    else:
        canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
        canvas[top : top + new_h, left : left + new_w] = image
    return canvas, CanvasFit(scale_x, scale_y, float(left), float(top), width, height)


# ---------------------------------------------------------------------------------------------
# A training set of the user's own images


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)


def _read_counts_file(path: Path, names: list[str]) -> np.ndarray:
    """Counts aligned with ``names`` from a CSV (file,count), a JSON list, a JSON mapping
    file -> count, or an airscene ground_truth.json ({"images": [{"file", "count"}]})."""
    import csv
    import json

    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as file:
                mapping = {row["file"]: int(row["count"]) for row in csv.DictReader(file)}
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "images" in data:
                data = {item["file"]: int(item["count"]) for item in data["images"]}
            if isinstance(data, list):
                if len(data) != len(names):
                    raise ImageError(f"{path}: {len(data)} counts for {len(names)} images")
                return np.asarray(data, dtype=np.int64)
            mapping = {str(k): int(v) for k, v in data.items()}
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ImageError(f"{path}: not a readable counts file ({error})") from None
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ImageError(f"{path}: no count for {len(missing)} images (first: {missing[0]})")
    return np.asarray([mapping[name] for name in names], dtype=np.int64)


def _array_images(
    array: np.ndarray, source: str, canvas_size: int, channels: int = 1
) -> np.ndarray:
    """(N, H, W[, C]) or (N, C, H, W) images -> (N, S, S) uint8 on the canvas, or with
    ``channels`` 3 (N, 3, S, S)."""
    if array.ndim == 4 and array.shape[1] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 1, -1)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or len(array) == 0:
        raise ImageError(
            f"{source}: expected images (N, H, W) or (N, H, W, C), got shape {array.shape}"
        )
    if (
        channels == 1
        and array.ndim == 3
        and array.shape[1:] == (canvas_size, canvas_size)
        and array.dtype == np.uint8
    ):
        return np.ascontiguousarray(array)
    try:
        return np.stack(
            [
                _to_uint8(fit_to_canvas(as_channels(image, channels), canvas_size)[0])
                for image in array
            ]
        )
    except ImageError as error:
        raise ImageError(f"{source}: {error}") from None


def load_image_dataset(
    path: str | Path,
    canvas_size: int,
    array_name: str = "x",
    counts: str | None = None,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The user's training images as (N, S, S) uint8 on the canvas (with ``channels`` 3:
    (N, 3, S, S) RGB), and their counts if known.

    ``path``: a folder of images (dark-on-light grey ones are inverted, each is fitted to the
    canvas) or a ``.npy``/``.npz`` array; arrays that need pickle are never loaded. An image of
    the other kind (colour for grey, grey for colour) is an error naming it.
    """
    path = Path(path)
    count_array = None
    if path.is_dir():
        files = find_images([path])
        images = []
        for file in files:
            image = read_image(file, channels)
            if channels == 1 and looks_dark_on_light(image):
                image = 1.0 - image
            images.append(_to_uint8(fit_to_canvas(image, canvas_size)[0]))
        names = [file.name for file in files]
        counts_file = (
            Path(counts)
            if counts
            else next(
                (path / n for n in ("counts.csv", "ground_truth.json") if (path / n).is_file()),
                None,
            )
        )
        if counts_file is not None:
            count_array = _read_counts_file(counts_file, names)
        return np.stack(images), count_array
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ImageError(f"{path}: expected a folder of images or a .npy/.npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ValueError as error:  # object arrays would need pickle, which is never loaded
        raise ImageError(
            f"{path}: cannot be read without pickle, which is never loaded ({error})"
        ) from None
    except (OSError, EOFError) as error:
        raise ImageError(f"{path}: not a readable .npy/.npz file ({error})") from None
    try:
        if isinstance(loaded, np.ndarray):
            array = loaded
        else:
            with loaded:
                if array_name not in loaded.files:
                    raise ImageError(
                        f"{path}: no array {array_name!r} (it holds {', '.join(loaded.files)})"
                    )
                array = loaded[array_name]
                counts_name = counts or ("counts" if "counts" in loaded.files else None)
                if counts_name is not None and counts_name in loaded.files:
                    count_array = np.asarray(loaded[counts_name]).astype(np.int64).reshape(-1)
                    counts = None
    except ValueError as error:
        raise ImageError(
            f"{path}: array {array_name!r} cannot be read without pickle ({error})"
        ) from None
    images = _array_images(array, str(path), canvas_size, channels)
    if counts is not None:
        count_array = _read_counts_file(Path(counts), [str(i) for i in range(len(images))])
    if count_array is not None and len(count_array) != len(images):
        raise ImageError(f"{path}: {len(count_array)} counts for {len(images)} images")
    return images, count_array
