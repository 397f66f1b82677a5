"""Many objects: SPAIR's comparison and the transfer to large canvases, as one report.

SPAIR (Crawford & Pineau, AAAI 2019) compared itself with AIR and DAIR on 48x48 canvases of n =
1, 3, 5, 7 or 9 MNIST digits of 14 px and reported sequential attention failing as n grows; it
then trained on few digits and tested on many, on larger canvases. Here:

  * **the comparison** (``--kind scattered-digits``: 48x48, 14 px digits that may touch and
    overlap a little, trained on 1-9 digits): sequential AIR and DAIR with the family's preset,
    and the spatially parallel grid (``--inference grid``); per n, count accuracy, AP at IoU 0.5
    and the mean absolute count error on held-out scenes of exactly n MNIST test digits, and
    the time of a training step on minibatches of n-digit scenes;
  * **the transfer**: the grid model, trained at 48x48, reads 84x84 canvases of 10, 15 and 20
    digits and 160x160 canvases of 30-40 digits whole (no retraining, no shrinking);
  * inference speed of the grid model at 48, 84 and 256 px.

Writes report.md, results.json, count.png (count accuracy and AP against n), step_time.png
(step time against n) and boxes.png (inferred boxes on crowded 84x84 scenes) into the output
directory.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from airscene.config import RunConfig, to_dict
from airscene.data.scattered import SCATTERED_DIGITS
from airscene.data.training import images_to_tensor
from airscene.experiments.runs import count_row, summary_header, trained_or_reused
from airscene.grid import GridAIR
from airscene.train import Trainer

COUNTS = (1, 3, 5, 7, 9)
TRANSFER = ((84, (10, 15, 20)), (160, tuple(range(30, 41))))
SPEED_SIDES = (48, 84, 256)
SCHEMES = ("grid", "AIR", "DAIR")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much the experiment trains and measures (``quick``: under 10 minutes)."""

    grid_steps: int = 8_000
    sequential_steps: int = 3_000
    scenes: int = 1_000  # held-out scenes per n
    transfer_scenes: int = 1_000  # per count at 84 px; per canvas at 160 px
    timed_steps: int = 10
    eval_scenes: int = 1_000  # held-out scenes of each evaluation during training


QUICK = Sizes(
    grid_steps=1_500,
    sequential_steps=600,
    scenes=200,
    transfer_scenes=100,
    timed_steps=3,
    eval_scenes=200,
)


