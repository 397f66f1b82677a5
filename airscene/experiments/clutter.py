"""Clutter: AIR with and without a learned background on scenes that are not black.

SuPAIR (Stelzner et al., ICML 2019) measured AIR's count accuracy at about 0 on two variants of
the paper's Multi-MNIST, one with Gaussian noise (sd 0.2) and one over grid lines (intensity
0.4), where its own model reached about 0.93 and 0.96 (read from its figure). Here, on the same
two variants made by ``airscene data make --kind noisy-mnist | grid-mnist``, and on coloured
sprites over colour backgrounds (``--kind sprites``, in the spirit of Multi-dSprites), the
family's recipe is trained as three models (``ARMS``): AIR with p(x | z) as the paper has it
(objects on a black canvas), AIR with the family's background under the objects (grey:
``--background learned``; sprites: ``--background smooth``; ``airscene.background``), and DAIR
with it (the families' preset); on the sprites a fourth, the grid over masked objects with the
same background (``--inference grid``, ``airscene.masked_grid``); each is measured on held-out
scenes: count accuracy, mean absolute count error, box IoU, and on sprites the foreground ARI of
the inferred masks, beside the slot models' published ARI on Multi-dSprites.

Writes report.md, results.json and, per kind, a figure of the last model's inferred boxes and
reconstructions (``KIND.png``) into the output directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from airscene.config import ConfigError, RunConfig, to_dict
from airscene.data.training import images_to_tensor
from airscene.experiments.runs import count_row, summary_header, trained_or_reused
from airscene.registry import scene_family

KINDS = ("noisy-mnist", "grid-mnist", "sprites")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One model compared: the family's background under the objects or none, DAIR, and the
    inference scheme (``grid``: the scheme's own recipe for the family's objects)."""

    background: bool
    dair: bool
    inference: str = "sequential"


