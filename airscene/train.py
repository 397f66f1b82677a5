"""The training loop: optimisers, the z_pres prior schedule, logging and checkpoints.

The loop only optimises: the model (``airscene.model``) returns latents and log-probabilities,
the objective (``airscene.objective``) turns them into losses.
"""

from __future__ import annotations

import csv
import ctypes
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airscene.checkpoint import (
    BASELINE_FILE,
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    load_state,
    read_checkpoint,
    save_checkpoint,
)
from airscene.config import RunConfig, TrainConfig, to_dict
from airscene.data.training import images_to_tensor, training_data
from airscene.errors import AirsceneError
from airscene.evaluate import evaluate
from airscene.model import AIR, Inference, build_model
from airscene.networks import BaselineNetwork
from airscene.objective import Objective, SignalNormaliser, air_objective
from airscene.provenance import git_revision
from airscene.rows import decided_steps

# How trainer.pt holds the Adam moments of the image projections (absent in older checkpoints,
# whose moments are (out, in)).
IMAGE_PROJECTION_LAYOUT = "in_out"

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
    "skipped_steps",
)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AirsceneError("--device cuda asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def keep_freed_memory_for_reuse() -> None:
    """Keep freed blocks of up to 32 MiB in the process's heap (glibc only).

    By default glibc hands large blocks straight back to the OS when they are freed, so every
    training step's fresh 10 MB weight gradients of the image projections page-fault anew, a
    visible part of a CPU step (benchmarks/profile_step.py). Process-wide, and harmless for a
    training process.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest allowed value
    mallopt(m_trim_threshold, 256 * 2**20)


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


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    train_seconds: float
    final_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise AirsceneError(f"{run_dir}: exists and is not a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise AirsceneError(
                f"{run_dir}: run directory exists and is not empty; pass --resume to continue it "
                "or --force to replace it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


class Trainer:
    """The optimisation state of one run, and one step of it.

    Everything a step depends on (weights, optimiser moments, the noise and minibatch random
    streams, the NVIL signal moments, the running metric sums) is in ``state()``, so a run
    resumed from a checkpoint continues bit for bit as if it had never stopped.
    """

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        tc = self.train_config = config.train
        self.config = config
        self.device = device
        keep_freed_memory_for_reuse()
        torch.manual_seed(tc.seed)  # parameter initialisation
        self.model = build_model(config.model).to(device)
        self.baseline = BaselineNetwork(
            config.model.canvas_size**2, self.model.latent_dim, config.model.baseline_lstm_size
        ).to(device)
        self.normaliser = SignalNormaliser().to(device) if tc.normalise_signal else None
        # The fused Adam kernel updates all parameters in one pass: a third of a CPU step otherwise.
        self.model_optimiser = torch.optim.Adam(
            self.model.parameters(), lr=tc.learning_rate, fused=True
        )
        self.baseline_optimiser = torch.optim.Adam(
            self.baseline.parameters(), lr=tc.baseline_learning_rate, fused=True
        )
        self.noise = torch.Generator(device=device).manual_seed(tc.seed + 1)
        self.batch_order = np.random.default_rng(np.random.SeedSequence([tc.seed, 2]))
        self.step = 0
        self.sums = torch.zeros(3, device=device)  # loss, elbo, count hits since the last log
        self.summed_steps = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.train_seconds = 0.0

    def train_step(self, images: torch.Tensor, counts: torch.Tensor | None) -> bool:
        """One optimisation step on the next minibatch; False if it was skipped as non-finite."""
        tc = self.train_config
        self.step += 1
        rho = z_pres_prior_at(self.step, self.config.model.z_pres_prior, tc)
        for group in self.model_optimiser.param_groups:
            group["lr"] = learning_rate_at(self.step, tc)
        index = torch.from_numpy(self.batch_order.integers(0, len(images), tc.batch_size)).to(
            self.device
        )
        x = images[index].float().div_(255.0)

        inference, objective = self.objective(x, rho)
        self.model_optimiser.zero_grad(set_to_none=True)
        self.baseline_optimiser.zero_grad(set_to_none=True)
        objective.loss.backward()
        objective.baseline_loss.backward()
        finite = bool(
            torch.isfinite(objective.loss)
            & torch.isfinite(objective.baseline_loss)
            & torch.isfinite(self.clip_and_check_gradients())
        )
        if not finite:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            return False
        self.nonfinite_in_a_row = 0
        self.model_optimiser.step()
        self.baseline_optimiser.step()
        with torch.no_grad():
            hits = (
                (inference.count == counts[index]).float().mean()
                if counts is not None
                else torch.tensor(float("nan"))
            )
            self.sums += torch.stack(
                [objective.loss.detach(), objective.elbo.mean(), hits.to(self.device)]
            )
        self.summed_steps += 1
        return True

    def objective(self, x: torch.Tensor, rho: float) -> tuple[Inference, Objective]:
        """Inference on the minibatch ``x`` with the run's noise, and the objective of it."""
        inference = self.model(x, generator=self.noise, z_pres_prior=rho)
        baselines = self.baseline(
            x.flatten(1), inference.previous_latents().detach(), decided_steps(inference.z_pres)
        )
        return inference, air_objective(inference, baselines, self.normaliser)

    def clip_and_check_gradients(self) -> torch.Tensor:
        """Clip the network's gradients if configured; a scalar that is finite only if every
        gradient is. A non-finite gradient must not reach Adam. Clipping needs the norm; without
        it, one sum per gradient tells the same (a NaN or inf anywhere makes it non-finite) with
        less arithmetic than a norm over the 10 MB image-projection gradient."""
        clip = self.train_config.grad_clip
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.stack([g.sum() for g in grads]).sum()

    def take_means(self) -> tuple[float, float, float]:
        """Mean loss, ELBO and count accuracy since the last call (NaN where nothing was summed)."""
        means = (
            (self.sums / max(self.summed_steps, 1)).tolist()
            if self.summed_steps
            else [math.nan] * 3
        )
        self.sums.zero_()
        self.summed_steps = 0
        return means[0], means[1], means[2]

    # -- checkpointing ---------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        """Tensors and plain containers only: loaded back with ``torch.load(weights_only=True)``."""
        return {
            "model_optimiser": self.model_optimiser.state_dict(),
            "baseline_optimiser": self.baseline_optimiser.state_dict(),
            "noise_rng": self.noise.get_state(),
            "normaliser": self.normaliser.state_dict() if self.normaliser is not None else {},
            "sums": self.sums.detach().cpu(),
            "image_projection_layout": IMAGE_PROJECTION_LAYOUT,
        }

    def _transpose_image_projection_moments(self) -> None:
        """Checkpoints written before the image projections were held as (in, out) saved their
        Adam moments as (out, in); turn them into the parameters' layout."""
        for optimiser, network in (
            (self.model_optimiser, self.model),
            (self.baseline_optimiser, self.baseline),
        ):
            weight = network.core.image_to_gates.weight
            moments = optimiser.state.get(weight, {})
            for name, moment in moments.items():
                if torch.is_tensor(moment) and moment.dim() == 2:
                    moments[name] = moment.t().contiguous()

    def counters(self) -> dict[str, Any]:
        """JSON-ready scalars of the state (the numpy minibatch stream's state included)."""
        return {
            "step": self.step,
            "summed_steps": self.summed_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
            "train_seconds": self.train_seconds,
            "batch_rng": self.batch_order.bit_generator.state,
        }

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` exactly where it was written."""
        load_state(self.model, checkpoint.model_state, checkpoint.path / MODEL_FILE)
        if checkpoint.baseline_state is None:
            raise CheckpointError(
                f"{checkpoint.path}: holds no baseline weights, so it cannot be resumed"
            )
        load_state(self.baseline, checkpoint.baseline_state, checkpoint.path / BASELINE_FILE)
        state = checkpoint.trainer_state()
        counters = checkpoint.meta.get("trainer")
        if state is None or counters is None:
            raise CheckpointError(
                f"{checkpoint.path}: holds no trainer state, so it cannot be resumed"
            )
        try:
            for optimiser, key in (
                (self.model_optimiser, "model_optimiser"),
                (self.baseline_optimiser, "baseline_optimiser"),
            ):
                optimiser.load_state_dict(state[key])
            if state.get("image_projection_layout") != IMAGE_PROJECTION_LAYOUT:
                self._transpose_image_projection_moments()
            self.noise.set_state(state["noise_rng"])
            if self.normaliser is not None:
                self.normaliser.load_state_dict(state["normaliser"])
            self.sums.copy_(state["sums"])
            self.batch_order.bit_generator.state = counters["batch_rng"]
            self.step = int(counters["step"])
            self.summed_steps = int(counters["summed_steps"])
            self.nonfinite_in_a_row = int(counters["nonfinite_in_a_row"])
            self.nonfinite_total = int(counters["nonfinite_total"])
            self.train_seconds = float(counters["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{checkpoint.path}: trainer state does not fit this run ({error})"
            ) from None


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (the newest is always kept)."""
    complete = [p for p in _checkpoint_dirs(run_dir) if (p / "checkpoint.json").is_file()]
    for old in complete[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def _read_metric_rows(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Rows of a metrics CSV up to ``up_to_step`` (later rows belong to the lost part of a run)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = [
            row
            for row in csv.DictReader(file)
            if row.get("step") and int(row["step"]) <= up_to_step
        ]
    return [
        {k: (float(v) if k != "step" else int(v)) for k, v in row.items() if v not in ("", None)}
        for row in rows
    ]


def train(
    config: RunConfig | None,
    run_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train AIR (or DAIR) with ``config``, writing config, metrics, TensorBoard scalars and
    checkpoints into ``run_dir``. With ``resume`` the run in ``run_dir`` continues from its
    newest checkpoint with its own config (``config`` may then be None). Returns the summary."""
    run_dir = Path(run_dir)
    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(run_dir)
        if config is not None and config != checkpoint.config:
            raise AirsceneError(
                f"{run_dir}: the run's config differs from the one given; resume takes the run's own"
            )
        config = checkpoint.config
    elif config is None:
        raise AirsceneError("a config is needed to start a run")
    # Data first: a bad data path must not leave a half-made run directory behind.
    images, counts, eval_scenes = training_data(config)
    if not resume:
        _prepare_run_dir(run_dir, overwrite)
    tc = config.train
    device = resolve_device(tc.device)
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    provenance = {
        "command": command if command is not None else sys.argv,
        "git_revision": git_revision(),
    }
    if not resume:
        (run_dir / "config.json").write_text(
            json.dumps({"config": to_dict(config), **provenance}, indent=2)
        )

    eval_scenes = eval_scenes[: tc.eval_scenes]
    train_images = torch.from_numpy(images).to(device)  # uint8, (N, H, W)
    train_counts = torch.from_numpy(counts).to(device) if counts is not None else None

    trainer = Trainer(config, device)
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        trainer.restore(checkpoint)
        history = _read_metric_rows(run_dir / "metrics.csv", trainer.step)
    last_good = checkpoint.path if checkpoint is not None else None

    writer = _tensorboard(run_dir / "tensorboard")
    metrics_file = open(run_dir / "metrics.csv", "w", newline="")
    metrics_csv = csv.DictWriter(metrics_file, fieldnames=METRIC_FIELDS)
    metrics_csv.writeheader()
    metrics_csv.writerows(history)
    metrics_file.flush()
    row: dict[str, Any] = history[-1] if history else {}
    last_log_time, last_log_step = trainer.train_seconds, trainer.step
    bar = _progress(tc.steps, progress, initial=trainer.step)

    def save(step: int) -> Path:
        nonlocal last_good
        target = run_dir / "checkpoints" / f"step-{step:09d}"
        try:
            save_checkpoint(
                target, config, trainer.model, step, row, baseline=trainer.baseline,
                trainer_state=trainer.trainer_state(), extra={**provenance, "trainer": trainer.counters()},
            )  # fmt: skip
        except OSError as error:
            where = (
                f"the last good checkpoint is {last_good}"
                if last_good
                else "no checkpoint was written"
            )
            raise AirsceneError(
                f"could not write checkpoint {target} ({error.strerror or error}); {where}"
            ) from None
        last_good = target
        _prune_checkpoints(run_dir, tc.keep_checkpoints)
        return target

    try:
        while trainer.step < tc.steps:
            started = time.perf_counter()
            trainer.train_step(train_images, train_counts)
            trainer.train_seconds += time.perf_counter() - started
            step = trainer.step
            if trainer.nonfinite_in_a_row >= tc.max_nonfinite_steps:
                where = (
                    f"the last good checkpoint is {last_good}"
                    if last_good
                    else "no checkpoint was written yet"
                )
                raise AirsceneError(
                    f"training stopped at step {step}: {trainer.nonfinite_in_a_row} non-finite losses or "
                    f"gradients in a row; {where}"
                )
            if step % tc.log_every == 0 or step == tc.steps:
                loss, elbo, accuracy = trainer.take_means()
                speed = (step - last_log_step) / max(trainer.train_seconds - last_log_time, 1e-9)
                row = {
                    "step": step,
                    "train_seconds": round(trainer.train_seconds, 3),
                    "loss": loss,
                    "elbo": elbo,
                    "count_accuracy": accuracy,
                    "z_pres_prior": z_pres_prior_at(step, config.model.z_pres_prior, tc),
                    "steps_per_second": speed,
                    "skipped_steps": trainer.nonfinite_total,
                }
                last_log_time, last_log_step = trainer.train_seconds, step
                if (
                    tc.eval_every
                    and len(eval_scenes)
                    and (step % tc.eval_every == 0 or step == tc.steps)
                ):
                    # A generator of its own keeps evaluation from touching any training stream.
                    result = evaluate(
                        trainer.model, eval_scenes, generator=torch.Generator(device).manual_seed(0)
                    )
                    row.update(
                        eval_count_accuracy=result.count_accuracy,
                        eval_elbo=result.elbo,
                        eval_mean_iou=result.mean_iou,
                    )
                    if writer is not None:
                        _log_reconstructions(writer, trainer.model, eval_scenes.images[:8], step)
                metrics_csv.writerow(row)
                metrics_file.flush()
                history.append(row)
                if writer is not None:
                    for key, value in row.items():
                        if key != "step":
                            writer.add_scalar(key, value, step)
                postfix = {"loss": f"{loss:.1f}", "acc": f"{accuracy:.3f}", "sps": f"{speed:.1f}"}
                if "eval_count_accuracy" in row:
                    postfix["eval"] = f"{row['eval_count_accuracy']:.3f}"
                bar.set_postfix(postfix)
            bar.update(1)
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save(step)
    finally:
        bar.close()
        metrics_file.close()
        if writer is not None:
            writer.close()
    return TrainResult(
        run_dir=run_dir,
        steps=tc.steps,
        train_seconds=trainer.train_seconds,
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


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        desc="train",
        file=sys.stderr,
    )


def _tensorboard(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except (
        ImportError
    ):  # tensorboard is a dependency, but a broken install should not stop training
        return None
    return SummaryWriter(log_dir=str(directory))
