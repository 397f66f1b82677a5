"""airscene: Attend, Infer, Repeat (Eslami et al., NIPS 2016) in PyTorch.

Find, count and describe the objects in an image without labels.
"""

from importlib.metadata import PackageNotFoundError, version

from airscene.config import DataConfig
from airscene.data import Scenes, load_mnist, load_scenes
from airscene.errors import AirsceneError

try:
    __version__ = version("airscene")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["AirsceneError", "DataConfig", "Scenes", "__version__", "load_mnist", "load_scenes"]