def scheme_config(scheme: str, steps: int, seed: int, eval_scenes: int = 1_000) -> RunConfig:
    """The scattered-digits run of ``scheme``: the family's preset (AIR; DAIR with ``--dair``)
    or the grid's recipe over it, ``steps`` long, evaluated four times on ``eval_scenes``."""
    preset = SCATTERED_DIGITS.preset()
    if scheme == "grid":
        preset = GridAIR.recipe(preset)
    elif scheme == "DAIR":
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, dair=True))
    train_config = dataclasses.replace(
        preset.train.over_steps(steps),
        seed=seed,
        eval_every=max(steps // 4, 1),
        eval_scenes=eval_scenes,
    )
    return dataclasses.replace(preset, train=train_config)


def step_seconds(config: RunConfig, model: Any, images: torch.Tensor, steps: int) -> float:
    """Median seconds of a training step of ``config``'s recipe from ``model``'s weights on
    minibatches of ``images`` (after two warm-up steps)."""
    trainer = Trainer(config, torch.device("cpu"))
    trainer.model.load_state_dict(model.state_dict())
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        trainer.train_step(images, None)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def images_per_second(model: Any, side: int, images: int = 64, batch: int = 16) -> float:
    """Inference throughput (q's mode, refined as the model's config says) on ``side`` px
    images of random ink."""
    x = torch.rand(images, side, side, generator=torch.Generator().manual_seed(0)) ** 8
    model(x[:batch], sample=False)  # warm-up
    started = time.perf_counter()
    for start in range(0, images, batch):
        model(x[start : start + batch], sample=False)
    return images / (time.perf_counter() - started)


def measure_scheme(
    scheme: str, model: Any, config: RunConfig, sizes: Sizes, progress: bool
) -> dict[str, Any]:
    """Per n of ``COUNTS``: the count row and the step time."""
    rows = {}
    for n in COUNTS:
        data = dataclasses.replace(config.data, counts=(n,))
        row = count_row(model, SCATTERED_DIGITS.load(data, "test", n=sizes.scenes))
        images = torch.from_numpy(SCATTERED_DIGITS.load(data, "train", n=256).images)
        row["step_seconds"] = step_seconds(config, model, images, sizes.timed_steps)
        rows[n] = row
        if progress:
            print(
                f"  {scheme} n={n}: count {100 * row['count_accuracy']:.1f}%, AP@0.5 "
                f"{row['average_precision']:.3f}, step {1000 * row['step_seconds']:.0f} ms",
                flush=True,
            )
    return rows


def transfer_scenes(side: int, counts: tuple[int, ...], n: int) -> Any:
    """Held-out scattered-digit scenes of ``side`` px with ``counts`` digits (14 px, as trained)."""
    data = dataclasses.replace(SCATTERED_DIGITS.preset().data, canvas_size=side, counts=counts)
    return SCATTERED_DIGITS.load(data, "test", n=n)


def measure_transfer(model: Any, sizes: Sizes, progress: bool) -> dict[str, Any]:
    """The grid model on larger canvases: per count at 84 px, all of 30-40 at 160 px."""
    table: dict[str, Any] = {}
    side, counts = TRANSFER[0]
    for n in counts:
        row = count_row(model, transfer_scenes(side, (n,), sizes.transfer_scenes))
        table[f"{side}px n={n}"] = row
        if progress:
            print(
                f"  transfer {side}px n={n}: count {100 * row['count_accuracy']:.1f}%", flush=True
            )
    name, row = largest_canvas_row(model, sizes.transfer_scenes)
    table[name] = row
    if progress:
        print(f"  transfer {name.split()[0]}: count {100 * row['count_accuracy']:.1f}%", flush=True)
    return table


def largest_canvas_row(model: Any, scenes: int) -> tuple[str, dict[str, Any]]:
    """The grid model on ``scenes`` canvases of ``TRANSFER``'s largest size, each of a count
    drawn from its range: the row's name in the report's table and its count row."""
    side, counts = TRANSFER[1]
    return f"{side}px n={counts[0]}-{counts[-1]}", count_row(
        model, transfer_scenes(side, counts, scenes)
    )


def run_many_objects(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    reuse: dict[str, str | Path] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each scheme (or take the run, checkpoint or shipped model ``reuse`` names for it,
    by scheme: grid, AIR, DAIR), measure it, write the report."""

    sizes = QUICK if quick else Sizes()
    out = Path(out_dir)
    summary = summary_header("many-objects", quick, seed, sizes) | {"schemes": {}}
    models = {}
    for scheme in SCHEMES:
        steps = sizes.grid_steps if scheme == "grid" else sizes.sequential_steps
        run_dir = out / "runs" / f"{scheme.lower()}-seed{seed}"
        trained = trained_or_reused(scheme_config(scheme, steps, seed, sizes.eval_scenes), run_dir,
                                    (reuse or {}).get(scheme), "many-objects", progress)  # fmt: skip
        model, config, run, train_seconds = (
            trained.model,
            trained.config,
            trained.run,
            trained.train_seconds,
        )
        models[scheme] = model
        if progress:
            print(f"{scheme}: measuring ({run})", flush=True)
        summary["schemes"][scheme] = {
            "run": str(run),
            "train_seconds": train_seconds,
            "config": to_dict(config),
            "by_count": measure_scheme(scheme, model, config, sizes, progress),
        }
    grid = models["grid"]
    summary["transfer"] = measure_transfer(grid, sizes, progress)
    summary["images_per_second"] = {side: images_per_second(grid, side) for side in SPEED_SIDES}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_against_n(summary, out / "count.png", out / "step_time.png")
    crowded = transfer_scenes(TRANSFER[0][0], (20,), 8)
    from airscene.visualise import show_inference

    show_inference(grid, images_to_tensor(crowded.images), out / "boxes.png", crowded.counts)
    (out / "report.md").write_text(report(summary))
    return summary


def plot_against_n(summary: dict[str, Any], count_path: Path, time_path: Path) -> None:
    """Count accuracy and AP@0.5 against n, and step time against n, one line per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, precision) = plt.subplots(1, 2, figsize=(10, 3.8))
    timing, axis = plt.subplots(figsize=(5, 3.8))
    for scheme, result in summary["schemes"].items():
        rows = result["by_count"]
        n = [int(k) for k in rows]
        accuracy.plot(n, [rows[k]["count_accuracy"] for k in rows], "o-", label=scheme)
        precision.plot(n, [rows[k]["average_precision"] for k in rows], "o-", label=scheme)
        axis.plot(n, [1000 * rows[k]["step_seconds"] for k in rows], "o-", label=scheme)
    for ax, label in ((accuracy, "count accuracy"), (precision, "AP at IoU 0.5")):
        ax.set_xlabel("digits in the scene (n)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    axis.set_xlabel("digits in the scene (n)")
    axis.set_ylabel("training step (ms)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    for fig, path in ((figure, count_path), (timing, time_path)):
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _machine(record: dict[str, Any]) -> str:
    return (
        f"{record.get('processor') or record.get('machine')}, {record.get('cpu_count')} CPU "
        f"cores, torch {record.get('torch')}"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report(summary: dict[str, Any]) -> str:
    """The report in Markdown: the comparison, the transfer and the speeds."""
    schemes = summary["schemes"]
    lines = [
        "# Many objects: sequential AIR and DAIR against the spatially parallel grid",
        "",
        f"`airscene experiment many-objects{' --quick' if summary['quick'] else ''}` at "
        f"{summary['git_revision']} on {_machine(summary['hardware'])}; seed {summary['seed']}. "
        "Held-out scenes of MNIST test digits; the step time is the median of "
        f"{summary['sizes']['timed_steps']} training steps on minibatches of n-digit scenes, "
        "each scheme with its own recipe. Models: "
        + ", ".join(f"{name} `{result['run']}`" for name, result in schemes.items())
        + ".",
        "",
        "## SPAIR's comparison: 48x48, 14 px digits, trained on 1-9 digits",
        "",
        "Count accuracy / AP at IoU 0.5 / training step, per digit count n:",
        "",
        "| scheme | trained | " + " | ".join(f"n = {n}" for n in COUNTS) + " |",
        "|---|---|" + "---|" * len(COUNTS),
    ]
    for scheme, result in schemes.items():
        rows = result["by_count"]
        steps = result["config"]["train"]["steps"]
        seconds = result["train_seconds"]
        trained = f"{steps} steps" + (f", {seconds / 60:.0f} min" if seconds else "")
        cells = [
            f"{_percent(rows[n]['count_accuracy'])} / {rows[n]['average_precision']:.3f} / "
            f"{1000 * rows[n]['step_seconds']:.0f} ms"
            for n in (str(n) if str(n) in rows else n for n in COUNTS)
        ]
        lines.append(f"| {scheme} | {trained} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![count accuracy and AP against n](count.png) ![step time against n](step_time.png)",
        "",
        "## Transfer: the grid model on larger canvases, read whole",
        "",
        "| canvas, digits | count accuracy | mean abs. count error | AP@0.5 | scenes |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["transfer"].items():
        lines.append(
            f"| {name} | {_percent(row['count_accuracy'])} | {row['mean_abs_error']:.3f} | "
            f"{row['average_precision']:.3f} | {row['scenes']} |"
        )
    speeds = ", ".join(
        f"{side} px: {rate:.0f} images/s" for side, rate in summary["images_per_second"].items()
    )
    passes = summary["schemes"]["grid"]["config"]["model"].get("grid_refine_passes", 0)
    mode = f"q's mode refined by {passes} passes of `GridAIR.refine`" if passes else "q's mode"
    lines += [
        "",
        f"The grid model counts at {mode}. Grid inference (batches of 16): {speeds}.",
        "",
        "![inferred boxes on 84x84 scenes of 20 digits](boxes.png)",
        "",
    ]
    return "\n".join(lines)
