"""Clutter: AIR with and without a learned background on scenes that are not black.

SuPAIR (Stelzner et al., ICML 2019) measured AIR's count accuracy at about 0 on two variants of
the paper's Multi-MNIST, one with Gaussian noise (sd 0.2) and one over grid lines (intensity
0.4), where its own model reached about 0.93 and 0.96 (read from its figure). Here, on the same
two variants made by ``airscene data make --kind noisy-mnist | grid-mnist``, the paper's
recipe is trained as three models (``ARMS``): AIR with p(x |
z) as the paper has it (objects on a black canvas), AIR with a learned background under the
objects (``--background learned``, ``airscene.background``), and DAIR with it (the families'
preset); each is measured on held-out scenes of MNIST test digits: count accuracy, mean
absolute count error, box IoU.

Writes report.md, results.json and, per kind, a figure of the last model's inferred boxes and
reconstructions (``KIND.png``) into the output directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from airscene.config import RunConfig, to_dict
from airscene.data.training import images_to_tensor
from airscene.experiments.runs import count_row, summary_header, trained_or_reused
from airscene.registry import scene_family

KINDS = ("noisy-mnist", "grid-mnist")
# The models compared: name -> (background, DAIR). The last is the families' preset.
ARMS = {
    "AIR": ("none", False),
    "AIR+background": ("learned", False),
    "DAIR+background": ("learned", True),
}
# SuPAIR's count accuracies on its variants, read from its figure (images/count-accs.png).
SUPAIR = {"noisy-mnist": {"SuPAIR": 0.93, "AIR": 0.0}, "grid-mnist": {"SuPAIR": 0.96, "AIR": 0.0}}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much the experiment trains and measures (``quick``: under 10 minutes)."""

    steps: int = 3_000
    scenes: int = 1_000  # held-out scenes per kind
    kinds: tuple[str, ...] = KINDS
    arms: tuple[str, ...] = tuple(ARMS)


QUICK = Sizes(steps=700, scenes=300, arms=("AIR", "DAIR+background"))


def clutter_config(kind: str, arm: str, steps: int, seed: int) -> RunConfig:
    """The run of ``arm`` (``ARMS``) on scenes of ``kind``: the family's preset with the arm's
    background and DAIR, ``steps`` long."""
    preset = scene_family(kind).preset()
    background, dair = ARMS[arm]
    model = dataclasses.replace(preset.model, background=background, dair=dair)
    train_config = dataclasses.replace(
        preset.train, steps=steps, seed=seed, eval_every=max(steps // 3, 1), eval_scenes=1_000
    )
    return dataclasses.replace(preset, model=model, train=train_config)


def run_clutter(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    reuse: dict[str, str | Path] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each arm on each kind of scene (or take the run ``reuse`` names for
    ``KIND/ARM``), measure it, write the report."""
    from airscene.visualise import show_inference

    sizes = QUICK if quick else Sizes()
    out = Path(out_dir)
    summary = summary_header("clutter", quick, seed, sizes) | {"results": {}}
    for kind in sizes.kinds:
        family = scene_family(kind)
        for arm in sizes.arms:
            key = f"{kind}/{arm}"
            run_dir = out / "runs" / f"{kind}-{arm.lower()}-seed{seed}"
            config = clutter_config(kind, arm, sizes.steps, seed)
            trained = trained_or_reused(
                config, run_dir, (reuse or {}).get(key), "clutter", progress
            )
            model = trained.model
            scenes = family.load(trained.config.data, "test", n=sizes.scenes)
            row = count_row(model, scenes)
            summary["results"][key] = {
                "run": trained.run,
                "train_seconds": trained.train_seconds,
                "config": to_dict(trained.config),
                **row,
            }
            if progress:
                print(
                    f"  {key}: count {100 * row['count_accuracy']:.1f}%, mean abs. error "
                    f"{row['mean_abs_error']:.3f}, IoU {row['mean_iou']:.3f}",
                    flush=True,
                )
            if arm == sizes.arms[-1]:
                out.mkdir(parents=True, exist_ok=True)
                shown = scenes[np.arange(8)]
                show_inference(
                    model, images_to_tensor(shown.images), out / f"{kind}.png", shown.counts
                )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(report(summary))
    return summary


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report(summary: dict[str, Any]) -> str:
    """The report in Markdown: one row per kind and background, SuPAIR's figures beside."""
    record = summary["hardware"]
    machine = (
        f"{record.get('processor') or record.get('machine')}, {record.get('cpu_count')} CPU "
        f"cores, torch {record.get('torch')}"
    )
    lines = [
        "# Clutter: AIR with and without a learned background",
        "",
        f"`airscene experiment clutter{' --quick' if summary['quick'] else ''}` at "
        f"{summary['git_revision']} on {machine}; seed {summary['seed']}, "
        f"{summary['sizes']['steps']:,} training steps of the paper's recipe per model, "
        f"{summary['sizes']['scenes']:,} held-out scenes (0-2 MNIST test digits) per kind. "
        "Models (trained here, or the runs given with --reuse): "
        + ", ".join(f"{key} `{row['run']}`" for key, row in summary["results"].items())
        + ".",
        "",
        "| scenes | model | count accuracy | mean abs. count error | box IoU | trained | "
        "SuPAIR's figure (SuPAIR / its AIR) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in summary["results"].items():
        kind, arm = key.split("/")
        seconds = row["train_seconds"]
        trained = f"{seconds / 60:.1f} min" if seconds else "-"
        theirs = SUPAIR.get(kind)
        cited = f"~{theirs['SuPAIR']:.2f} / ~{theirs['AIR']:.0f}" if theirs else "-"
        lines.append(
            f"| {kind} | {arm} | {_percent(row['count_accuracy'])} | "
            f"{row['mean_abs_error']:.3f} | {row['mean_iou']:.3f} | {trained} | {cited} |"
        )
    lines += [
        "",
        "SuPAIR's figures are count accuracies read from its figure `images/count-accs.png` "
        "(Stelzner et al. 2019, `stelzner/supair`), on its own 50x50 scenes of 0-2 digits. "
        "One model over clean, noisy and grid-line scenes at once (the shipped "
        "`cluttered-digits`), its seeds, and what each design tried measured: `findings.md`.",
        "",
    ]
    for kind in summary["sizes"]["kinds"]:
        lines += [
            f"![{kind}: {summary['sizes']['arms'][-1]}'s inferred boxes and reconstructions]"
            f"({kind}.png)",
            "",
        ]
    return "\n".join(lines)