# The models compared. DAIR+background is the sequential families' preset; grid+background
# is the grid over masked objects (``MaskedGridAIR``), so on the sprites only: grey ink summed
# on the grid has no background to cover (the config refuses it).
ARMS = {
    "AIR": Arm(background=False, dair=False),
    "AIR+background": Arm(background=True, dair=False),
    "DAIR+background": Arm(background=True, dair=True),
    "grid+background": Arm(background=True, dair=False, inference="grid"),
}
# What each kind is compared with: SuPAIR's count accuracies on its variants, read from its
# figure (images/count-accs.png); on sprites, the foreground ARI the slot models report on
# Multi-dSprites (MONet, IODINE as the Slot Attention paper's table gives them; Slot Attention).
CITED = {
    "noisy-mnist": "count ~0.93 (SuPAIR), ~0 (its AIR)",
    "grid-mnist": "count ~0.96 (SuPAIR), ~0 (its AIR)",
    "sprites": "fg ARI 0.90 (MONet), 0.77 (IODINE), 0.91 (Slot Attention), on Multi-dSprites",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much the experiment trains and measures (``quick``: under 10 minutes)."""

    steps: int = 3_000
    scenes: int = 1_000  # held-out scenes per kind
    kinds: tuple[str, ...] = KINDS
    arms: tuple[str, ...] = tuple(ARMS)


QUICK = Sizes(steps=400, scenes=300, arms=("AIR", "DAIR+background"))


def clutter_config(kind: str, arm: str, steps: int, seed: int) -> RunConfig:
    """The run of ``arm`` (``ARMS``) on scenes of ``kind``: the family's preset with the arm's
    background (the preset's, or none) and DAIR (for the grid, then the grid's recipe of it),
    ``steps`` long. Raises ``ConfigError`` where the kind's objects cannot take the arm."""
    from airscene.registry import inference_scheme

    preset = scene_family(kind).preset()
    chosen = ARMS[arm]
    background = preset.model.background if chosen.background else "none"
    model = dataclasses.replace(preset.model, background=background, dair=chosen.dair)
    preset = dataclasses.replace(preset, model=model)
    if chosen.inference != "sequential":
        preset = inference_scheme(chosen.inference, model.objects.kind).recipe(preset)
    train_config = dataclasses.replace(
        preset.train, steps=steps, seed=seed, eval_every=max(steps // 3, 1), eval_scenes=1_000
    )
    return dataclasses.replace(preset, train=train_config)


def arms_of(kind: str, arms: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``arms`` that scenes of ``kind`` can take: another scheme's arm is left out
    where the config refuses it (the grid with a background: masked objects only); a
    sequential arm that fails is an error."""

    def takes(arm: str) -> bool:
        try:
            clutter_config(kind, arm, 1, 0)
        except ConfigError:
            if ARMS[arm].inference == "sequential":
                raise
            return False
        return True

    return tuple(arm for arm in arms if takes(arm))


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
    summary = summary_header("clutter", quick, seed, sizes) | {
        "results": {},
        "figures": {},
        "skipped": {},
    }
    for kind in sizes.kinds:
        family = scene_family(kind)
        arms = arms_of(kind, sizes.arms)
        summary["skipped"] |= {f"{kind}/{arm}": "refused" for arm in sizes.arms if arm not in arms}
        for arm in arms:
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
                ari = row.get("foreground_ari")
                print(
                    f"  {key}: count {100 * row['count_accuracy']:.1f}%, mean abs. error "
                    f"{row['mean_abs_error']:.3f}, IoU {row['mean_iou']:.3f}"
                    + ("" if ari is None else f", foreground ARI {ari:.3f}"),
                    flush=True,
                )
            if arm == arms[-1]:
                summary["figures"][kind] = arm
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
        f"{summary['sizes']['steps']:,} training steps of each family's recipe per model "
        "(a reused run: its own steps and seed, in the table), "
        f"{summary['sizes']['scenes']:,} held-out scenes per kind (0-2 MNIST test digits; "
        "sprites: 0-4 shapes). "
        "Models (trained here, or the runs given with --reuse): "
        + ", ".join(f"{key} `{row['run']}`" for key, row in summary["results"].items())
        + ".",
        "",
        "| scenes | model | count accuracy | mean abs. count error | box IoU | foreground ARI "
        "| trained | published figures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in summary["results"].items():
        kind, arm = key.split("/")
        seconds, train = row["train_seconds"], row["config"]["train"]
        trained = f"{train['steps']:,} steps, seed {train['seed']}" + (
            f", {seconds / 60:.1f} min" if seconds else ""
        )
        ari = row.get("foreground_ari")
        lines.append(
            f"| {kind} | {arm} | {_percent(row['count_accuracy'])} | "
            f"{row['mean_abs_error']:.3f} | {row['mean_iou']:.3f} | "
            f"{'-' if ari is None else f'{ari:.3f}'} | {trained} | {CITED.get(kind, '-')} |"
        )
    lines += [
        "",
        "SuPAIR's figures are count accuracies read from its figure `images/count-accs.png` "
        "(Stelzner et al. 2019, `stelzner/supair`), on its own 50x50 scenes of 0-2 digits; "
        "the slot models' are foreground ARIs on DeepMind's Multi-dSprites (Locatello et al. "
        "2020, table 1), a data set like, not the same as, the sprites here. "
        "One model over clean, noisy and grid-line scenes at once (the shipped "
        "`cluttered-digits`), its seeds, and what each design tried measured: `findings.md`.",
        "",
    ]
    if summary.get("skipped"):
        lines += [
            "Not trained, as the config refuses them (the grid draws a background under masked "
            "objects only): " + ", ".join(summary["skipped"]) + ".",
            "",
        ]
    for kind, arm in summary["figures"].items():
        lines += [
            f"![{kind}: {arm}'s inferred boxes and reconstructions]({kind}.png)",
            "",
        ]
    return "\n".join(lines)
