"""Typed configuration: the single source of every hyperparameter.

Each field carries its help text in ``metadata["help"]``; the command line (``airscene.cli``)
is derived from these dataclasses, and the resolved config is written as JSON next to every
artefact (data cache, checkpoints), so nothing is listed twice.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airscene.errors import AirsceneError


class ConfigError(AirsceneError, ValueError):
    """A config value out of range or of the wrong shape (reported as a one-line error)."""


def param(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its help text; tuples and other immutables only as defaults."""
    return field(default=default, metadata={"help": help, **metadata})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """Multi-MNIST scenes as in the paper: MNIST digits placed on a blank canvas."""

    canvas_size: int = param(50, "side of the square canvas in pixels (the paper: 50)")
    counts: tuple[int, ...] = param((0, 1, 2), "digit counts a scene may hold, e.g. 0,1,2 or 0,1,3")
    count_probs: tuple[float, ...] | None = param(
        None, "probability of each entry of --counts (default: uniform)"
    )
    overlap: bool = param(
        False,
        "allow digits to overlap (pixels summed, clipped to [0, 1]); default: ink boxes disjoint",
    )
    scale_range: tuple[float, float] | None = param(
        None,
        "rescale each 28x28 digit by a factor drawn uniformly from MIN,MAX (default: no rescaling)",
    )
    n_train: int = param(60_000, "number of training scenes (drawn from MNIST train digits)")
    n_test: int = param(10_000, "number of test scenes (drawn from MNIST test digits)")
    seed: int = param(0, "seed of the scene generator (train and test use separate streams)")
    mnist_dir: str | None = param(
        None, "directory with the four standard MNIST idx(.gz) files (default: the embedded copy)"
    )

    def __post_init__(self) -> None:
        _check(self.canvas_size >= 8, f"canvas_size must be >= 8, got {self.canvas_size}")
        _check(len(self.counts) > 0, "counts must name at least one digit count")
        _check(all(c >= 0 for c in self.counts), f"counts must be >= 0, got {self.counts}")
        _check(len(set(self.counts)) == len(self.counts), f"counts repeat a value: {self.counts}")
        if self.count_probs is not None:
            _check(
                len(self.count_probs) == len(self.counts),
                f"count_probs has {len(self.count_probs)} entries for {len(self.counts)} counts",
            )
            _check(all(p >= 0 for p in self.count_probs), "count_probs must be >= 0")
            _check(abs(sum(self.count_probs) - 1.0) < 1e-6, "count_probs must sum to 1")
        if self.scale_range is not None:
            low, high = self.scale_range
            _check(
                0 < low <= high, f"scale_range must satisfy 0 < MIN <= MAX, got {self.scale_range}"
            )
            _check(
                round(28 * high) <= self.canvas_size,
                f"scale_range max {high} makes digits larger than the {self.canvas_size}px canvas",
            )
        _check(self.n_train >= 0 and self.n_test >= 0, "n_train and n_test must be >= 0")

    @property
    def max_count(self) -> int:
        return max(self.counts)

    @property
    def probabilities(self) -> tuple[float, ...]:
        """Probability of each entry of ``counts`` (uniform unless given)."""
        if self.count_probs is None:
            return tuple(1.0 / len(self.counts) for _ in self.counts)
        return self.count_probs


C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build ``cls`` from a dict such as ``to_dict`` wrote; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = from_dict(hint, value)
        else:
            kwargs[name] = _coerce(hint, value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """JSON lists back to tuples where the field is a tuple."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value
