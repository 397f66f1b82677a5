"""Train on a dataset in another AIR implementation's format, through `airscene train --data`.

Pyro's `examples/air` reads `multi_mnist_uint8.npz`: `x` (N, 50, 50) uint8 images with digits
shrunk to about 21 px, and `y`, per-image digit lists stored as an object array (pickle). That
file cannot be downloaded here, so this script writes one of the same layout with airscene's
generator (digits scaled by 0.75 = 21 px, 60,000 train + 10,000 test images), trains the default
recipe on it without any flag about digit size, and evaluates count accuracy on the test file.
Counts go in as JSON lists beside the arrays, because `y` needs pickle and is never loaded.

    python benchmarks/foreign_npz.py        # ~7 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from airscene.cli import main as airscene
from airscene.config import DataConfig
from airscene.data.scenes import load_scenes

HERE = Path(__file__).resolve().parent


def write_pyro_like(folder: Path, seed: int) -> None:
    config = DataConfig(scale_range=(0.75, 0.75), seed=seed)
    for split in ("train", "test"):
        scenes = load_scenes(config, split)
        labels = np.empty(len(scenes), dtype=object)
        labels[:] = [
            [int(v) for v in scenes.labels[i, : scenes.counts[i]]] for i in range(len(scenes))
        ]
        np.savez(folder / f"multi_mnist_{split}.npz", x=scenes.images, y=labels)
        (folder / f"counts_{split}.json").write_text(json.dumps(scenes.counts.tolist()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", default="runs/foreign-npz", help="folder for the data and the run"
    )
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--out", default=str(HERE / "results" / "foreign_npz.json"))
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_pyro_like(work, seed=11)
    run = work / "run"
    train = [
        "train",
        "--data",
        str(work / "multi_mnist_train.npz"),
        "--data-counts",
        str(work / "counts_train.json"),
    ]
    train += [
        "--holdout-fraction",
        "0.05",
        "--steps",
        str(args.steps),
        "--run-dir",
        str(run),
        "--force",
    ]
    if airscene(train) != 0:
        return 1
    report = work / "eval.json"
    evaluate = ["eval", "--model", str(run), "--data", str(work / "multi_mnist_test.npz")]
    evaluate += [
        "--data-counts",
        str(work / "counts_test.json"),
        "--iw-samples",
        "0",
        "--out",
        str(report),
    ]
    if airscene(evaluate) != 0:
        return 1
    result = json.loads(report.read_text())
    summary = {
        "benchmark": "foreign_npz",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "data": "Pyro-layout npz: x (N, 50, 50) uint8, digits scaled 0.75 (21 px), y as pickled object array",
        "train_command": ["airscene", *train],
        "test_scenes": result["scenes"],
        "test_count_accuracy": result["count_accuracy"],
        "test_accuracy_by_count": result["accuracy_by_count"],
        "test_confusion": result["confusion"],
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(
        f"test count accuracy on {result['scenes']} images: {result['count_accuracy']:.4f} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
