"""The training loop: optimisers, the z_pres prior schedule, logging and checkpoints.

The loop only optimises: the model (``airscene.model``) returns latents and log-probabilities,
the objective (``airscene.objective``) turns them into losses.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.checkpoint import save_checkpoint
from airscene.config import RunConfig, TrainConfig, to_dict
from airscene.data.scenes import load_scenes
from airscene.errors import AirsceneError
from airscene.evaluate import evaluate, images_to_tensor
from airscene.model import AIR
from airscene.networks import BaselineNetwork
from airscene.objective import SignalNormaliser, air_objective

METRIC_FIELDS = (
    "step",
    "train_seconds",
    "loss",
    "elbo",
    "count_accuracy",
    "z_pres_prior",
    "steps_per_second",
    "eval_count_accuracy",
    "eval_elbo",
    "eval_mean_iou",
)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AirsceneError("--device cuda asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def z_pres_prior_at(step: int, final: float, config: TrainConfig) -> float:
    """rho at ``step``: geometric interpolation from ``z_pres_prior_start`` to ``final``."""
    if config.z_pres_prior_start is None or config.z_pres_prior_anneal_steps == 0:
        return final
    progress = min(1.0, step / config.z_pres_prior_anneal_steps)
    return math.exp(
        (1 - progress) * math.log(config.z_pres_prior_start) + progress * math.log(final)
    )


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The model's learning rate at ``step`` (1-based) under the configured schedule."""
    if config.lr_schedule == "constant" or config.steps <= 1:
        return config.learning_rate
    progress = (step - 1) / (config.steps - 1)
    fraction = config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )
    return config.learning_rate * fraction


