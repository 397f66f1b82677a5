"""The MNIST idx reader: the embedded copy, user directories, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from airscene.cli import main
from airscene.data.mnist import MnistFormatError, embedded_dir, load_mnist, read_idx
from airscene.errors import AirsceneError

# Published per-class counts of MNIST: a check that the embedded copy is the real data set.
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------------------------
# Good files


@pytest.mark.parametrize(
    ("split", "n", "class_counts"),
    [("train", 60_000, TRAIN_CLASS_COUNTS), ("test", 10_000, TEST_CLASS_COUNTS)],
)
def test_embedded_copy_is_full_mnist(split: str, n: int, class_counts: list[int]) -> None:
    mnist = load_mnist(split)
    assert mnist.images.shape == (n, 28, 28)
    assert mnist.images.dtype == np.uint8
    assert mnist.labels.shape == (n,)
    assert mnist.labels.dtype == np.uint8
    assert mnist.labels.min() == 0 and mnist.labels.max() == 9
    assert np.bincount(mnist.labels, minlength=10).tolist() == class_counts
    # Every digit has ink, and the full 0..255 range is used.
    assert (mnist.images.reshape(n, -1).max(axis=1) > 0).all()
    assert mnist.images.max() == 255 and mnist.images.min() == 0
    assert re.fullmatch(r"[0-9a-f]{64}", mnist.fingerprint)


def test_embedded_arrays_are_read_only_and_cached() -> None:
    mnist = load_mnist("test")
    assert load_mnist("test") is mnist
    with pytest.raises(ValueError):
        mnist.images[0, 0, 0] = 1
    with pytest.raises(ValueError):
        mnist.labels[0] = 1


def test_train_and_test_are_different_files() -> None:
    train, test = load_mnist("train"), load_mnist("test")
    assert train.fingerprint != test.fingerprint
    assert not np.array_equal(train.images[:100], test.images[:100])


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation")


@pytest.mark.parametrize("split", ["train", "test"])
def test_user_directory_with_gz_and_plain_files(fake_mnist, split: str) -> None:
    names = {p.name for p in fake_mnist.dir.iterdir()}
    assert names == {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS}
    assert (fake_mnist.dir / TRAIN_IMAGES).read_bytes()[:2] == b"\x1f\x8b"
    assert (fake_mnist.dir / TRAIN_LABELS).read_bytes()[:4] == b"\x00\x00\x08\x01"

    embedded = load_mnist(split)
    user = load_mnist(split, fake_mnist.dir)
    n = N_TRAIN if split == "train" else N_TEST
    assert user.images.shape == (n, 28, 28) and user.images.dtype == np.uint8
    assert user.labels.shape == (n,) and user.labels.dtype == np.uint8
    np.testing.assert_array_equal(user.images, embedded.images[:n])
    np.testing.assert_array_equal(user.labels, embedded.labels[:n])
    assert user.fingerprint != embedded.fingerprint
    # A str path works as well as a Path, and hits the same in-memory cache.
    assert load_mnist(split, str(fake_mnist.dir)) is user


def test_dotted_file_names_are_found(fake_mnist, tmp_path: Path) -> None:
    files = {key: name.replace("-idx", ".idx") for key, name in fake_mnist.files.items()}
    directory = fake_mnist.write(tmp_path.resolve() / "dotted", files=files)
    assert (directory / "train-images.idx3-ubyte.gz").is_file()
    mnist = load_mnist("train", directory)
    np.testing.assert_array_equal(mnist.labels, load_mnist("train").labels[:N_TRAIN])


def test_fingerprint_follows_file_content(fake_mnist, tmp_path: Path) -> None:
    second = fake_mnist.write(tmp_path.resolve() / "b")
    assert load_mnist("test", fake_mnist.dir).fingerprint == load_mnist("test", second).fingerprint
    third = fake_mnist.write(tmp_path.resolve() / "c", sizes={"train": 10, "test": 199})
    assert load_mnist("test", third).fingerprint != load_mnist("test", second).fingerprint


def test_read_idx_round_trip_plain_and_gz(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    plain, packed = tmp_path / "a-idx3-ubyte", tmp_path / "a-idx3-ubyte.gz"
    plain.write_bytes(idx_bytes(array))
    packed.write_bytes(gzip.compress(idx_bytes(array)))
    for path in (plain, packed):
        out = read_idx(path, expected_ndim=3)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, array)
    assert embedded_dir().is_dir()


# ---------------------------------------------------------------------------------------------
# Broken files: each case writes one broken file into a valid fake directory and returns
# (directory given as mnist_dir, split that fails, path the message must name, message regex).

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
N_TRAIN, N_TEST = 600, 200  # digits in the fake directory (see conftest)


def _raw(directory: Path, name: str) -> bytes:
    data = (directory / name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def _write(directory: Path, name: str, raw: bytes) -> Path:
    path = directory / name
    path.write_bytes(gzip.compress(raw, mtime=0) if name.endswith(".gz") else raw)
    return path


def _train_images() -> np.ndarray:
    return load_mnist("train").images[:N_TRAIN]


def _train_labels() -> np.ndarray:
    return load_mnist("train").labels[:N_TRAIN]


def idx_bytes(array: np.ndarray) -> bytes:
    """A valid idx file for ``array`` (written independently of the conftest helper)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def bad_magic(d: Path):
    raw = _raw(d, TRAIN_LABELS)
    return d, "train", _write(d, TRAIN_LABELS, b"\x12\x34" + raw[2:]), r"bad magic number 1234"


