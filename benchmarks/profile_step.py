"""Where a training step's time goes: the PyTorch profiler over fast-path training steps of the
default config, grouped by operation (self CPU time per step), plus the count of operations.

    python benchmarks/profile_step.py              # batch 64; --batch N, --steps N

Profiling adds its own overhead to every operation, so the per-step total here is above what
``speed.py`` measures; the split between operations is what this is for.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.train import Trainer

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results" / "profile_step.json"))
    args = parser.parse_args(argv)
    config = RunConfig()
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, batch_size=args.batch)
    )
    scenes = load_scenes(config.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    trainer = Trainer(config, torch.device("cpu"))
    for _ in range(10):
        trainer.train_step(images, counts)
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
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "profiled_ms_per_step": sum(e["self_ms_per_step"] for e in per_step),
        "aten_operations_per_step": sum(e["calls_per_step"] for e in operations),
        "top": per_step[: args.top],
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(
        f"profiled step at batch {args.batch}: {summary['profiled_ms_per_step']:.1f} ms, "
        f"{summary['aten_operations_per_step']:.0f} aten operations"
    )
    for row in summary["top"]:
        print(
            f"{row['self_ms_per_step']:7.2f} ms {row['calls_per_step']:7.1f}x  {row['operation']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
