"""airscene: Attend, Infer, Repeat (Eslami et al., NIPS 2016) in PyTorch.

Find, count and describe the objects in an image without labels.
"""

from airscene.checkpoint import load_model
from airscene.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from airscene.data import Scenes, load_mnist, load_scenes
from airscene.errors import AirsceneError
from airscene.evaluate import Evaluation, evaluate
from airscene.model import AIR, build_model
from airscene.pipeline import Pipeline, load
from airscene.provenance import __version__
from airscene.train import train

__all__ = [
    "AIR",
    "AirsceneError",
    "DataConfig",
    "Evaluation",
    "ModelConfig",
    "Pipeline",
    "RunConfig",
    "Scenes",
    "TrainConfig",
    "__version__",
    "build_model",
    "evaluate",
    "load",
    "load_mnist",
    "load_model",
    "load_scenes",
    "train",
]
