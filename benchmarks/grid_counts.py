"""Count accuracy of a grid model (a run, checkpoint or shipped model) on SPAIR's comparison
and the transfer canvases, as ``airscene experiment many-objects`` counts its grid model, with
no training and no sequential baseline: how the seeds of the grid's recipe compare.

    python benchmarks/grid_counts.py RUN [RUN ...] [--scenes 1000] [--only-48] [--with-160]
        [--out FILE]

For each model: held-out scenes of MNIST test digits at 48 px with n = 1, 3, 5, 7, 9 and at
84 px with 10, 15, 20 digits (the model's own data config otherwise; ``--only-48``: 48 px only),
counted at q's mode refined as the model's ``grid_refine_passes`` says; ``--with-160`` adds the
many-objects report's 160 px canvases of 30-40 digits (``many_objects.largest_canvas_row``). Writes
``benchmarks/results/grid_counts.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

from airscene.checkpoint import load_model
from airscene.experiments.many_objects import largest_canvas_row
from airscene.experiments.runs import count_row
from airscene.provenance import git_revision, hardware
from airscene.registry import scene_family

HERE = Path(__file__).resolve().parent
CELLS = ((48, 1), (48, 3), (48, 5), (48, 7), (48, 9), (84, 10), (84, 15), (84, 20))


def counts_of(model_name: str, scenes: int, cells=CELLS, with_160: bool = False) -> dict[str, dict]:
    model, checkpoint = load_model(model_name)
    rows = {}
    for side, n in cells:
        data = dataclasses.replace(
            checkpoint.config.data, canvas_size=side, counts=(n,), count_probs=None
        )
        held_out = scene_family(data.kind).load(data, "test", n=scenes)
        row = count_row(model, held_out)
        rows[f"{side}px n={n}"] = row
        print(
            f"{model_name} {side}px n={n}: count {100 * row['count_accuracy']:.1f}%, "
            f"MAE {row['mean_abs_error']:.3f}, AP@0.5 {row['average_precision']:.3f}",
            flush=True,
        )
    if with_160:  # the report's canvases of 30-40 digits, as the experiment counts them
        name, row = largest_canvas_row(model, scenes)
        rows[name] = row
        print(f"{model_name} {name}: count {100 * row['count_accuracy']:.1f}%", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="runs, checkpoints or shipped model names")
    parser.add_argument("--scenes", type=int, default=1_000, help="held-out scenes per cell")
    parser.add_argument("--only-48", action="store_true", help="the 48 px cells only")
    parser.add_argument("--with-160", action="store_true", help="and 160 px, 30-40 digits")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grid_counts.json")
    args = parser.parse_args()
    cells = tuple(cell for cell in CELLS if cell[0] == 48) if args.only_48 else CELLS
    result = {
        "date": datetime.date.today().isoformat(),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "scenes": args.scenes,
        "models": {
            name: counts_of(name, args.scenes, cells, args.with_160) for name in args.models
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