def bad_magic_inside_gzip(d: Path):
    raw = _raw(d, TRAIN_IMAGES)
    return d, "train", _write(d, TRAIN_IMAGES, b"\x00\x01" + raw[2:]), r"bad magic number"


def wrong_type_code(d: Path):
    raw = bytearray(_raw(d, TEST_IMAGES))
    raw[2] = 0x0D  # float
    return d, "test", _write(d, TEST_IMAGES, bytes(raw)), r"type code 0x0d, expected 0x08"


def wrong_ndim(d: Path):
    flat = _train_images().reshape(N_TRAIN, 784)
    path = _write(d, TRAIN_IMAGES, idx_bytes(flat))
    return d, "train", path, r"2 dimensions in header, expected 3"


def truncated_header(d: Path):
    raw = _raw(d, TRAIN_LABELS)
    return d, "train", _write(d, TRAIN_LABELS, raw[:6]), r"truncated header \(6 of 8 bytes\)"


def too_short_for_header(d: Path):
    return d, "train", _write(d, TRAIN_LABELS, b"\x00\x00"), r"too short for an idx header"


def empty_file(d: Path):
    return d, "test", _write(d, TEST_IMAGES, b""), r"too short for an idx header \(0 bytes\)"


def truncated_data(d: Path):
    raw = _raw(d, TRAIN_IMAGES)
    path = _write(d, TRAIN_IMAGES, raw[:-100])
    return d, "train", path, r"truncated: header shape \(600, 28, 28\) needs 470400 .* has 470300"


def trailing_bytes(d: Path):
    raw = _raw(d, TEST_LABELS)
    path = _write(d, TEST_LABELS, raw + b"\x00\x00\x00")
    return d, "test", path, r"trailing bytes after data: .* needs 200 bytes of data, file has 203"


def truncated_gzip(d: Path):
    path = d / TRAIN_IMAGES
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return d, "train", path, r"corrupt or truncated gzip"


def corrupt_gzip(d: Path):
    path = d / TEST_LABELS
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(data))
    return d, "test", path, r"corrupt or truncated gzip"


def images_not_28x28(d: Path):
    path = _write(d, TRAIN_IMAGES, idx_bytes(_train_images()[:, :27, :27]))
    return d, "train", path, r"images are \(27, 27\), expected \(28, 28\)"


def label_out_of_range(d: Path):
    labels = _train_labels().copy()
    labels[17] = 12
    path = _write(d, TRAIN_LABELS, idx_bytes(labels))
    return d, "train", path, r"label 12 out of range 0\.\.9"


def label_count_mismatch(d: Path):
    path = _write(d, TRAIN_LABELS, idx_bytes(_train_labels()[:-1]))
    return d, "train", path, rf"599 labels for 600 images in {TRAIN_IMAGES}"


def missing_file(d: Path):
    (d / TRAIN_LABELS).unlink()
    return d, "train", d, r"no MNIST train labels file \(expected train-labels-idx1-ubyte\.gz"


def missing_directory(d: Path):
    gone = d / "does-not-exist"
    return gone, "train", gone, r"MNIST directory does not exist"


CORRUPTIONS: list[Callable] = [
    bad_magic,
    bad_magic_inside_gzip,
    wrong_type_code,
    wrong_ndim,
    truncated_header,
    too_short_for_header,
    empty_file,
    truncated_data,
    trailing_bytes,
    truncated_gzip,
    corrupt_gzip,
    images_not_28x28,
    label_out_of_range,
    label_count_mismatch,
    missing_file,
    missing_directory,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_broken_file_library(fake_mnist_dir: Path, corrupt: Callable) -> None:
    directory, split, path, pattern = corrupt(fake_mnist_dir)
    with pytest.raises(MnistFormatError) as caught:
        load_mnist(split, directory)
    message = str(caught.value)
    assert isinstance(caught.value, AirsceneError)
    assert message.startswith(f"{path}: "), message
    assert re.search(pattern, message), message
    assert "\n" not in message
    # Only the broken split fails: the other split of the same directory still loads.
    if directory.is_dir():
        other, n_other = ("test", N_TEST) if split == "train" else ("train", N_TRAIN)
        assert len(load_mnist(other, directory).images) == n_other


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_broken_file_cli(
    fake_mnist_dir: Path, corrupt: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _split, path, pattern = corrupt(fake_mnist_dir)
    code = main(["data", "make", "--n", "10", "--mnist-dir", str(directory)])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"airscene: error: {path}: "), err
    assert re.search(pattern, lines[0]), err
    assert "Traceback" not in err


def test_broken_file_read_idx_reports_expected_ndim(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 2), dtype=np.uint8)))
    with pytest.raises(MnistFormatError, match=r"2 dimensions in header, expected 1"):
        read_idx(path, expected_ndim=1)
    assert read_idx(path, expected_ndim=2).shape == (4, 2)


def test_unreadable_path_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "a-directory-not-a-file"
    path.mkdir()
    with pytest.raises(MnistFormatError, match=rf"^{re.escape(str(path))}: cannot read file"):
        read_idx(path, expected_ndim=1)
