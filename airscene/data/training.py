"""What a run trains and evaluates on: the training images and held-out scenes of a config, and
images turned into the model's input."""

from __future__ import annotations

import numpy as np
import torch

from airscene.config import RunConfig
from airscene.data.family import GroundTruth
from airscene.data.images import load_image_dataset
from airscene.data.scenes import Scenes
from airscene.errors import AirsceneError
from airscene.registry import scene_family


def training_data(config: RunConfig) -> tuple[np.ndarray, np.ndarray | None, GroundTruth]:
    """Training images (N, S, S) uint8 ((N, 3, S, S) for a colour model), their counts if
    known, and the held-out scenes.

    Generated data (``data.kind``'s scene family, ``airscene.registry``): its train scenes and
    its held-out test scenes (for Multi-MNIST, from MNIST's train and test digits). A data path:
    the user's images, the last ``holdout_fraction`` of them held out (counts, if given, turn on
    count accuracy; they never reach the model's objective).
    """
    data = config.data
    if data.data_path is None:
        family = scene_family(data.kind)
        train = family.load(data, "train")
        return train.images, train.counts, family.load(data, "test")
    images, counts = load_image_dataset(
        data.data_path,
        config.model.canvas_size,
        data.data_array,
        data.data_counts,
        config.model.channels,
    )
    held = int(round(len(images) * data.holdout_fraction))
    if len(images) - held < 1:
        raise AirsceneError(f"{data.data_path}: {len(images)} images leave none to train on")
    split = len(images) - held
    held_out = Scenes.unlabelled(images[split:], counts[split:] if counts is not None else None)
    return images[:split], (counts[:split] if counts is not None else None), held_out


def images_to_tensor(
    images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 images (B, H, W) or (B, C, H, W), or float ones -> float32 in [0, 1] on
    ``device``, the same shape."""
    tensor = torch.as_tensor(images)
    if tensor.dtype == torch.uint8:
        return tensor.to(device).float().div_(255.0)
    return tensor.to(device=device, dtype=torch.float32)
