"""Data-parallel training: steps/s and images/s with 1 and 2 processes (torchrun, gloo on CPU,
NCCL with --device cuda), and the time of one all-reduce of every gradient per step.

    python benchmarks/ddp.py                    # 1 and 2 processes on this machine's CPU
    python benchmarks/ddp.py --device cuda --processes 1,2,4

Two scalings, each from a fresh initialisation of the default model on Multi-MNIST:
  * strong: a global batch of --batch (default 64) split over the processes (the same recipe:
    what `torchrun ... airscene train` does with the default --batch-size);
  * weak: --batch images per process (the global batch grows with the processes).
The CPU threads are shared out: each of K processes gets cores / K threads. A single process runs
without torch.distributed (today's path); K > 1 run under torchrun --standalone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(args: argparse.Namespace) -> None:
    """One process of a measurement (under torchrun when K > 1): timed training steps, then the
    all-reduce of a gradient-sized buffer alone; rank 0 writes the figures to --result."""
    import torch
    import torch.distributed as dist

    from airscene.config import RunConfig, TrainConfig
    from airscene.data.scenes import load_scenes
    from airscene.distributed import World
    from airscene.train import Trainer, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    world = World.from_environment(device)
    device = world.device(device)
    config = RunConfig(train=TrainConfig(batch_size=args.global_batch, device=args.device))
    scenes = load_scenes(config.data, "train")
    images = torch.from_numpy(scenes.images).to(device)
    counts = torch.from_numpy(scenes.counts).to(device)
    trainer = Trainer(config, device, world)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        world.barrier()

    for _ in range(args.warmup):
        trainer.train_step(images, counts)
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(images, counts)
    sync()
    seconds = time.perf_counter() - started

    gradient_numbers = sum(
        p.numel() for p in [*trainer.model.parameters(), *trainer.baseline.parameters()]
    )
    reduce_ms = None
    if world.distributed:
        buffer = torch.zeros(gradient_numbers, device=device)
        laps = []
        for i in range(args.reduce_repeats + 3):
            sync()
            begun = time.perf_counter()
            dist.all_reduce(buffer)
            sync()
            if i >= 3:
                laps.append((time.perf_counter() - begun) * 1e3)
        reduce_ms = statistics.median(laps)
    if world.is_main:
        Path(args.result).write_text(
            json.dumps(
                {
                    "processes": world.size,
                    "threads_per_process": args.threads,
                    "global_batch": args.global_batch,
                    "steps": args.steps,
                    "steps_per_second": args.steps / seconds,
                    "images_per_second": args.steps * args.global_batch / seconds,
                    "gradient_numbers": gradient_numbers,
                    "all_reduce_ms": reduce_ms,
                }
            )
        )
    world.close()


def measure(args: argparse.Namespace, processes: int, global_batch: int) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes) if args.device == "cpu" else 1
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        inner = [
            "--worker", "--device", args.device, "--threads", str(threads),
            "--global-batch", str(global_batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--reduce-repeats", str(args.reduce_repeats),
            "--result", str(result),
        ]  # fmt: skip
        if processes == 1:
            command = [sys.executable, __file__, *inner]
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={processes}", __file__, *inner,
            ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{processes} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", default="1,2", help="process counts, e.g. 1,2 or 1,2,4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reduce-repeats", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--global-batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    sys.path.insert(0, str(ROOT))
    from airscene.provenance import git_revision, hardware

    counts = [int(k) for k in args.processes.split(",")]
    runs = []
    for scaling in ("strong", "weak"):
        for k in counts:
            batch = args.batch if scaling == "strong" else args.batch * k
            run = {"scaling": scaling, **measure(args, k, batch)}
            runs.append(run)
            reduce = run["all_reduce_ms"]
            print(
                f"{scaling:6s} {k} process(es), global batch {batch:4d}: "
                f"{run['steps_per_second']:6.2f} steps/s, {run['images_per_second']:7.0f} images/s"
                + (f", all-reduce {reduce:.2f} ms/step" if reduce is not None else ""),
                flush=True,
            )
    summary = {
        "benchmark": "ddp",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "device": args.device,
        "runs": runs,
    }
    out = Path(args.out or HERE / "results" / f"ddp-{args.device}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
