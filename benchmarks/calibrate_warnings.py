"""Calibrate and measure ``airscene infer``'s warnings on the shipped models.

A record is flagged when the model's reconstruction gets more of the image wrong (the
``residual``: the fraction of the image's intensity the reconstruction gets wrong, on the
canvas) than on all but ``RESIDUAL_QUANTILE`` of its held-out scenes, when it finds more
objects than its training scenes held, or (3D) when an object is placed off the floor.

1. Calibration (``--write``): each shipped model's limit, the quantile of the residual on 1,000
   held-out scenes of its own test split, written to ``airscene/pretrained/*/calibration.json``.
2. Clean scenes flagged: fresh scenes (data seed 2026, never used for calibration).
3. The cases users met, generated here: a 400x300 image of four large digits, a colour image of
   two dark digits on a noisy gradient, a transparent PNG of black strokes, a float TIFF in
   [0, 1] (2D models); an MNIST scene and a crop of a render (3D model). For each: the fraction
   flagged and the count accuracy where the count is known.

    python benchmarks/calibrate_warnings.py [--write] [--n 100]

Writes ``benchmarks/results/warnings.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from airscene.checkpoint import load_model
from airscene.config import DataConfig
from airscene.data.mnist import load_mnist
from airscene.evaluate import RESIDUAL_QUANTILE
from airscene.pipeline import CALIBRATION_FILE, Pipeline
from airscene.provenance import git_revision, hardware
from airscene.registry import scene_family
from airscene.shipped import PRETRAINED, pretrained_dir

HERE = Path(__file__).resolve().parent


def calibrate(name: str, model, checkpoint, scenes: int, write: bool) -> float:
    data = checkpoint.config.data
    held_out = scene_family(data.kind).load(data, "test", n=scenes)
    limit = model.objects.evaluate(model, held_out).residual_limit
    if write:
        record = {
            "residual_limit": round(limit, 6),
            "quantile": RESIDUAL_QUANTILE,
            "scenes": scenes,
            "data": f"the test split of its training data ({data.kind}, data seed {data.seed})",
            "measured_by": "benchmarks/calibrate_warnings.py --write",
            "date": datetime.date.today().isoformat(),
        }
        (pretrained_dir(name) / CALIBRATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return limit


def flagged(pipeline: Pipeline, images: list, counts: list[int] | None = None) -> dict:
    """What share of ``images`` the pipeline warns about or refuses (an image of the kind the
    model does not read: grey for a colour model), the count accuracy, the median residual."""
    results = pipeline.infer(images)
    flags = [r.warning is not None or r.error is not None for r in results]
    row = {"images": len(results), "flagged": float(np.mean(flags))}
    refused = sum(r.error is not None for r in results)
    if refused:
        row["refused"] = refused / len(results)
    if counts is not None:
        right = [r.count == c for r, c in zip(results, counts, strict=True)]
        row["count_accuracy"] = float(np.mean(right))
    answered = [r.residual for r in results if r.error is None]
    row["residual_median"] = float(np.median(answered)) if answered else None
    return row


def digit(mnist, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random MNIST test digit as float [0, 1], resized to ``size`` px."""
    image = Image.fromarray(mnist.images[rng.integers(len(mnist.images))])
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255


def four_digits_large(mnist, rng, n: int) -> tuple[list, list[int]]:
    """400x300, four digits of 80 px, bright on black, apart."""
    images = []
    for _ in range(n):
        canvas = np.zeros((300, 400), np.float32)
        for x in rng.permutation([10, 105, 200, 300]):
            y = rng.integers(10, 210)
            canvas[y : y + 80, x : x + 80] = np.maximum(
                canvas[y : y + 80, x : x + 80], digit(mnist, rng, 80)
            )
        images.append(canvas)
    return images, [4] * n


def colour_on_gradient(mnist, rng, n: int) -> tuple[list, list[int]]:
    """100x100 RGB: two dark digits on a two-colour gradient with noise (sd 0.1), given in grey
    (luminance): a grey model refuses colour images, so a user converts them first."""
    images = []
    ramp = np.linspace(0, 1, 100, dtype=np.float32)[None, :, None]
    for _ in range(n):
        a, b = rng.uniform(0.5, 1.0, 3), rng.uniform(0.5, 1.0, 3)
        rgb = (1 - ramp) * a + ramp * b + rng.normal(0, 0.1, (100, 100, 3))
        for x in (8, 54):
            y = rng.integers(5, 55)
            ink = digit(mnist, rng, 38)[..., None]
            rgb[y : y + 38, x : x + 38] = rgb[y : y + 38, x : x + 38] * (1 - ink)
        grey = np.clip(rgb, 0, 1).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images.append(grey)
    return images, [2] * n


