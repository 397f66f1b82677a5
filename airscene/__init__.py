"""airscene: Attend, Infer, Repeat (Eslami et al., NIPS 2016) in PyTorch.

Find, count and describe the objects in an image without labels.

The names below are imported when first used, so that ``airscene --help`` and the light
modules (``airscene.config``, ``airscene.cli``) do not import PyTorch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "AIR": "airscene.model",
    "AirsceneError": "airscene.errors",
    "DataConfig": "airscene.config",
    "Evaluation": "airscene.evaluate",
    "ModelConfig": "airscene.config",
    "Pipeline": "airscene.pipeline",
    "RunConfig": "airscene.config",
    "Scenes": "airscene.data",
    "TrainConfig": "airscene.config",
    "__version__": "airscene.provenance",
    "build_model": "airscene.model",
    "evaluate": "airscene.evaluate",
    "flush_denormals": "airscene.floats",
    "load": "airscene.pipeline",
    "load_mnist": "airscene.data",
    "load_model": "airscene.checkpoint",
    "load_scenes": "airscene.data",
    "train": "airscene.train",
}

__all__ = sorted(_EXPORTS)


class _Function:
    """A package attribute that is always the function of its name in ``module``, although a
    module of the same name exists: importing that module, which sets the package's attribute of
    its name, leaves this one as it is (the module stays in ``sys.modules``)."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, package: Any, owner: type | None = None) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __set__(self, package: Any, module: Any) -> None:
        pass


class _Package(types.ModuleType):
    """The package module: ``airscene.train`` and ``airscene.evaluate`` are functions."""

    train = _Function("airscene.train")
    evaluate = _Function("airscene.evaluate")


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'airscene' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
