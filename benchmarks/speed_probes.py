"""Probes for the speed work: what candidate changes to the training step would buy, each
timed against what the library does now, in one run (medians; absolute times are noisy here).

    python benchmarks/speed_probes.py            # add --compile to also try torch.compile (~1 min)

1. Adam: the fused kernel (what training uses) against the per-parameter loops.
2. Sampling grids: affine_grid (tests/reference.py) against building scale * pixel_centre +
   shift directly (the fast path), for the read and write of 3 steps at batch 64, forward and
   backward.
3. The two image projections (inference network and baseline, 2500 -> 1024 each) against one
   fused 2500 -> 2048 product, forward and backward.
4. The image projection's sparse product (forward and weight gradient) against the dense one,
   at batch 64, for images with a given fraction of non-zero pixels: where sparse stops paying
   (``networks.SPARSE_DENSITY_LIMIT``).
5. Optionally torch.compile (inductor) of the model and the baseline against eager.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from airscene.config import RunConfig
from airscene.data.scenes import load_scenes
from airscene.networks import (
    ImageProjection,
    _SparseImageProduct,
)
from airscene.spatial import read_grid, write_grid
from airscene.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import reference  # noqa: E402  (the tests' oracle)

HERE = Path(__file__).resolve().parent


def median_ms(fn, warmup: int = 5, repeats: int = 40) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def training_step_ms(config: RunConfig, fused: bool, compiled: bool = False) -> float:
    scenes = load_scenes(config.data, "train")
    images, counts = torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts)
    trainer = Trainer(config, torch.device("cpu"))
    if not fused:
        trainer.model_optimiser = torch.optim.Adam(trainer.model.parameters(), lr=1e-3, fused=False)
        trainer.baseline_optimiser = torch.optim.Adam(
            trainer.baseline.parameters(), lr=1e-2, fused=False
        )
    if compiled:
        trainer.model = torch.compile(trainer.model)
        trainer.baseline = torch.compile(trainer.baseline)
    return median_ms(lambda: trainer.train_step(images, counts), warmup=8 if compiled else 5)


def grids_ms(affine: bool) -> float:
    torch.manual_seed(0)
    m = 3 * 64
    z_where = (torch.rand(m, 3) * 0.2 + torch.tensor([0.4, -0.1, -0.1])).requires_grad_(True)
    image, glimpses = torch.rand(m, 50, 50), torch.rand(m, 28, 28, requires_grad=True)

    def step():
        grids = (reference.write_grid, reference.read_grid) if affine else (write_grid, read_grid)
        write, read = grids[0](z_where, 50), grids[1](z_where, 28)
        out = F.grid_sample(glimpses.unsqueeze(1), write, align_corners=False).sum()
        out = out + F.grid_sample(image.unsqueeze(1), read, align_corners=False).sum()
        out.backward()

    return median_ms(step)


def grid_difference() -> float:
    z_where = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 0.2 + torch.tensor(
        [0.4, -0.1, -0.1]
    )
    return max(
        float((write_grid(z_where, 50) - reference.write_grid(z_where, 50)).abs().max()),
        float((read_grid(z_where, 28) - reference.read_grid(z_where, 28)).abs().max()),
    )


def sparse_projection_ms(density: float, dense: bool) -> float:
    """Forward and weight gradient of the 2500 -> 1024 image projection at batch 64."""
    torch.manual_seed(0)
    projection = ImageProjection(2500, 1024, bound=0.02)
    x = torch.rand(64, 2500)
    x[torch.rand(64, 2500) >= density] = 0.0
    upstream = torch.randn(64, 1024)

    def step():
        projection.zero_grad(set_to_none=True)
        out = (
            torch.addmm(projection.bias, x, projection.weight)
            if dense
            else _SparseImageProduct.apply(x, projection.weight, projection.bias)
        )
        (out * upstream).sum().backward()

    return median_ms(step)


def projections_ms(fused: bool) -> float:
    torch.manual_seed(0)
    x, upstream = torch.rand(64, 2500), torch.randn(64, 1024)
    if fused:
        weight, bias = (
            torch.randn(2048, 2500, requires_grad=True),
            torch.zeros(2048, requires_grad=True),
        )

        def step():
            first, second = F.linear(x, weight, bias).split(1024, dim=1)
            ((first * upstream).sum() + (second * upstream).sum()).backward()
    else:
        w1, w2 = (
            torch.randn(1024, 2500, requires_grad=True),
            torch.randn(1024, 2500, requires_grad=True),
        )
        b1, b2 = torch.zeros(1024, requires_grad=True), torch.zeros(1024, requires_grad=True)

        def step():
            first, second = F.linear(x, w1, b1), F.linear(x, w2, b2)
            ((first * upstream).sum() + (second * upstream).sum()).backward()

    return median_ms(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to warm up)"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "speed_probes.json"))
    args = parser.parse_args(argv)
    config = RunConfig()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=64))

    results = {
        "adam_fused_ms_per_step": training_step_ms(config, fused=True),
        "adam_loops_ms_per_step": training_step_ms(config, fused=False),
    }
    results.update(
        grids_affine_ms=grids_ms(affine=True),
        grids_direct_ms=grids_ms(affine=False),
        grids_max_difference=grid_difference(),
    )
    for density in (0.02, 0.06, 0.12, 0.2, 0.3, 0.5):
        results[f"projection_dense_ms_at_{density:.2f}"] = sparse_projection_ms(density, True)
        results[f"projection_sparse_ms_at_{density:.2f}"] = sparse_projection_ms(density, False)
    results.update(
        projections_two_ms=projections_ms(False), projections_fused_ms=projections_ms(True)
    )
    if args.compile:
        results["compiled_ms_per_step"] = training_step_ms(config, fused=True, compiled=True)
        results["eager_ms_per_step_again"] = training_step_ms(config, fused=True)
    summary = {
        "benchmark": "speed_probes",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        **results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1))
    for key, value in results.items():
        print(f"{key:>28}: {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
