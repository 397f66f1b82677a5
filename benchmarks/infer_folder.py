"""Throughput of `airscene infer` with the shipped model: a folder of 10,000 PNG files (read,
fitted, inferred, boxes mapped back), and the model alone on tensors already in memory.

    python benchmarks/infer_folder.py       # prints a table, writes benchmarks/results/infer_folder.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import airscene
from airscene.config import DataConfig
from airscene.data.scenes import export_png, load_scenes
from airscene.data.training import images_to_tensor

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", default=str(HERE / "results" / "infer_folder.json"))
    args = parser.parse_args(argv)

    pipeline = airscene.load("default")
    scenes = load_scenes(DataConfig(seed=2026, n_test=args.n), "test")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_png(scenes, Path(tmp) / "pngs")
        paths = sorted(folder.glob("*.png"))
        started = time.perf_counter()
        results = list(pipeline.iter_infer(paths, batch_size=512))
        folder_seconds = time.perf_counter() - started
    correct = sum(int(r.count == c) for r, c in zip(results, scenes.counts, strict=True))

    model = pipeline.model
    x = images_to_tensor(scenes.images)
    rows = {}
    with torch.no_grad():
        for batch in (1, 64, 512):
            chunk = x[:batch]
            for _ in range(3):
                model(chunk, sample=False)
            times = []
            for _ in range(20 if batch > 1 else 200):
                t = time.perf_counter()
                model(chunk, sample=False)
                times.append(time.perf_counter() - t)
            median = statistics.median(times)
            rows[batch] = {"median_ms": median * 1e3, "images_per_second": batch / median}

    summary = {
        "benchmark": "infer_folder",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "folder_images": len(paths),
        "folder_seconds": folder_seconds,
        "folder_images_per_second": len(paths) / folder_seconds,
        "folder_count_accuracy": correct / len(results),
        "model_only": rows,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(
        f"folder of {len(paths)} PNGs: {folder_seconds:.1f} s, {len(paths) / folder_seconds:.0f} images/s, "
        f"count accuracy {correct / len(results):.4f}"
    )
    for batch, row in rows.items():
        print(
            f"model only, batch {batch:>3}: {row['median_ms']:.2f} ms, {row['images_per_second']:.0f} images/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
