"""The training loop: optimisers, the z_pres prior schedule, logging and checkpoints.

The loop only optimises: the model (``airscene.model``) returns latents and log-probabilities,
the objective (``airscene.objective``) turns them into losses.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from airscene.checkpoint import (
    BASELINE_FILE,
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    RunCheckpoints,
    load_state,
    read_checkpoint,
)
from airscene.config import RunConfig, TrainConfig, to_dict
from airscene.data.training import images_to_tensor, training_data
from airscene.distributed import World
from airscene.errors import AirsceneError, TrainingInterrupted
from airscene.model import AIR, Inference, build_model
from airscene.networks import BaselineNetwork
from airscene.objective import (
    Objective,
    SignalNormaliser,
    air_objective,
    cellwise_objective,
    training_inference,
)
from airscene.provenance import git_revision
from airscene.rows import decided_steps
from airscene.runlog import METRICS_FILE, RunLog, read_metric_rows

# How trainer.pt holds the Adam moments of the image projections (absent in older checkpoints,
# whose moments are (out, in)).
IMAGE_PROJECTION_LAYOUT = "in_out"


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


def linear_ramp(step: int, steps: int) -> float:
    """A curriculum's progress at ``step``: rising linearly from 0 to 1 over ``steps`` and 1
    after them (1 throughout when ``steps`` is 0: no curriculum)."""
    if steps <= 0:
        return 1.0
    return min(1.0, step / steps)


def likelihood_blur_at(step: int, config: TrainConfig) -> float:
    """The likelihood's blur (pixels) at ``step``: linear from its start to 0."""
    return config.likelihood_blur_start * (1 - linear_ramp(step, config.likelihood_blur_steps))


def background_detail_at(step: int, config: TrainConfig) -> float:
    """How much of the smooth background's detail is let in at ``step``: rising linearly from
    0 to 1 over ``background_detail_steps`` (1 throughout without it)."""
    return linear_ramp(step, config.background_detail_steps)


def likelihood_at(step: int, config: RunConfig) -> str:
    """The pixel likelihood that scores step ``step``: the normal for the first
    ``normal_likelihood_steps`` steps, the model's own after them."""
    return "normal" if step <= config.train.normal_likelihood_steps else config.model.likelihood


def kl_weight_at(step: int, config: TrainConfig) -> float:
    """The weight of the objects' log p/q in the grid scheme's objective at ``step``: rising
    linearly from 0 to 1 over ``kl_warmup_steps`` (1 throughout without a warm-up)."""
    return linear_ramp(step, config.kl_warmup_steps)


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


def shard_streams(seed: int, shard: int) -> tuple[int, np.random.SeedSequence]:
    """The seeds of shard ``shard``'s noise generator and minibatch stream. Shard 0's are those
    of a single-process run, so one process trains exactly as it always has."""
    if shard == 0:
        return seed + 1, np.random.SeedSequence([seed, 2])
    noise_seed = int(np.random.SeedSequence([seed, 1, shard]).generate_state(1, np.uint64)[0])
    return noise_seed, np.random.SeedSequence([seed, 2, shard])


