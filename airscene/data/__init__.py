"""Data: the MNIST idx reader and Multi-MNIST scene generation."""

from airscene.data.mnist import MnistFormatError, load_mnist
from airscene.data.scenes import (
    Scenes,
    export_png,
    generate_scenes,
    load_npz,
    load_scenes,
    save_npz,
)

__all__ = [
    "MnistFormatError",
    "Scenes",
    "export_png",
    "generate_scenes",
    "load_mnist",
    "load_npz",
    "load_scenes",
    "save_npz",
]
