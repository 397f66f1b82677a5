"""airscene: Attend, Infer, Repeat (Eslami et al., NIPS 2016) in PyTorch.

Find, count and describe the objects in an image without labels.
"""

from importlib.metadata import PackageNotFoundError, version

from airscene.checkpoint import load_model
from airscene.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from airscene.data import Scenes, load_mnist, load_scenes
from airscene.errors import AirsceneError
from airscene.evaluate import Evaluation, evaluate
from airscene.model import AIR
from airscene.pipeline import Pipeline, load
from airscene.train import train

try:
    __version__ = version("airscene")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

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
    "evaluate",
    "load",
    "load_mnist",
    "load_model",
    "load_scenes",
    "train",
]