class Trainer:
    """The optimisation state of one run, and one step of it.

    Everything a step depends on (weights, optimiser moments, the noise and minibatch random
    streams, the NVIL signal moments, the running metric sums) is in ``state()``, so a run
    resumed from a checkpoint continues bit for bit as if it had never stopped.

    Data-parallel training: ``train_config.batch_size`` is the *global* minibatch, split into
    equal shards, each with its own minibatch stream and noise. A process of a ``world`` of K
    (torchrun) holds shard ``world.rank``; the gradients are averaged by DistributedDataParallel,
    and the signal moments, metric sums and the skip decision are summed over the processes. One
    process may also hold several shards (``shards``), drawing exactly the images and noise that
    as many processes would: the single-process twin of a data-parallel run.
    """

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        world: World | None = None,
        shards: tuple[int, ...] | None = None,
    ) -> None:
        tc = self.train_config = config.train
        self.config = config
        self.device = device
        self.world = world = world or World()
        self.shards = shards if shards is not None else (world.rank,)
        if world.distributed and len(self.shards) != 1:
            raise AirsceneError("a process of a data-parallel run holds one shard, its rank's")
        self.shard_count = world.size * len(self.shards)
        if tc.batch_size % self.shard_count:
            raise AirsceneError(
                f"--batch-size {tc.batch_size} (the global minibatch) does not split evenly over "
                f"{self.shard_count} processes"
            )
        self.shard_batch = tc.batch_size // self.shard_count
        keep_freed_memory_for_reuse()
        torch.manual_seed(tc.seed)  # parameter initialisation
        self.model = build_model(config.model).to(device)
        # NVIL's learned baseline and signal moments, for a scheme whose z_pres is sampled in a
        # chain; the grid scheme sums each cell's z_pres out exactly and needs neither.
        nvil = self.model.estimator == "nvil"
        if not nvil and self.shard_count > 1:
            raise AirsceneError(
                "grid inference trains in one process on one shard; data-parallel training "
                "(torchrun) is for the sequential scheme"
            )
        self.baseline = (
            BaselineNetwork(
                config.model.core_input_size,
                self.model.latent_dim,
                config.model.baseline_lstm_size,
            ).to(device)
            if nvil
            else None
        )
        self.normaliser = (
            SignalNormaliser(reduce_sum=world.sum if world.distributed else None).to(device)
            if tc.normalise_signal and nvil and tc.z_pres_baseline == "learned"
            else None
        )
        # What the step calls: under DDP the wrappers, which average the gradients.
        self.step_model, self.step_baseline = self.model, self.baseline
        if world.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.model, device_ids=ids)
            if self.baseline is not None:
                self.step_baseline = DistributedDataParallel(self.baseline, device_ids=ids)
        # The fused Adam kernel updates all parameters in one pass.
        self.model_optimiser = torch.optim.Adam(
            self.model.parameters(), lr=tc.learning_rate, fused=True
        )
        self.baseline_optimiser = (
            torch.optim.Adam(self.baseline.parameters(), lr=tc.baseline_learning_rate, fused=True)
            if self.baseline is not None
            else None
        )
        self.noises, self.batch_orders = [], []
        for shard in self.shards:
            noise_seed, batch_seed = shard_streams(tc.seed, shard)
            self.noises.append(torch.Generator(device=device).manual_seed(noise_seed))
            self.batch_orders.append(np.random.default_rng(batch_seed))
        self.step = 0
        self.sums = torch.zeros(3, device=device)  # loss, elbo, count hits since the last log
        self.summed_steps = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.train_seconds = 0.0

    @property
    def noise(self) -> torch.Generator | list[torch.Generator]:
        """The noise of this process's minibatch: one generator, or one per shard it holds."""
        return self.noises[0] if len(self.noises) == 1 else self.noises

    def minibatch_index(self, n_images: int) -> torch.Tensor:
        """The next minibatch's image indices: each of this process's shards draws its part."""
        parts = [order.integers(0, n_images, self.shard_batch) for order in self.batch_orders]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def train_step(self, images: torch.Tensor, counts: torch.Tensor | None) -> bool:
        """One optimisation step on the next minibatch; False if it was skipped as non-finite."""
        tc = self.train_config
        self.step += 1
        rho = z_pres_prior_at(self.step, self.config.model.z_pres_prior, tc)
        for group in self.model_optimiser.param_groups:
            group["lr"] = learning_rate_at(self.step, tc)
        index = self.minibatch_index(len(images)).to(self.device)
        x = images[index].float().div_(255.0)
        background = getattr(self.model, "background", None)
        if background is not None:
            background.detail_fraction = background_detail_at(self.step, tc)
        # The model scores pixels by its config: the step's likelihood for the objective only,
        # so evaluations and the search between steps score under the model's own.
        likelihood = likelihood_at(self.step, self.config)
        if likelihood != self.config.model.likelihood:
            self.model.config = dataclasses.replace(self.config.model, likelihood=likelihood)
        try:
            inference, objective = self.objective(x, rho)
        finally:
            self.model.config = self.config.model
        optimisers = [o for o in (self.model_optimiser, self.baseline_optimiser) if o is not None]
        losses = [loss for loss in (objective.loss, objective.baseline_loss) if loss is not None]
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        for loss in losses:
            loss.backward()
        finite = bool(
            torch.stack([torch.isfinite(loss) for loss in losses]).all()
            & torch.isfinite(self.clip_and_check_gradients())
        )
        if not self.world.agree(finite):  # every process skips, or none does
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            return False
        self.nonfinite_in_a_row = 0
        for optimiser in optimisers:
            optimiser.step()
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
        if self.baseline is None:  # the grid scheme: each cell's z_pres summed out
            return cellwise_objective(
                self.model,
                x,
                self.noise,
                z_pres_prior=rho,
                kl_weight=kl_weight_at(self.step, self.train_config),
            )
        inference = training_inference(
            self.model,
            x,
            generator=self.noise,
            z_pres_prior=rho,
            likelihood_blur=likelihood_blur_at(self.step, self.train_config),
            forward=self.step_model,
            stop_signals=self.train_config.z_pres_baseline == "stop",
        )
        baselines = self.step_baseline(
            self.model.core_view(x),
            inference.previous_latents().detach(),
            decided_steps(inference.z_pres),
        )
        if inference.stop_signals is not None:  # the network learns what stopping leaves
            baselines = baselines + inference.stop_signals
        return inference, air_objective(inference, baselines, self.normaliser)

    def clip_and_check_gradients(self) -> torch.Tensor:
        """Clip the network's gradients if configured; a scalar that is finite only if every
        gradient is. A non-finite gradient must not reach Adam. Clipping needs the norm; without
        it, one sum per gradient tells the same (a NaN or inf anywhere makes it non-finite) with
        less arithmetic than a norm over the large image-projection gradient."""
        clip = self.train_config.grad_clip
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.stack([g.sum() for g in grads]).sum()

    def drop_data_parallel(self) -> None:
        """Step through the bare modules from now on, releasing the DDP wrappers (and their
        hold on the process group) so that leaving the group ends it."""
        self.step_model, self.step_baseline = self.model, self.baseline

    def take_means(self) -> tuple[float, float, float]:
        """Mean loss, ELBO and count accuracy since the last call (NaN where nothing was summed),
        over every process's shard (every process calls it at the same step)."""
        sums = self.world.sum(self.sums.clone()) / self.world.size
        means = (sums / max(self.summed_steps, 1)).tolist() if self.summed_steps else [math.nan] * 3
        self.sums.zero_()
        self.summed_steps = 0
        return means[0], means[1], means[2]

    # -- checkpointing ---------------------------------------------------------------------

    def _stream_states(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Every shard's noise and minibatch-stream state, in shard order (gathered from every
        process: a collective, so every process calls it when a checkpoint is written)."""
        mine = [
            (noise.get_state(), order.bit_generator.state)
            for noise, order in zip(self.noises, self.batch_orders, strict=True)
        ]
        every = [pair for part in self.world.gather(mine) for pair in part]
        return [noise for noise, _ in every], [order for _, order in every]

    def checkpoint_contents(self) -> dict[str, Any]:
        """``trainer_state`` (tensors) and ``counters`` (JSON) of the whole run, for
        ``save_checkpoint``: every shard's streams, on every process (a collective)."""
        noises, orders = self._stream_states()
        if self.world.distributed:  # every process keeps the mean, so rank 0's sums stand for all
            self.sums = self.world.sum(self.sums) / self.world.size
        return {"trainer_state": self.trainer_state(noises), "counters": self.counters(orders)}

    def trainer_state(self, shard_noise: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Tensors and plain containers only: loaded back with ``torch.load(weights_only=True)``.
        ``noise_rng`` is shard 0's; a run of several shards also keeps ``shard_noise_rng``."""
        shard_noise = shard_noise or [noise.get_state() for noise in self.noises]
        state = {
            "model_optimiser": self.model_optimiser.state_dict(),
            "baseline_optimiser": (
                self.baseline_optimiser.state_dict() if self.baseline_optimiser is not None else {}
            ),
            "noise_rng": shard_noise[0],
            "normaliser": self.normaliser.state_dict() if self.normaliser is not None else {},
            "sums": self.sums.detach().cpu(),
            "image_projection_layout": IMAGE_PROJECTION_LAYOUT,
        }
        if len(shard_noise) > 1:
            state["shard_noise_rng"] = shard_noise
        return state

    def counters(self, shard_orders: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """JSON-ready scalars of the state (the numpy minibatch streams' states included)."""
        shard_orders = shard_orders or [order.bit_generator.state for order in self.batch_orders]
        counters = {
            "step": self.step,
            "summed_steps": self.summed_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
            "train_seconds": self.train_seconds,
            "batch_rng": shard_orders[0],
        }
        if len(shard_orders) > 1:
            counters.update(shards=len(shard_orders), shard_batch_rng=shard_orders)
        return counters

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` exactly where it was written."""
        load_state(self.model, checkpoint.model_state, checkpoint.path / MODEL_FILE)
        if self.baseline is not None:
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
        shards = int(counters.get("shards", 1))
        if shards != self.shard_count:
            raise CheckpointError(
                f"{checkpoint.path}: the run was trained by {shards} process(es) and is resumed by "
                f"{self.shard_count}; resume it with the same number (torchrun --nproc-per-node "
                f"{shards}{' or no torchrun' if shards == 1 else ''})"
            )
        try:
            for optimiser, key in (
                (self.model_optimiser, "model_optimiser"),
                (self.baseline_optimiser, "baseline_optimiser"),
            ):
                if optimiser is not None:
                    optimiser.load_state_dict(state[key])
            if state.get("image_projection_layout") != IMAGE_PROJECTION_LAYOUT:
                raise ValueError("written before the image projections were held as (in, out)")
            noises = state.get("shard_noise_rng", [state["noise_rng"]])
            orders = counters.get("shard_batch_rng", [counters["batch_rng"]])
            for i, shard in enumerate(self.shards):
                self.noises[i].set_state(noises[shard])
                self.batch_orders[i].bit_generator.state = orders[shard]
            if self.normaliser is not None:
                self.normaliser.load_state_dict(state["normaliser"])
            self.sums.copy_(state["sums"])
            self.step = int(counters["step"])
            self.summed_steps = int(counters["summed_steps"])
            self.nonfinite_in_a_row = int(counters["nonfinite_in_a_row"])
            self.nonfinite_total = int(counters["nonfinite_total"])
            self.train_seconds = float(counters["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise CheckpointError(
                f"{checkpoint.path}: trainer state does not fit this run ({error})"
            ) from None


def train(
    config: RunConfig | None,
    run_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    resume: bool = False,
    shards: tuple[int, ...] | None = None,
    steps: int | None = None,
) -> TrainResult:
    """Train AIR (or DAIR) with ``config``, writing config, metrics, TensorBoard scalars and
    checkpoints into ``run_dir``. With ``resume`` the run in ``run_dir`` continues from its
    newest checkpoint with its own config (``config`` may then be None); ``steps`` then extends
    it to that many steps in all, the cosine learning-rate schedule stretched to end there (from
    the resumed step on, the rate is the longer schedule's). Returns the summary.

    Started by torchrun, every process runs this and trains its shard of each minibatch (see
    ``Trainer``); only rank 0 writes. ``shards`` lets one process hold several shards."""
    run_dir = Path(run_dir)
    config, checkpoint = _run_config(config, run_dir, resume, steps)
    # Data first: a bad data path must not leave a half-made run directory behind.
    images, counts, eval_scenes = training_data(config)
    tc = config.train
    device = resolve_device(tc.device)
    world = World.from_environment(device)
    try:
        device = world.device(device)
        if tc.threads is not None:
            torch.set_num_threads(tc.threads)
        provenance = {
            "command": command if command is not None else sys.argv,
            "git_revision": git_revision(),
        }
        extended = checkpoint is not None and config != checkpoint.config
        if world.is_main and (not resume or extended):
            if not resume:
                _prepare_run_dir(run_dir, overwrite)
            (run_dir / "config.json").write_text(
                json.dumps({"config": to_dict(config), **provenance}, indent=2)
            )
        world.barrier()  # the run directory exists before any process goes on
        trainer = Trainer(config, device, world, shards)
        history: list[dict[str, Any]] = []
        if checkpoint is not None:
            trainer.restore(checkpoint)
            history = read_metric_rows(run_dir / METRICS_FILE, trainer.step)
        checkpoints = RunCheckpoints(
            run_dir, tc.keep_checkpoints, checkpoint.path if checkpoint is not None else None
        )
        log = RunLog(run_dir, tc.steps, history, progress, world.is_main, trainer.step)
        with log, StopSignals() as stop:
            _loop(
                trainer,
                torch.from_numpy(images).to(device),  # uint8, (N, H, W)
                torch.from_numpy(counts).to(device) if counts is not None else None,
                eval_scenes[: tc.eval_scenes],
                log,
                checkpoints,
                provenance,
                stop,
            )
        # Leave together, with no collective in flight and no DDP wrapper still holding the
        # group: a rank tearing gloo down while rank 0 still writes its last checkpoint was
        # seen to abort (SIGABRT, "terminate called without an active exception").
        world.barrier()
        trainer.drop_data_parallel()
    finally:
        world.close()
    return TrainResult(
        run_dir=run_dir,
        steps=tc.steps,
        train_seconds=trainer.train_seconds,
        final_metrics=log.last,
        history=log.history,
    )


def _run_config(
    config: RunConfig | None, run_dir: Path, resume: bool, steps: int | None = None
) -> tuple[RunConfig, Checkpoint | None]:
    """The run's config, and the checkpoint it resumes from (None for a new run); a resumed
    run extended to ``steps``."""
    if not resume:
        if config is None:
            raise AirsceneError("a config is needed to start a run")
        return config, None
    checkpoint = read_checkpoint(run_dir)
    if config is not None and config != checkpoint.config:
        raise AirsceneError(
            f"{run_dir}: the run's config differs from the one given; resume takes the run's own"
        )
    if steps is None or steps == checkpoint.config.train.steps:
        return checkpoint.config, checkpoint
    if steps <= checkpoint.step:
        raise AirsceneError(
            f"{run_dir}: its newest checkpoint is at step {checkpoint.step:,}; --steps must be "
            "more to extend it"
        )
    train = dataclasses.replace(checkpoint.config.train, steps=steps)
    return dataclasses.replace(checkpoint.config, train=train), checkpoint


def _loop(
    trainer: Trainer,
    images: torch.Tensor,
    counts: torch.Tensor | None,
    eval_scenes,
    log: RunLog,
    checkpoints: RunCheckpoints,
    provenance: dict[str, Any],
    stop: StopSignals | None = None,
) -> None:
    """Train to the configured number of steps: log, evaluate and checkpoint on schedule. A stop
    signal (Ctrl-C, SIGTERM) ends the loop after the step in progress, with a checkpoint."""
    tc = trainer.train_config
    last_log = (trainer.train_seconds, trainer.step)
    while trainer.step < tc.steps:
        started = time.perf_counter()
        trainer.train_step(images, counts)
        trainer.train_seconds += time.perf_counter() - started
        step = trainer.step
        if trainer.nonfinite_in_a_row >= tc.max_nonfinite_steps:
            raise AirsceneError(
                f"training stopped at step {step}: {trainer.nonfinite_in_a_row} non-finite losses "
                f"or gradients in a row; {checkpoints.where_to_resume()}"
            )
        last = step == tc.steps
        if step % tc.log_every == 0 or last:
            row = _metrics_row(trainer, last_log)
            last_log = (trainer.train_seconds, step)
            if tc.eval_every and len(eval_scenes) and (step % tc.eval_every == 0 or last):
                if trainer.world.is_main:  # the others go on and wait at the next step's sums
                    row.update(_evaluation(trainer.model, eval_scenes, trainer.device))
                    if log.wants_images:
                        log.image(
                            "reconstructions",
                            _reconstructions(trainer.model, eval_scenes.images[:8]),
                            step,
                        )
            log.write(row)
        log.advance()
        # Every process stops at the same step if any was signalled (under torchrun each is).
        stopping = stop is not None and not trainer.world.agree(not stop.requested)
        if step % tc.checkpoint_every == 0 or last or stopping:
            contents = trainer.checkpoint_contents()  # every process: it gathers their streams
            if trainer.world.is_main:
                checkpoints.save(
                    step, trainer.config, trainer.model, metrics=log.last,
                    baseline=trainer.baseline, trainer_state=contents["trainer_state"],
                    extra={**provenance, "trainer": contents["counters"]},
                )  # fmt: skip
        if stopping and not last:
            raise TrainingInterrupted(
                f"stopped at step {step:,} of {tc.steps:,}, checkpoint written; continue with "
                f"airscene train --resume {checkpoints.run_dir}"
            )


class StopSignals:
    """While active, Ctrl-C (SIGINT) and SIGTERM ask the training loop to stop after its step
    (``requested``); a second Ctrl-C interrupts at once. Outside the main thread, where signal
    handlers cannot be set, it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: Any) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _metrics_row(trainer: Trainer, last_log: tuple[float, int]) -> dict[str, Any]:
    """The metrics of the steps since the last row (``last_log``: its seconds and step)."""
    loss, elbo, accuracy = trainer.take_means()
    seconds, step = last_log
    return {
        "step": trainer.step,
        "train_seconds": round(trainer.train_seconds, 3),
        "loss": loss,
        "elbo": elbo,
        "count_accuracy": accuracy,
        "z_pres_prior": z_pres_prior_at(
            trainer.step, trainer.config.model.z_pres_prior, trainer.train_config
        ),
        "steps_per_second": (trainer.step - step) / max(trainer.train_seconds - seconds, 1e-9),
        "skipped_steps": trainer.nonfinite_total,
    }


def _evaluation(model: AIR, scenes, device: torch.device) -> dict[str, float]:
    """The headline metrics of the model's kind of object on held-out ``scenes`` (count
    accuracy, ELBO, and box IoU, or shape, position and rotation)."""
    # A generator of its own keeps evaluation from touching any training stream.
    generator = torch.Generator(device).manual_seed(0)
    return model.objects.evaluate(model, scenes, generator=generator).headline()


@torch.no_grad()
def _reconstructions(model: AIR, images: np.ndarray) -> torch.Tensor:
    """Held-out scenes (top row) above their reconstructions (bottom row), (C, 2H, 8W): C is 1
    for grey images, 3 for colour."""
    was_training = model.training
    model.eval()
    x = images_to_tensor(images, next(model.parameters()).device)
    canvas = model(x, sample=False).canvas.clamp(0, 1)
    model.train(was_training)
    if x.dim() == 3:  # grey: one channel
        x, canvas = x.unsqueeze(1), canvas.unsqueeze(1)
    grid = torch.cat([torch.cat(list(x), dim=-1), torch.cat(list(canvas), dim=-1)], dim=-2)
    return grid.cpu()
