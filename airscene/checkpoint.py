"""Checkpoints that describe themselves and load without executing code.

A checkpoint is a directory:
  model.safetensors     the AIR weights
  baseline.safetensors  the NVIL baseline network (and signal normaliser) weights
  trainer.pt            optimiser states and RNG states (plain tensors; read with weights_only=True)
  checkpoint.json       format version, library version, the object model's kind, step,
                        metrics and the full RunConfig

It is written into a temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from airscene.config import ConfigError, RunConfig, from_dict, to_dict
from airscene.errors import AirsceneError
from airscene.provenance import __version__
from airscene.shipped import PRETRAINED, pretrained_dir, unknown_model

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
BASELINE_FILE = "baseline.safetensors"
TRAINER_FILE = "trainer.pt"
META_FILE = "checkpoint.json"


class CheckpointError(AirsceneError):
    """A checkpoint that is missing, corrupt, from another format, or does not fit its config."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    config: RunConfig,
    model: torch.nn.Module,
    step: int,
    metrics: dict[str, Any] | None = None,
    baseline: torch.nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically; an existing one of the same name is replaced."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is not
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
            staging / MODEL_FILE,
        )
        if baseline is not None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in baseline.state_dict().items()},
                staging / BASELINE_FILE,
            )
        if trainer_state is not None:
            torch.save(trainer_state, staging / TRAINER_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "object_model": config.model.objects.kind,
            "step": step,
            "metrics": metrics or {},
            "config": to_dict(config),
            **(extra or {}),
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        for file in staging.iterdir():
            os.chmod(file, 0o666 & ~umask)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    config: RunConfig
    step: int
    metrics: dict[str, Any]
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    baseline_state: dict[str, torch.Tensor] | None

    def trainer_state(self) -> dict[str, Any] | None:
        """Optimiser and RNG states (tensors and plain containers only: no code is executed)."""
        file = self.path / TRAINER_FILE
        if not file.is_file():
            return None
        try:
            return torch.load(file, weights_only=True, map_location="cpu")
        except Exception as error:  # corrupt or foreign pickles surface as many exception types
            raise CheckpointError(f"{file}: unreadable trainer state ({error})") from None


CHECKPOINTS_DIR = "checkpoints"


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first (names sort by step)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("step-*")) if (p / META_FILE).is_file()]


class RunCheckpoints:
    """The checkpoints of one run: each saved atomically as ``checkpoints/step-NNNNNNNNN``, all
    but the newest ``keep`` deleted after a save, and the last one that was written remembered,
    so an error can say what survives."""

    def __init__(self, run_dir: Path, keep: int, last_good: Path | None = None) -> None:
        self.run_dir, self.keep, self.last_good = Path(run_dir), max(keep, 1), last_good

    def where_to_resume(self) -> str:
        """Where a failed run can go on from, for an error message."""
        if self.last_good is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.last_good}"

    def save(self, step: int, config: RunConfig, model: torch.nn.Module, **contents: Any) -> Path:
        """Write the checkpoint of ``step`` (``contents``: ``save_checkpoint``'s keywords) and
        prune the old ones; a failed write is an ``AirsceneError`` naming the last good one."""
        target = self.run_dir / CHECKPOINTS_DIR / f"step-{step:09d}"
        try:
            save_checkpoint(target, config, model, step, **contents)
        except OSError as error:
            raise AirsceneError(
                f"could not write checkpoint {target} ({error.strerror or error}); "
                f"{self.where_to_resume()}"
            ) from None
        self.last_good = target
        self.prune()
        return target

    def prune(self) -> None:
        """Delete all but the newest ``keep`` complete checkpoints (the newest is always kept)."""
        for old in run_checkpoints(self.run_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


# Names of the models shipped in airscene/pretrained: the 2D default, conv + DAIR (the downstream
# experiment's; its z_what reads digits better) and the 3D experiment's.
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint directory, its checkpoint.json, a run
    directory (its newest checkpoint), or the name of a shipped model ('default')."""
    if isinstance(path, str) and path in PRETRAINED:
        path = pretrained_dir(path)
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, MODEL_FILE):
        path = path.parent
    if (path / META_FILE).is_file():
        return path
    candidates = run_checkpoints(path)
    if candidates:
        return candidates[-1]
    if not path.exists():
        raise CheckpointError(unknown_model(str(path)))
    raise CheckpointError(f"{path}: not a checkpoint (no {META_FILE}) and holds no checkpoints")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; anything wrong raises ``CheckpointError`` in one line."""
    directory = resolve_checkpoint(path)
    meta_file = directory / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({error})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{meta_file}: checkpoint format {found!r}, this airscene reads format {FORMAT_VERSION}"
        )
    try:
        config = from_dict(RunConfig, meta["config"])
    except (KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{meta_file}: invalid config in checkpoint ({error})") from None
    kind = meta.get("object_model")
    if kind is None:
        raise CheckpointError(f"{meta_file}: names no object model (written by an older airscene)")
    if kind != config.model.objects.kind:
        raise CheckpointError(
            f"{meta_file}: says object model {kind!r}, its config holds {config.model.objects.kind!r}"
        )
    model_state = _read_weights(directory / MODEL_FILE)
    baseline_file = directory / BASELINE_FILE
    baseline_state = _read_weights(baseline_file) if baseline_file.is_file() else None
    return Checkpoint(
        path=directory,
        config=config,
        step=int(meta.get("step", 0)),
        metrics=meta.get("metrics", {}),
        meta=meta,
        model_state=model_state,
        baseline_state=baseline_state,
    )


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing weights file")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{file}: corrupt weights ({error})") from None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` into ``module``, turning any key or shape mismatch into ``CheckpointError``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: weight {key} has shape {tuple(value.shape)}, the config needs {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state)


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """The AIR model of a checkpoint or run directory, in eval mode, and the checkpoint read."""
    from airscene.model import build_model

    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint.config.model)
    load_state(model, checkpoint.model_state, checkpoint.path / MODEL_FILE)
    return model.to(device).eval(), checkpoint
