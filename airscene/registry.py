"""Where each kind lives: the object models (what one object is and how objects make an image) and
the scene families (what data a model trains and is evaluated on), by the ``kind`` their configs
name (``ModelConfig.objects.kind``, ``DataConfig.kind``).

Everything that differs between kinds is a method of the object model or of the scene family, so
the loop, the objective, the verbs and the figures never ask which kind they hold. Adding a kind
is adding its module and one line here (and its config to ``airscene.config``); an entry is a
``"module:name"`` string, imported when first asked for, so that neither the object modules nor
the data modules import each other to find the list.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airscene.errors import AirsceneError

if TYPE_CHECKING:
    from airscene.config import ModelConfig
    from airscene.data.family import SceneFamily
    from airscene.objects import ObjectModel

# Object models by ``ObjectConfig.kind``: each class builds itself with ``from_config``.
OBJECT_MODELS: dict[str, Any] = {
    "glimpse": "airscene.objects:GlimpseObjects",
    "render3d": "airscene.objects3d:RenderedObjects",
    "masked": "airscene.masked_objects:MaskedObjects",
}

# Inference schemes by ``ModelConfig.inference``: each class is built as ``Scheme(config, objects)``
# and returns ``airscene.model.Inference`` from ``model(x)``.
INFERENCE_SCHEMES: dict[str, Any] = {
    "sequential": "airscene.model:AIR",
    "grid": "airscene.grid:GridAIR",
}

# Scene families by ``DataConfig.kind``.
SCENE_FAMILIES: dict[str, Any] = {
    "multi-mnist": "airscene.data.scenes:MULTI_MNIST",
    "scenes3d": "airscene.data.scenes3d:SCENES3D",
    "scattered-digits": "airscene.data.scattered:SCATTERED_DIGITS",
    "noisy-mnist": "airscene.data.scenes:NOISY_MNIST",
    "grid-mnist": "airscene.data.scenes:GRID_MNIST",
    "cluttered-mnist": "airscene.data.scenes:CLUTTERED_MNIST",
    "sprites": "airscene.data.sprites:SPRITES",
}


def _entry(table: dict[str, Any], kind: str, what: str) -> Any:
    if kind not in table:
        raise AirsceneError(f"unknown {what} {kind!r} (known: {', '.join(table)})")
    entry = table[kind]
    if not isinstance(entry, str):  # registered as the object itself
        return entry
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def object_model_class(kind: str) -> type[ObjectModel]:
    """The object model class of ``kind``."""
    return _entry(OBJECT_MODELS, kind, "object model")


def build_objects(config: ModelConfig) -> ObjectModel:
    """The object model ``config.objects`` describes, for a model of ``config``."""
    return object_model_class(config.objects.kind).from_config(config)


def inference_scheme(name: str, objects: str | None = None) -> Any:
    """The model class of inference scheme ``name``: for objects of kind ``objects``, the object
    model's own one where it has one (``ObjectModel.inference_schemes``)."""
    if objects is not None and name in object_model_class(objects).inference_schemes:
        return _entry(object_model_class(objects).inference_schemes, name, "inference scheme")
    return _entry(INFERENCE_SCHEMES, name, "inference scheme")


def scene_family(kind: str) -> SceneFamily:
    """The scene family of data ``kind``."""
    return _entry(SCENE_FAMILIES, kind, "data kind")
