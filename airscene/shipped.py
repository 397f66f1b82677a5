"""The models shipped inside the package (``airscene/pretrained/``), by name, and what each one
is: read from its ``checkpoint.json`` and ``eval.json`` alone, without PyTorch, so that
``airscene models`` and every ``--model`` help can list them at once."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Short names for ``--model`` and ``airscene.load(...)`` -> their folder under pretrained/.
PRETRAINED = {
    "default": "air-multi-mnist",
    "conv-dair": "air-multi-mnist-conv-dair",
    "scenes3d": "air-scenes3d",
    "many-digits": "air-many-digits",
    "cluttered-digits": "air-cluttered-digits",
    "sprites": "air-sprites",
}
NAMES = ", ".join(f"'{name}'" for name in PRETRAINED)


def pretrained_dir(name: str) -> Path:
    """The folder of a model shipped inside the package."""
    return Path(str(resources.files("airscene") / "pretrained" / PRETRAINED.get(name, name)))


@dataclass
class ShippedModel:
    """One shipped model, as ``airscene models`` lists it."""

    name: str
    folder: Path
    summary: str  # the first line of its README
    trained_on: str  # the data kind, its counts and canvas
    figures: dict[str, float]  # its eval.json's headline figures


def shipped_models() -> list[ShippedModel]:
    """Every shipped model, in the order of ``PRETRAINED``."""
    found = []
    for name in PRETRAINED:
        folder = pretrained_dir(name)
        meta = json.loads((folder / "checkpoint.json").read_text())
        data, model = meta["config"]["data"], meta["config"]["model"]
        counts = ", ".join(map(str, data["counts"]))
        kind = "DAIR" if model["dair"] else "AIR"
        if model.get("inference") == "grid":
            kind = "AIR with grid inference"
        if model.get("background", "none") != "none":
            kind += f" over a {model['background']} background"
        trained_on = (
            f"{kind}, {model['objects']['kind']} objects, on {data['kind']} scenes of "
            f"{counts} objects, {data['canvas_size']}x{data['canvas_size']}"
        )
        figures = json.loads((folder / "eval.json").read_text())
        headline = {
            key: value
            for key, value in figures.items()
            if isinstance(value, float) and key not in ("elbo", "log_px")
        }
        readme = (folder / "README.md").read_text().splitlines()
        summary = readme[0].lstrip("# ") if readme else ""
        found.append(ShippedModel(name, folder, summary, trained_on, headline))
    return found


def unknown_model(text: str) -> str:
    """Why ``text`` names no model: the shipped names, and the nearest if it looks misspelt."""
    near = difflib.get_close_matches(text, PRETRAINED, n=1, cutoff=0.6)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return f"{text}: no such checkpoint, run directory or shipped model ({NAMES}){hint}"
