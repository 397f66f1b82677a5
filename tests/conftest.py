"""Shared fixtures: an isolated scene cache and small, valid MNIST directories on disk."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from airscene.data.mnist import load_mnist

# The fake directory mixes gzipped and plain files, so both code paths are read.
FAKE_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
FAKE_SIZES = {"train": 600, "test": 200}


def idx_bytes(array: np.ndarray, type_code: int = 0x08, ndim: int | None = None) -> bytes:
    """Encode ``array`` as an idx file: 0, 0, type code, ndim, big-endian int32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    ndim = array.ndim if ndim is None else ndim
    header = bytes([0, 0, type_code, ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_fake_mnist(
    directory: Path, sizes: dict[str, int] | None = None, files: dict | None = None
) -> Path:
    """Write the first ``sizes[split]`` embedded digits of each split as idx files."""
    sizes = sizes or FAKE_SIZES
    files = files or FAKE_FILES
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        mnist = load_mnist(split)
        for kind, array in (("images", mnist.images[:n]), ("labels", mnist.labels[:n])):
            name = files[(split, kind)]
            data = idx_bytes(array)
            if name.endswith(".gz"):
                data = gzip.compress(data, mtime=0)
            (directory / name).write_bytes(data)
    return directory


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the scene cache at a per-test directory so no test touches ~/.cache."""
    root = tmp_path / "airscene-cache"
    monkeypatch.setenv("AIRSCENE_CACHE", str(root))
    return root


class FakeMnist:
    """A fake MNIST directory and the helpers that wrote it (tests reach them via a fixture,
    so no test module imports this conftest)."""

    files = FAKE_FILES
    sizes = FAKE_SIZES
    idx_bytes = staticmethod(idx_bytes)
    write = staticmethod(write_fake_mnist)

    def __init__(self, directory: Path) -> None:
        self.dir = directory


@pytest.fixture
def fake_mnist(tmp_path: Path) -> FakeMnist:
    """A valid user MNIST directory (600 train / 200 test digits; .gz and plain files).

    The path is resolved because ``load_mnist`` resolves it, and error messages name that path.
    """
    return FakeMnist(write_fake_mnist(tmp_path.resolve() / "mnist"))


@pytest.fixture
def fake_mnist_dir(fake_mnist: FakeMnist) -> Path:
    return fake_mnist.dir
