"""MNIST from the four standard idx files (gzipped or not), embedded or from a user's directory.

The idx format (LeCun et al.): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, each dimension as a big-endian int32, then the data. Every field is validated so a
wrong or truncated file is reported by name with what is wrong, never as a numpy traceback.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from airscene.errors import AirsceneError

SPLITS = ("train", "test")
_FILE_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


class MnistFormatError(AirsceneError):
    """An MNIST file that is missing, unreadable, truncated or not what its name says."""


@dataclass(frozen=True)
class MnistSplit:
    """One split of MNIST: ``images`` (N, 28, 28) uint8 in [0, 255], ``labels`` (N,) uint8."""

    images: np.ndarray
    labels: np.ndarray
    fingerprint: str  # sha256 of the two source files: part of every scene-cache key


def embedded_dir() -> Path:
    """The directory of the MNIST copy shipped inside the package."""
    return Path(str(resources.files("airscene.data") / "mnist"))


def find_file(directory: Path, split: str, kind: str) -> Path:
    """The idx file for ``split``/``kind`` in ``directory``: ``.gz`` or plain, '-' or '.idx'."""
    stem = _FILE_STEMS[(split, kind)]
    dotted = stem.replace("-idx", ".idx")  # the other common spelling, e.g. train-images.idx3-ubyte
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    raise MnistFormatError(
        f"{directory}: no MNIST {split} {kind} file (expected {stem}.gz or {stem})"
    )


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read one idx file (optionally gzipped) into a uint8 array, validating every header field."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MnistFormatError(f"{path}: cannot read file ({error.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:
            raise MnistFormatError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(raw) < 4:
        raise MnistFormatError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise MnistFormatError(f"{path}: bad magic number {raw[:4].hex()} (not an idx file)")
    if raw[2] != _UBYTE:
        raise MnistFormatError(
            f"{path}: data type code 0x{raw[2]:02x}, expected 0x08 (unsigned byte)"
        )
    ndim = raw[3]
    if ndim != expected_ndim:
        raise MnistFormatError(f"{path}: {ndim} dimensions in header, expected {expected_ndim}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise MnistFormatError(f"{path}: truncated header ({len(raw)} of {header_size} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    n_values = int(np.prod(shape))
    n_data = len(raw) - header_size
    if n_data != n_values:
        what = "truncated" if n_data < n_values else "trailing bytes after data"
        raise MnistFormatError(
            f"{path}: {what}: header shape {shape} needs {n_values} bytes of data, file has {n_data}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def _load_split_cached(directory: str, split: str) -> MnistSplit:
    folder = Path(directory)
    if not folder.is_dir():
        raise MnistFormatError(f"{folder}: MNIST directory does not exist")
    image_path = find_file(folder, split, "images")
    label_path = find_file(folder, split, "labels")
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise MnistFormatError(f"{image_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) == 0:
        raise MnistFormatError(f"{image_path}: holds no images")
    if len(labels) != len(images):
        raise MnistFormatError(
            f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}"
        )
    if labels.max() > 9:
        raise MnistFormatError(f"{label_path}: label {int(labels.max())} out of range 0..9")
    fingerprint = hashlib.sha256((_sha256(image_path) + _sha256(label_path)).encode()).hexdigest()
    images.setflags(write=False)
    labels.setflags(write=False)
    return MnistSplit(images=images, labels=labels, fingerprint=fingerprint)


def load_mnist(split: str, mnist_dir: str | Path | None = None) -> MnistSplit:
    """Load MNIST ``split`` ('train' or 'test') from ``mnist_dir`` or the embedded copy.

    Arrays are read-only and cached in memory; a wrong file raises ``MnistFormatError``
    naming the file and what is wrong with it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(mnist_dir).expanduser().resolve() if mnist_dir else embedded_dir()
    return _load_split_cached(str(directory), split)
