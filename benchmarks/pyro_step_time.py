"""Pyro's `examples/air`, timed on this machine: milliseconds per training step at batch 64.

    python benchmarks/pyro_step_time.py --pyro-air DIR --python PYRO_PYTHON

``DIR`` holds Pyro 1.9.1's ``examples/air`` (main.py, air.py, modules.py, viz.py), unmodified;
``PYRO_PYTHON`` is an interpreter with ``pyro-ppl==1.9.1`` and ``torch==2.13.0`` (a separate
virtual environment: airscene does not depend on Pyro). Nothing can be downloaded here, so the
script writes the file the example loads, ``DIR/.data/multi_mnist_uint8.npz`` (``x`` uint8
(60000, 50, 50), ``y`` per-image digit lists), in the example's layout from airscene's generator
(digits shrunk to 21 px, as the example's own generator does on average), and puts stand-ins
for ``visdom`` and ``torchvision`` on the path: the example imports them, but uses visdom only
with ``--viz`` and torchvision only to download MNIST when that file is missing (torchvision
does not import beside this torch build).

The example's own main.py then runs as it is, with its defaults (TraceGraph_ELBO, batch 64,
3 steps, LSTM 256, data-dependent baselines), for ``--short`` and for ``--long`` steps; the
difference of the two wall times divided by the difference of steps is the time of a step,
free of start-up and data loading. Between the example's runs, airscene's default training step
at batch 64 is timed in this process (median of 100 steps after warm-up, from the shipped
model's weights and from a fresh initialisation), so the ratio comes from one window of this
shared machine. Everything alternates ``--repeats`` times; medians are reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from speed import median_seconds, new_trainer  # benchmarks/, beside this script

from airscene.config import DataConfig, RunConfig
from airscene.data.scenes import load_scenes
from airscene.provenance import hardware

HERE = Path(__file__).resolve().parent


def write_example_data(pyro_air: Path) -> Path:
    scenes = load_scenes(DataConfig(scale_range=(0.75, 0.75)), "train")
    labels = np.empty(len(scenes), dtype=object)
    labels[:] = [[int(v) for v in scenes.labels[i, : scenes.counts[i]]] for i in range(len(scenes))]
    path = pyro_air / ".data" / "multi_mnist_uint8.npz"
    path.parent.mkdir(exist_ok=True)
    np.savez(path, x=scenes.images, y=labels)
    return path


def run_seconds(python: str, pyro_air: Path, steps: int, stand_ins: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI would move the data directory
    env["PYTHONPATH"] = str(stand_ins)
    command = [python, "main.py", "-n", str(steps), "--progress-every", str(10**6)]
    started = time.perf_counter()
    subprocess.run(command, cwd=pyro_air, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def airscene_step_ms(trained: bool, steps: int = 100) -> float:
    config, device = RunConfig(), torch.device("cpu")
    scenes = load_scenes(config.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    trainer = new_trainer(config, device, trained)
    return median_seconds(lambda: trainer.train_step(images, counts), device, 10, steps) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pyro-air", required=True, help="Pyro 1.9.1's examples/air folder")
    parser.add_argument("--python", required=True, help="a Python with pyro-ppl 1.9.1")
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "pyro_step_time.json"))
    args = parser.parse_args(argv)
    pyro_air = Path(args.pyro_air).resolve()
    if not (pyro_air / "main.py").is_file():
        parser.error(f"{pyro_air} holds no main.py: give Pyro 1.9.1's examples/air folder")
    try:
        version = subprocess.run(
            [args.python, "-c", "import pyro, torch; print(pyro.__version__, torch.__version__)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        parser.error(f"{args.python} cannot import pyro and torch: give a Python with pyro-ppl")
    write_example_data(pyro_air)
    step_ms: list[float] = []
    ours: dict[str, list[float]] = {"shipped weights": [], "fresh initialisation": []}
    with tempfile.TemporaryDirectory() as stand_ins:
        folder = Path(stand_ins)
        (folder / "visdom.py").write_text("class Visdom:\n    pass\n")
        (folder / "torchvision").mkdir()
        (folder / "torchvision" / "__init__.py").write_text("")
        (folder / "torchvision" / "transforms.py").write_text("")
        (folder / "torchvision" / "datasets.py").write_text(
            "class MNIST:\n    mirrors = []\n    resources = []\n"
        )
        for _ in range(args.repeats):
            short = run_seconds(args.python, pyro_air, args.short, Path(stand_ins))
            long = run_seconds(args.python, pyro_air, args.long, Path(stand_ins))
            step_ms.append((long - short) / (args.long - args.short) * 1e3)
            ours["shipped weights"].append(airscene_step_ms(trained=True))
            ours["fresh initialisation"].append(airscene_step_ms(trained=False))
    summary = {
        "benchmark": "pyro_step_time",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "pyro": version[0],
        "pyro_torch": version[1],
        "batch": 64,
        "steps_short_long": [args.short, args.long],
        "ms_per_step_each_repeat": step_ms,
        "ms_per_step": statistics.median(step_ms),
        "airscene_ms_per_step": {k: statistics.median(v) for k, v in ours.items()},
        "airscene_ms_per_step_each_repeat": ours,
    }
    summary["speedup_over_pyro"] = {
        k: summary["ms_per_step"] / v for k, v in summary["airscene_ms_per_step"].items()
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(
        f"Pyro {version[0]} examples/air, batch 64: {summary['ms_per_step']:.1f} ms per step "
        f"(repeats: {', '.join(f'{v:.1f}' for v in step_ms)})"
    )
    for name, ms in summary["airscene_ms_per_step"].items():
        print(f"airscene, {name}: {ms:.1f} ms per step, x{summary['speedup_over_pyro'][name]:.1f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