def saved(images: list[np.ndarray], suffix: str, mode: str, folder: Path) -> list[Path]:
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{suffix}-{i:04d}.{suffix}"
        Image.fromarray(image, mode).save(path)
        paths.append(path)
    return paths


def transparent_strokes(scenes, folder: Path) -> list[Path]:
    """RGBA PNGs: black strokes (the scenes' ink as alpha), transparent elsewhere."""
    rgba = np.zeros((*scenes.images.shape, 4), np.uint8)
    rgba[..., 3] = scenes.images
    return saved(list(rgba), "png", "RGBA", folder)


def float_tiffs(scenes, folder: Path) -> list[Path]:
    """Floating-point TIFFs holding the scenes in [0, 1]."""
    return saved([s.astype(np.float32) / 255 for s in scenes.images], "tiff", "F", folder)


def crops(scenes3d, rng, n: int) -> list:
    """A 40x40 crop of each render, at a random place."""
    out = []
    for image in scenes3d.images[:n]:
        y, x = rng.integers(0, 24, 2)
        out.append(image[..., y : y + 40, x : x + 40])  # grey (H, W) or colour (C, H, W)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write calibration.json files")
    parser.add_argument("--n", type=int, default=100, help="images per case")
    parser.add_argument("--calibration-scenes", type=int, default=1000)
    parser.add_argument("--clean-scenes", type=int, default=2000)
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(PRETRAINED),
        choices=list(PRETRAINED),
        help="the shipped models to measure (default: all); the others keep their rows in "
        "results/warnings.json",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    mnist = load_mnist("test")
    report = {"date": datetime.date.today().isoformat(), "git_revision": git_revision(),
              "hardware": hardware(), "quantile": RESIDUAL_QUANTILE, "models": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in args.models:
            model, checkpoint = load_model(name)
            limit = calibrate(name, model, checkpoint, args.calibration_scenes, args.write)
            pipeline = Pipeline(model, checkpoint)
            pipeline.residual_limit = limit
            data = checkpoint.config.data
            fresh = scene_family(data.kind).load(
                DataConfig(**{**vars(data), "seed": 2026}), "test", n=args.clean_scenes
            )
            rows = {"clean held-out scenes (data seed 2026)": flagged(
                pipeline, list(fresh.images), list(fresh.counts))}  # fmt: skip
            small = fresh[: args.n]
            inked = fresh[np.flatnonzero(fresh.counts > 0)[: args.n]]  # one transparent everywhere
            # is refused (nothing to see), not answered
            if data.kind == "multi-mnist":
                rows["400x300, four 80 px digits"] = flagged(
                    pipeline, *four_digits_large(mnist, rng, args.n)
                )
                rows["colour, two dark digits on a noisy gradient"] = flagged(
                    pipeline, *colour_on_gradient(mnist, rng, args.n)
                )
                rows["transparent PNG of black strokes"] = flagged(
                    pipeline, transparent_strokes(inked, folder), list(inked.counts)
                )
                rows["float TIFF in [0, 1]"] = flagged(
                    pipeline, float_tiffs(small, folder), list(small.counts)
                )
            else:
                mnist_scenes = scene_family("multi-mnist").load(
                    DataConfig(seed=2026), "test", n=args.n
                )
                rows["a Multi-MNIST scene"] = flagged(pipeline, list(mnist_scenes.images))
                rows["a 40x40 crop of a render"] = flagged(pipeline, crops(fresh, rng, args.n))
            report["models"][name] = {"residual_limit": limit, "cases": rows,
                                      "date": report["date"], "git_revision": report["git_revision"]}  # fmt: skip
            print(f"{name}: limit {limit:.4f}")
            for case, row in rows.items():
                accuracy = (
                    f", count {100 * row['count_accuracy']:.1f}%" if "count_accuracy" in row else ""
                )
                median = row["residual_median"]
                median = "-" if median is None else f"{median:.3f}"
                print(f"  {case}: {100 * row['flagged']:.1f}% of {row['images']} flagged"
                      f" (median residual {median}{accuracy})")  # fmt: skip
    out = HERE / "results" / "warnings.json"
    if out.is_file() and set(args.models) != set(PRETRAINED):  # keep the models not measured
        report["models"] = {**json.loads(out.read_text())["models"], **report["models"]}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
