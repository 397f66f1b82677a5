"""A folder of colour images of objects airscene was never built for, as a user would bring,
and how a model trained on it counts them: the check of the README's recipe for your own colour
images (issue 31, item 5).

    python benchmarks/own_colour_objects.py make OUT [--train 20000] [--test 1000] [--seed 0]
    airscene train --kind sprites --inference grid --data OUT/train --run-dir RUN
    python benchmarks/own_colour_objects.py count RUN [RUN ...] --data OUT [--out FILE]

``make`` writes ``OUT/train`` and ``OUT/test``: 64x64 RGB PNGs and ``counts.csv`` (file,count),
nothing else, as a user's folder has no masks, boxes or kinds (the test scenes' background
kinds go to ``OUT/test-backgrounds.json`` and what was made to ``OUT/made.json``, beside the
folders, for ``count``). Each scene holds
0-4 objects of five kinds the package's sprites do not have (a five-pointed star, a plus, a
hexagon, a ring and an ellipse), each turned by a random angle, 10-18 px across, in a saturated
colour, drawn at four times the size and box-filtered down (soft, anti-aliased rims, as in
photographs and renders, where the sprites' rims are hard), later ones in front of earlier ones
with each keeping at least 80% of its pixels; over a background that is a flat colour, a radial
gradient between two muted colours, or a 3x3 grid of muted colours bicubically upsampled (a
smooth field, but of plateaus about a third of the canvas wide, not the bilinear ramps of the
sprites' noise).

``count`` reads ``OUT/test`` with each model as ``airscene infer`` does and writes count
accuracy overall, by true count and by background kind, over and under, and the share of
records warned, to ``benchmarks/results/own_colour_objects.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from airscene.data.sprites import hsv_to_rgb

CANVAS = 64
SUPER = 4  # drawn at this many times the size, then box-filtered down
SIZES = (10, 18)  # an object's side (its extent before turning), px
COUNTS = (0, 1, 2, 3, 4)
KINDS = ("star", "plus", "hexagon", "ring", "ellipse")
MIN_VISIBLE = 0.8
BACKGROUNDS = ("flat", "radial gradient", "bicubic 3x3 grid")
HERE = Path(__file__).resolve().parent


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB in [0, 1] of one colour given in HSV (the sprites' conversion, for one colour)."""
    return hsv_to_rgb(np.asarray(hue), np.asarray(saturation), np.asarray(value))


def outline(kind: str, side: float, angle: float, centre: np.ndarray) -> list[np.ndarray]:
    """The polygons (each (P, 2) in supersampled px) of an object: the first filled, any
    second cut out of it (the ring's hole)."""

    def turned(points: np.ndarray) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        return points @ np.array([[c, s], [-s, c]]) + centre

    r = side / 2

    def around(n: int, radius: float) -> np.ndarray:
        """``n`` points evenly round a circle of ``radius``, (n, 2)."""
        angles = 2 * np.pi * np.arange(n) / n
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if kind == "star":
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        t = 2 * np.pi * np.arange(10) / 10 - np.pi / 2
        return [turned(np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1))]
    if kind == "plus":
        a, b = r, 0.35 * r
        points = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                  (-b, b), (-a, b), (-a, -b), (-b, -b)]  # fmt: skip
        return [turned(np.array(points, dtype=float))]
    if kind == "hexagon":
        return [turned(around(6, r))]
    if kind == "ring":
        return [turned(around(48, r)), turned(around(48, 0.5 * r))]
    ellipse = around(48, r) * np.array([1.0, 0.55])
    return [turned(ellipse)]


def object_mask(kind: str, side: float, angle: float, centre: np.ndarray) -> np.ndarray:
    """Coverage (CANVAS, CANVAS) in [0, 1] of one object: drawn supersampled, box-filtered."""
    big = Image.new("L", (CANVAS * SUPER, CANVAS * SUPER), 0)
    draw = ImageDraw.Draw(big)
    polygons = outline(kind, side * SUPER, angle, centre * SUPER)
    draw.polygon([tuple(p) for p in polygons[0]], fill=255)
    for hole in polygons[1:]:
        draw.polygon([tuple(p) for p in hole], fill=0)
    small = big.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def background(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A background (CANVAS, CANVAS, 3) in [0, 1] and its kind (an index into BACKGROUNDS)."""

    def muted() -> np.ndarray:
        return hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.15, 0.6))

    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(muted(), (CANVAS, CANVAS, 3)).copy(), 0
    if kind == 1:
        centre = rng.uniform(0, CANVAS, 2)
        y, x = np.mgrid[0:CANVAS, 0:CANVAS] + 0.5
        t = np.clip(np.hypot(x - centre[0], y - centre[1]) / (CANVAS * 1.2), 0, 1)[..., None]
        return muted() * (1 - t) + muted() * t, 1
    grid = np.stack([[muted() for _ in range(3)] for _ in range(3)])
    image = Image.fromarray(np.round(grid * 255).astype(np.uint8)).resize(
        (CANVAS, CANVAS), Image.Resampling.BICUBIC
    )
    return np.asarray(image, dtype=np.float64) / 255.0, 2


def scene(count: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One scene (CANVAS, CANVAS, 3) uint8 of ``count`` objects, each mostly visible, and its
    background's kind."""
    while True:
        image, kind_of_background = background(rng)
        visible, alone = [], []
        for _ in range(count):
            side = rng.uniform(*SIZES)
            centre = rng.uniform(side / 2 + 1, CANVAS - side / 2 - 1, 2)
            kind = KINDS[rng.integers(len(KINDS))]
            mask = object_mask(kind, side, rng.uniform(0, 2 * np.pi), centre)
            colour = hsv(rng.random(), rng.uniform(0.75, 1), rng.uniform(0.8, 1))
            image = image * (1 - mask[..., None]) + colour * mask[..., None]
            visible = [earlier * (1 - mask) for earlier in visible] + [mask]
            alone.append(mask.sum())
        if all(v.sum() >= MIN_VISIBLE * a for v, a in zip(visible, alone, strict=True)):
            return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), kind_of_background


