"""Speed of the default model: training steps/s, inference images/s, memory, and the fraction of
this machine's matmul throughput that the arithmetic reaches.

    python benchmarks/speed.py                 # CPU; --device cuda on a GPU
    python benchmarks/speed.py --quick         # fewer repetitions

Each figure is the median over timed repetitions after warm-up. FLOPs are counted by
``torch.utils.flop_counter`` (matrix products and convolutions; elementwise work is not counted),
and divided by the measured fp32 matmul rate of a large square product on the same device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.train import Trainer, resolve_device

HERE = Path(__file__).resolve().parent


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    synchronise(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_rate(device: torch.device, size: int = 2048) -> float:
    """Measured fp32 FLOP/s of a (size x size) @ (size x size) product."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    seconds = median_seconds(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * size**3 / seconds


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--out", default=None, help="default: benchmarks/results/speed-{cpu,cuda}.json"
    )
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    repeats = 20 if args.quick else 60
    config = RunConfig()
    limit = matmul_rate(device)

    # Real Multi-MNIST scenes: the cost of a step depends on how many objects are present.
    scenes = load_scenes(config.data, "train")
    images = torch.from_numpy(scenes.images).to(device)
    counts = torch.from_numpy(scenes.counts).to(device)
    training = {}
    for batch in (32, 64, 128):
        trainer = Trainer(
            dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch)),
            device,
        )
        step = lambda trainer=trainer: trainer.train_step(images, counts)  # noqa: E731
        seconds = median_seconds(step, device, warmup=5, repeats=repeats)
        flops = count_flops(step)
        training[batch] = {
            "ms_per_step": seconds * 1e3,
            "steps_per_second": 1 / seconds,
            "gflop_per_step": flops / 1e9,
            "fraction_of_matmul_limit": flops / seconds / limit,
        }

    model = Trainer(config, device).model.eval()
    inference = {}
    with torch.no_grad():
        for batch in (1, 64, 512):
            x = images[:batch].float() / 255.0
            run = lambda x=x: model(x, sample=False)  # noqa: E731
            seconds = median_seconds(
                run, device, warmup=5, repeats=repeats * (5 if batch == 1 else 1)
            )
            flops = count_flops(run)
            inference[batch] = {
                "ms_per_batch": seconds * 1e3,
                "images_per_second": batch / seconds,
                "mflop_per_image": flops / batch / 1e6,
                "fraction_of_matmul_limit": flops / seconds / limit,
            }

    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    summary = {
        "benchmark": "speed",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "hardware": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "matmul_gflops": limit / 1e9,
        "training": training,
        "inference": inference,
        "peak_memory_mib": peak,
        "pyro_reference_ms_per_step_batch64_cpu": 117.0,
    }
    out = Path(args.out or HERE / "results" / f"speed-{device.type}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"matmul limit: {limit / 1e9:.0f} GFLOP/s on {device}")
    for batch, row in training.items():
        print(
            f"train batch {batch:>3}: {row['ms_per_step']:6.1f} ms/step, {row['steps_per_second']:5.1f} steps/s, "
            f"{row['gflop_per_step']:.2f} GFLOP, {100 * row['fraction_of_matmul_limit']:.0f}% of the matmul limit"
        )
    for batch, row in inference.items():
        print(
            f"infer batch {batch:>3}: {row['ms_per_batch']:6.2f} ms, {row['images_per_second']:7.0f} images/s, "
            f"{100 * row['fraction_of_matmul_limit']:.0f}% of the matmul limit"
        )
    print(
        f"peak memory {peak:.0f} MiB; Pyro's example: 117 ms/step at batch 64 on this CPU -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
