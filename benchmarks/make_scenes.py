"""Time Multi-MNIST scene generation (no cache): the default train set and a 3-digit test set.

    python benchmarks/make_scenes.py                 # 60,000 train scenes, 3 repeats
    python benchmarks/make_scenes.py --n 6000 --repeats 5 --out /tmp/bench.json

Generation is timed by calling ``generate_scenes`` directly with a fresh ``scene_rng`` each
repeat, so neither the on-disk cache nor a previous repeat's generator state is involved.
MNIST loading is timed separately: once cold (first read and decompression of the idx files)
and once warm (the in-memory cache that generation itself hits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from airscene.config import DataConfig
from airscene.data.mnist import _load_split_cached, load_mnist
from airscene.data.scenes import generate_scenes, scene_rng
from airscene.provenance import hardware

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "make_scenes.json"


def time_mnist(split: str) -> dict:
    _load_split_cached.cache_clear()
    started = time.perf_counter()
    load_mnist(split)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    load_mnist(split)
    warm = time.perf_counter() - started
    return {"split": split, "cold_s": cold, "warm_s": warm}


def time_generation(name: str, config: DataConfig, split: str, n: int, repeats: int) -> dict:
    load_mnist(split, config.mnist_dir)  # warm-up: MNIST is read once, outside the timings
    seconds, counts = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        scenes = generate_scenes(config, split, n, scene_rng(config, split))
        seconds.append(time.perf_counter() - started)
        histogram = np.bincount(scenes.counts, minlength=config.max_count + 1)
        counts = {str(k): int(histogram[k]) for k in config.counts}
    median = statistics.median(seconds)
    return {
        "name": name,
        "split": split,
        "n": n,
        "config": {"counts": list(config.counts), "overlap": config.overlap, "seed": config.seed},
        "repeats_s": seconds,
        "median_s": median,
        "min_s": min(seconds),
        "scenes_per_s": n / median,
        "count_histogram": counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="train scenes (default: 60000)")
    parser.add_argument(
        "--n-three", type=int, default=10_000, help="test scenes with 3 digits (default: 10000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)

    mnist = [time_mnist("train"), time_mnist("test")]
    cases = [
        time_generation("default {0,1,2}", DataConfig(), "train", args.n, args.repeats),
        time_generation("three {3}", DataConfig(counts=(3,)), "test", args.n_three, args.repeats),
    ]

    print(f"{'MNIST load':<20} {'cold s':>8} {'warm s':>10}")
    for row in mnist:
        print(f"{row['split']:<20} {row['cold_s']:>8.3f} {row['warm_s']:>10.6f}")
    print()
    print(f"{'generation':<20} {'split':<6} {'n':>7} {'median s':>9} {'min s':>7} {'scenes/s':>10}")
    for row in cases:
        print(
            f"{row['name']:<20} {row['split']:<6} {row['n']:>7} {row['median_s']:>9.3f} "
            f"{row['min_s']:>7.3f} {row['scenes_per_s']:>10.0f}"
        )

    result = {
        "benchmark": "make_scenes",
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "hardware": hardware(),
        "mnist_load": mnist,
        "generation": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
