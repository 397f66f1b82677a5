"""Speed of the default model: training steps/s, inference images/s, memory, and the fraction of
this machine's matmul throughput that the arithmetic reaches.

    python benchmarks/speed.py                 # CPU; --device cuda on a GPU
    python benchmarks/speed.py --quick         # fewer repetitions

Training steps are timed from the shipped model's weights (a network that has learned to count,
as in all but the first thousand or so steps of a run: the fast path skips the steps of images
whose objects are all found, so its cost depends on how many objects the network finds), and,
at batch 64, also from a fresh initialisation (every image then has an object at every step).
Inference uses the shipped model, as a user's images would.

Each figure is the median over timed repetitions after warm-up. The library's fast path and
the plain reference computation (``tests/reference.py``: every step for every image, affine_grid
sampling, dense image products, every object drawn in its step) are timed in the same run, in alternating blocks, so their ratio is
honest on a noisy shared machine. FLOPs are those of the reference computation, counted by
``torch.utils.flop_counter`` (matrix products; elementwise work is not counted): the method's
dense arithmetic. Divided by the measured time and the fp32 matmul rate of a large square
product on the same device, they give the fraction of the physical limit reached (the fast path
skips some of that arithmetic - zero pixels, absent objects - so its figure can exceed what its
own products would reach).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from airscene.checkpoint import load_model
from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.provenance import hardware
from airscene.train import Trainer, resolve_device

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the reference path is the tests' oracle
import reference  # noqa: E402

infer_plainly = reference.infer


class ReferenceTrainer(Trainer):
    """A ``Trainer`` whose steps take the reference computation."""

    def objective(self, x, rho):
        return reference.objective(self.model, self.baseline, self.normaliser, x, self.noise, rho)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    return interleaved_medians({"only": fn}, device, warmup, repeats)["only"]


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of each function, timed in alternating blocks of 10 calls, so that a
    slow spell of the machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronise(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(t) for t in times.values()) < repeats:
        for name, fn in fns.items():
            for _ in range(10):
                started = time.perf_counter()
                fn()
                synchronise(device)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def new_trainer(
    config: RunConfig, device: torch.device, trained: bool, kind: type[Trainer] = Trainer
) -> Trainer:
    """A trainer of ``config`` (``kind``: ``Trainer`` or ``ReferenceTrainer``), its
    network starting from the shipped model's weights when ``trained`` (the regime of most of a
    run), else from a fresh initialisation."""
    trainer = kind(config, device)
    if trained:
        trainer.model.load_state_dict(load_model("default", device)[0].state_dict())
    return trainer


def pyro_ms_per_step() -> tuple[float, str]:
    """Pyro's examples/air step at batch 64 on this machine: measured by pyro_step_time.py when
    its result is here, else the figure the speed issue was written with."""
    measured = HERE / "results" / "pyro_step_time.json"
    if measured.exists():
        return float(json.loads(measured.read_text())["ms_per_step"]), "pyro_step_time.json"
    return 117.0, "the speed issue's measurement"


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

    def time_training(batch: int, trained: bool) -> dict[str, float]:
        run = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch))
        fast = new_trainer(run, device, trained)
        reference = new_trainer(run, device, trained, ReferenceTrainer)
        seconds = interleaved_medians(
            {
                "fast": lambda: fast.train_step(images, counts),
                "reference": lambda: reference.train_step(images, counts),
            },
            device,
            warmup=5,
            repeats=repeats,
        )
        flops = count_flops(lambda: reference.train_step(images, counts))
        return {
            "ms_per_step": seconds["fast"] * 1e3,
            "steps_per_second": 1 / seconds["fast"],
            "reference_ms_per_step": seconds["reference"] * 1e3,
            "speedup_over_reference": seconds["reference"] / seconds["fast"],
            "gflop_per_step": flops / 1e9,
            "fraction_of_matmul_limit": flops / seconds["fast"] / limit,
            "reference_fraction_of_matmul_limit": flops / seconds["reference"] / limit,
        }

    training = {batch: time_training(batch, trained=True) for batch in (1, 32, 64, 128)}
    training_at_init = {64: time_training(64, trained=False)}

    model = load_model("default", device)[0]
    inference = {}
    with torch.no_grad():
        for batch in (1, 64, 512):
            x = images[:batch].float() / 255.0
            seconds = interleaved_medians(
                {
                    "fast": lambda x=x: model(x, sample=False),
                    "reference": lambda x=x: infer_plainly(model, x, sample=False),
                },
                device,
                warmup=5,
                repeats=repeats * (5 if batch == 1 else 1),
            )
            flops = count_flops(lambda x=x: infer_plainly(model, x, sample=False))
            inference[batch] = {
                "ms_per_batch": seconds["fast"] * 1e3,
                "images_per_second": batch / seconds["fast"],
                "reference_ms_per_batch": seconds["reference"] * 1e3,
                "speedup_over_reference": seconds["reference"] / seconds["fast"],
                "mflop_per_image": flops / batch / 1e6,
                "fraction_of_matmul_limit": flops / seconds["fast"] / limit,
            }

    pyro_ms, pyro_source = pyro_ms_per_step()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    summary = {
        "benchmark": "speed",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "hardware": hardware(),
        "matmul_gflops": limit / 1e9,
        "training_weights": "shipped model (airscene/pretrained/air-multi-mnist)",
        "training": training,
        "training_at_init": training_at_init,
        "inference_weights": "shipped model",
        "inference": inference,
        "peak_memory_mib": peak,
        "pyro_reference_ms_per_step_batch64_cpu": pyro_ms,
        "pyro_reference_source": pyro_source,
        "speedup_over_pyro_batch64": pyro_ms / training[64]["ms_per_step"],
    }
    out = Path(args.out or HERE / "results" / f"speed-{device.type}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"matmul limit: {limit / 1e9:.0f} GFLOP/s on {device}")
    rows = [(f"{batch:>3}", row) for batch, row in training.items()]
    rows += [(f"{batch:>3} from init", row) for batch, row in training_at_init.items()]
    for batch, row in rows:
        print(
            f"train batch {batch}: {row['ms_per_step']:6.1f} ms/step, {row['steps_per_second']:5.1f} steps/s "
            f"(reference {row['reference_ms_per_step']:.1f} ms, x{row['speedup_over_reference']:.2f}), "
            f"{row['gflop_per_step']:.2f} GFLOP, {100 * row['fraction_of_matmul_limit']:.0f}% of the matmul limit"
        )
    for batch, row in inference.items():
        print(
            f"infer batch {batch:>3}: {row['ms_per_batch']:6.2f} ms, {row['images_per_second']:7.0f} images/s "
            f"(reference {row['reference_ms_per_batch']:.2f} ms, x{row['speedup_over_reference']:.2f}), "
            f"{100 * row['fraction_of_matmul_limit']:.0f}% of the matmul limit"
        )
    print(
        f"peak memory {peak:.0f} MiB; Pyro's example: {pyro_ms:.1f} ms/step at batch 64 on this "
        f"CPU ({pyro_source}; x{pyro_ms / training[64]['ms_per_step']:.1f} here) -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
