"""Where a training step's time goes, two ways, on fast-path training steps of the default config:

1. by phase, in wall-clock time without a profiler: the minibatch, the network's forward pass,
   the baseline's, the objective, the two backward passes, the finite-gradient check and the two
   Adam updates (median per phase over timed steps; the phases replay ``Trainer.train_step``,
   and their sum is checked against the real step timed in the same run);
2. by operation, with the PyTorch profiler (self CPU time per step, and the count of
   operations). The profiler adds its own cost to every operation and can distort some (in one
   run it showed the zero fills of the 10 MB weight gradients several times slower than they
   take when timed alone); use it for which operations run and how often, and the phases for
   time.

    python benchmarks/profile_step.py              # batch 64; --batch N, --steps N, --init

The network starts from the shipped model's weights (one that has learned to count, as in most
of a run: the fast path skips the steps of images whose objects are all found), or with
``--init`` from a fresh initialisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
from speed import new_trainer  # benchmarks/, beside this script
from torch.profiler import ProfilerActivity, profile

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.objective import air_objective
from airscene.provenance import hardware
from airscene.rows import decided_steps
from airscene.train import Trainer

HERE = Path(__file__).resolve().parent


def phase_split(
    trainer: Trainer, images: torch.Tensor, counts: torch.Tensor, steps: int
) -> dict[str, float]:
    """Median milliseconds of each phase of the training step, replayed as ``train_step`` runs
    it (without its bookkeeping), and of the real ``train_step`` in alternation with it."""
    times: dict[str, list[float]] = {}

    def lap(name: str, started: float) -> float:
        now = time.perf_counter()
        times.setdefault(name, []).append((now - started) * 1e3)
        return now

    for _ in range(steps):
        started = time.perf_counter()
        trainer.train_step(images, counts)
        lap("whole train_step", started)

        started = first = time.perf_counter()
        index = trainer.minibatch_index(len(images))
        x = images[index].float().div_(255.0)
        started = lap("minibatch", started)
        inference = trainer.model(x, generator=trainer.noise)
        started = lap("network forward", started)
        baselines = trainer.baseline(
            x.flatten(1), inference.previous_latents().detach(), decided_steps(inference.z_pres)
        )
        started = lap("baseline forward", started)
        objective = air_objective(inference, baselines, trainer.normaliser)
        trainer.model_optimiser.zero_grad(set_to_none=True)
        trainer.baseline_optimiser.zero_grad(set_to_none=True)
        started = lap("objective", started)
        objective.loss.backward()
        started = lap("network backward", started)
        objective.baseline_loss.backward()
        started = lap("baseline backward", started)
        check = trainer.clip_and_check_gradients()
        bool(torch.isfinite(objective.loss) & torch.isfinite(check))
        started = lap("finite-gradient check", started)
        trainer.model_optimiser.step()
        started = lap("Adam, network", started)
        trainer.baseline_optimiser.step()
        lap("Adam, baseline", started)
        lap("phases together", first)
    warm = steps // 5  # the first steps warm the caches and the allocator
    return {name: statistics.median(values[warm:]) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--timed-steps", type=int, default=150, help="steps of the phase split")
    parser.add_argument("--init", action="store_true", help="start from a fresh initialisation")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results" / "profile_step.json"))
    args = parser.parse_args(argv)
    config = RunConfig()
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, batch_size=args.batch)
    )
    scenes = load_scenes(config.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    trainer = new_trainer(config, torch.device("cpu"), trained=not args.init)
    phases = phase_split(trainer, images, counts, args.timed_steps)

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            trainer.train_step(images, counts)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    per_step = [
        {
            "operation": e.key,
            "self_ms_per_step": e.self_cpu_time_total / args.steps / 1e3,
            "calls_per_step": e.count / args.steps,
        }
        for e in events
    ]
    operations = [e for e in per_step if e["operation"].startswith("aten::")]
    summary = {
        "benchmark": "profile_step",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "batch": args.batch,
        "weights": "fresh initialisation" if args.init else "shipped model",
        "phase_ms_per_step": phases,
        "profiled_ms_per_step": sum(e["self_ms_per_step"] for e in per_step),
        "aten_operations_per_step": sum(e["calls_per_step"] for e in operations),
        "top": per_step[: args.top],
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"training step at batch {args.batch} by phase (wall clock, median ms):")
    for name, ms in phases.items():
        print(f"{ms:7.2f} ms  {name}")
    print(
        f"profiled step: {summary['profiled_ms_per_step']:.1f} ms (with the profiler's cost), "
        f"{summary['aten_operations_per_step']:.0f} aten operations"
    )
    for row in summary["top"]:
        print(
            f"{row['self_ms_per_step']:7.2f} ms {row['calls_per_step']:7.1f}x  {row['operation']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