def write(out: Path, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` scenes as PNGs with ``counts.csv`` in ``out``; their backgrounds' kinds."""
    out.mkdir(parents=True, exist_ok=False)
    counts = rng.choice(COUNTS, n)
    kinds = []
    with open(out / "counts.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "count"])
        for index, count in enumerate(counts):
            name = f"{index:05d}.png"
            image, kind = scene(int(count), rng)
            Image.fromarray(image).save(out / name)
            writer.writerow([name, int(count)])
            kinds.append(kind)
    return kinds


def make(args: argparse.Namespace) -> None:
    train_rng, test_rng = (np.random.default_rng([args.seed, split]) for split in (0, 1))
    write(args.out / "train", args.train, train_rng)
    kinds = write(args.out / "test", args.test, test_rng)
    names = [f"{index:05d}.png" for index in range(args.test)]
    record = {name: BACKGROUNDS[kind] for name, kind in zip(names, kinds, strict=True)}
    (args.out / "test-backgrounds.json").write_text(json.dumps(record, indent=0) + "\n")
    made = {"seed": args.seed, "train": args.train, "test": args.test, "canvas": CANVAS,
            "sizes": SIZES, "counts": COUNTS, "kinds": KINDS}  # fmt: skip
    (args.out / "made.json").write_text(json.dumps(made) + "\n")
    print(f"wrote {args.train} + {args.test} scenes to {args.out}")


def count(args: argparse.Namespace) -> None:
    import airscene
    from airscene.provenance import git_revision, hardware

    folder = args.data / "test"
    truth = {row["file"]: int(row["count"]) for row in csv.DictReader(open(folder / "counts.csv"))}
    backgrounds = json.loads((args.data / "test-backgrounds.json").read_text())
    names = sorted(truth)
    true = np.array([truth[name] for name in names])
    kinds = np.array([backgrounds[name] for name in names])
    report = {"date": datetime.date.today().isoformat(), "git_revision": git_revision(),
              "hardware": hardware(), "data": str(args.data), "models": {}}  # fmt: skip
    if (args.data / "made.json").is_file():
        report["made"] = json.loads((args.data / "made.json").read_text())
    for run in args.runs:
        results = airscene.load(run).infer([folder / name for name in names])
        found = np.array([result.count for result in results])
        right = found == true
        row = {
            "count": float(right.mean()),
            "over": float((found > true).mean()),
            "under": float((found < true).mean()),
            "warned": float(np.mean([result.warning is not None for result in results])),
            "count_by_true_count": {int(n): float(right[true == n].mean()) for n in set(true)},
            "count_by_background": {
                k: float(right[kinds == k].mean()) for k in BACKGROUNDS if (kinds == k).any()
            },
            "over_by_background": {
                k: float((found > true)[kinds == k].mean())
                for k in BACKGROUNDS
                if (kinds == k).any()
            },
        }
        report["models"][run] = row
        by_kind = ", ".join(f"{k} {100 * v:.1f}%" for k, v in row["count_by_background"].items())
        print(f"{run}: count {100 * row['count']:.1f}% (over {100 * row['over']:.1f}%; {by_kind})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    making = verbs.add_parser("make", help="write the train and test folders")
    making.add_argument("out", type=Path)
    making.add_argument("--train", type=int, default=20_000)
    making.add_argument("--test", type=int, default=1_000)
    making.add_argument("--seed", type=int, default=0)
    counting = verbs.add_parser("count", help="count the test folder with trained models")
    counting.add_argument("runs", nargs="+", help="runs, checkpoints or shipped model names")
    counting.add_argument("--data", type=Path, required=True, help="the folder make wrote")
    counting.add_argument("--out", type=Path, default=HERE / "results" / "own_colour_objects.json")
    args = parser.parse_args()
    if args.verb == "make":
        make(args)
    else:
        count(args)


if __name__ == "__main__":
    main()