def git_revision() -> str | None:
    """The git commit of the source tree, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    train_seconds: float
    final_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise AirsceneError(
            f"{run_dir}: run directory exists and is not empty; pass --force to replace it"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def train(
    config: RunConfig,
    run_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> TrainResult:
    """Train AIR (or DAIR) with ``config``, writing config, metrics, TensorBoard scalars and
    checkpoints into ``run_dir``. Returns the run's summary."""
    tc = config.train
    run_dir = Path(run_dir)
    _prepare_run_dir(run_dir, overwrite)
    device = resolve_device(tc.device)
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    provenance = {
        "command": command if command is not None else sys.argv,
        "git_revision": git_revision(),
    }
    (run_dir / "config.json").write_text(
        json.dumps({"config": to_dict(config), **provenance}, indent=2)
    )

    train_scenes = load_scenes(config.data, "train")
    eval_scenes = load_scenes(config.data, "test")[: tc.eval_scenes]
    train_images = torch.from_numpy(train_scenes.images).to(device)  # uint8, (N, H, W)
    train_counts = torch.from_numpy(train_scenes.counts).to(device)

    torch.manual_seed(tc.seed)  # parameter initialisation
    model = AIR(config.model).to(device)
    baseline = BaselineNetwork(
        config.model.canvas_size**2, model.latent_dim, config.model.baseline_lstm_size
    ).to(device)
    normaliser = SignalNormaliser().to(device) if tc.normalise_signal else None
    # The fused Adam kernel updates all parameters in one pass: a third of a CPU step otherwise.
    model_optimiser = torch.optim.Adam(model.parameters(), lr=tc.learning_rate, fused=True)
    baseline_optimiser = torch.optim.Adam(
        baseline.parameters(), lr=tc.baseline_learning_rate, fused=True
    )
    noise = torch.Generator(device=device).manual_seed(tc.seed + 1)
    batch_order = np.random.default_rng(np.random.SeedSequence([tc.seed, 2]))

    writer = _tensorboard(run_dir / "tensorboard")
    metrics_file = open(run_dir / "metrics.csv", "w", newline="")
    metrics_csv = csv.DictWriter(metrics_file, fieldnames=METRIC_FIELDS)
    metrics_csv.writeheader()
    history: list[dict[str, Any]] = []
    sums = torch.zeros(3, device=device)  # loss, elbo, count hits since the last log line
    logged_images = 0
    train_seconds = 0.0
    last_log_time, last_log_step = 0.0, 0
    skipped = 0
    bar = _progress(tc.steps, progress)
    row: dict[str, Any] = {}

    def checkpoint(step: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(
            run_dir / "checkpoints" / f"step-{step:09d}",
            config,
            model,
            step,
            metrics,
            baseline=baseline,
            trainer_state={
                "model_optimiser": model_optimiser.state_dict(),
                "baseline_optimiser": baseline_optimiser.state_dict(),
                "noise_rng": noise.get_state(),
                "normaliser": normaliser.state_dict() if normaliser is not None else {},
            },
            extra=provenance,
        )

    try:
        for step in range(1, tc.steps + 1):
            started = time.perf_counter()
            rho = z_pres_prior_at(step, config.model.z_pres_prior, tc)
            for group in model_optimiser.param_groups:
                group["lr"] = learning_rate_at(step, tc)
            index = torch.from_numpy(batch_order.integers(0, len(train_images), tc.batch_size)).to(
                device
            )
            x = train_images[index].float().div_(255.0)

            inference = model(x, generator=noise, z_pres_prior=rho)
            baselines = baseline(x.flatten(1), inference.previous_latents().detach())
            objective = air_objective(inference, baselines, normaliser)
            if not torch.isfinite(objective.loss) or not torch.isfinite(objective.baseline_loss):
                skipped += 1
                if skipped > 10:
                    raise AirsceneError(
                        f"training diverged: {skipped} non-finite losses in a row at step {step}"
                    )
                continue
            skipped = 0
            model_optimiser.zero_grad(set_to_none=True)
            baseline_optimiser.zero_grad(set_to_none=True)
            objective.loss.backward()
            objective.baseline_loss.backward()
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            model_optimiser.step()
            baseline_optimiser.step()

            with torch.no_grad():
                sums += torch.stack(
                    [
                        objective.loss.detach(),
                        objective.elbo.mean(),
                        (inference.count == train_counts[index]).float().mean(),
                    ]
                )
            logged_images += 1
            train_seconds += time.perf_counter() - started

            if step % tc.log_every == 0 or step == tc.steps:
                loss, elbo, accuracy = (sums / logged_images).tolist()
                speed = (step - last_log_step) / max(train_seconds - last_log_time, 1e-9)
                row = {
                    "step": step,
                    "train_seconds": round(train_seconds, 3),
                    "loss": loss,
                    "elbo": elbo,
                    "count_accuracy": accuracy,
                    "z_pres_prior": rho,
                    "steps_per_second": speed,
                }
                sums.zero_()
                logged_images = 0
                last_log_time, last_log_step = train_seconds, step
                if tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
                    result = evaluate(model, eval_scenes)
                    row.update(
                        eval_count_accuracy=result.count_accuracy,
                        eval_elbo=result.elbo,
                        eval_mean_iou=result.mean_iou,
                    )
                    if writer is not None:
                        _log_reconstructions(writer, model, eval_scenes.images[:8], step)
                metrics_csv.writerow(row)
                metrics_file.flush()
                history.append(row)
                if writer is not None:
                    for key, value in row.items():
                        if key != "step":
                            writer.add_scalar(key, value, step)
                bar.set_postfix(
                    loss=f"{loss:.1f}",
                    acc=f"{accuracy:.3f}",
                    **(
                        {"eval": f"{row['eval_count_accuracy']:.3f}"}
                        if "eval_count_accuracy" in row
                        else {}
                    ),
                    sps=f"{speed:.1f}",
                )
            bar.update(1)
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                checkpoint(step, row)
    finally:
        bar.close()
        metrics_file.close()
        if writer is not None:
            writer.close()
    return TrainResult(
        run_dir=run_dir,
        steps=tc.steps,
        train_seconds=train_seconds,
        final_metrics=row,
        history=history,
    )


@torch.no_grad()
def _log_reconstructions(writer, model: AIR, images: np.ndarray, step: int) -> None:
    """TensorBoard image: held-out scenes (top row) above their reconstructions (bottom row)."""
    was_training = model.training
    model.eval()
    x = images_to_tensor(images, next(model.parameters()).device)
    canvas = model(x, sample=False).canvas.clamp(0, 1)
    grid = torch.cat([torch.cat(list(x), dim=1), torch.cat(list(canvas), dim=1)], dim=0)  # (2H, 8W)
    writer.add_image("reconstructions", grid.unsqueeze(0).cpu(), step)
    model.train(was_training)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, dynamic_ncols=True, desc="train", file=sys.stderr)


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except (
        ImportError
    ):  # tensorboard is a dependency, but a broken install should not stop training
        return None
    return SummaryWriter(log_dir=str(directory))
