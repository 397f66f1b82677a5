"""Strong generalisation (paper sec. 3.1): AIR against DAIR on digit counts never seen in training.

* extrapolation: train on {0, 1, 2} digits, test on 3-digit scenes;
* interpolation: train on {0, 1, 3} digits, test on 2-digit scenes.

At test time each model gets one more inference step than it was trained with (N + 1), so a
4th object can be found after training with N = 3; all steps share their weights, so this is a
change of config only. The paper's finding (as read by a published summary, approximate): AIR
about 0% on extrapolation and 60% on interpolation, DAIR about 80% and 95%.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from airscene.checkpoint import load_model
from airscene.config import DataConfig, RunConfig, TrainConfig
from airscene.data.scenes import load_scenes
from airscene.evaluate import evaluate
from airscene.experiments.report import accuracy_table_markdown
from airscene.model import build_model
from airscene.provenance import git_revision
from airscene.train import train

TASKS = {
    # name: (training counts, test counts)
    "extrapolation": ((0, 1, 2), (3,)),
    "interpolation": ((0, 1, 3), (2,)),
}
PAPER = {"extrapolation": {"AIR": 0.0, "DAIR": 0.8}, "interpolation": {"AIR": 0.6, "DAIR": 0.95}}


def run_config(train_counts: tuple[int, ...], dair: bool, steps: int, seed: int) -> RunConfig:
    """The default recipe on Multi-MNIST with ``train_counts`` digits (N = the largest count, at
    least 3 as in the paper)."""
    base = RunConfig()
    return RunConfig(
        data=DataConfig(counts=train_counts),
        model=dataclasses.replace(base.model, dair=dair, max_steps=max(3, max(train_counts))),
        train=TrainConfig(steps=steps, seed=seed, eval_every=0),
    )


def evaluate_with_extra_step(
    run_dir: Path, test_counts: tuple[int, ...], scenes: int
) -> dict[str, Any]:
    """Count accuracy of a trained run on scenes with ``test_counts`` digits, with N + 1 steps."""
    trained, checkpoint = load_model(run_dir)
    wider = build_model(
        dataclasses.replace(
            checkpoint.config.model, max_steps=checkpoint.config.model.max_steps + 1
        )
    )
    wider.load_state_dict(trained.state_dict())  # every step shares these weights
    test = load_scenes(
        DataConfig(counts=test_counts, seed=checkpoint.config.data.seed), "test", n=scenes
    )
    result = evaluate(wider.eval(), test)
    confusion = np.asarray(result.confusion)
    return {
        "run": str(run_dir),
        "test_counts": list(test_counts),
        "count_accuracy": result.count_accuracy,
        "accuracy_by_count": {
            str(k): {
                "images": int(confusion[k].sum()),
                "accuracy": float(confusion[k, k] / confusion[k].sum()),
            }
            for k in test_counts
        },
        "confusion": result.confusion,
    }


def run_generalisation(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    reuse: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) AIR and DAIR on each task's training counts, test them on the unseen
    count, and write report.md, results.json and a figure into ``out_dir``.

    ``reuse`` maps '<task>/<AIR|DAIR>' to an existing run directory trained on that task's counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = 2_000 if quick else 10_000
    scenes = 1_000 if quick else 10_000
    results: dict[str, dict[str, Any]] = {}
    for task, (train_counts, test_counts) in TASKS.items():
        for name, dair in (("AIR", False), ("DAIR", True)):
            key = f"{task}/{name}"
            run_dir = Path((reuse or {}).get(key) or out / "runs" / f"{task}-{name.lower()}")
            if key not in (reuse or {}):
                config = run_config(train_counts, dair, steps, seed)
                train(
                    config,
                    run_dir,
                    overwrite=True,
                    progress=progress,
                    command=["airscene", "experiment", "generalisation"],
                )
            results[key] = {
                "train_counts": list(train_counts),
                **evaluate_with_extra_step(run_dir, test_counts, scenes),
            }
    summary = {
        "experiment": "generalisation",
        "quick": quick,
        "seed": seed,
        "git_revision": git_revision(),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _figure(results, out / "generalisation.png")
    (out / "report.md").write_text(_report(results, quick))
    return summary


def _figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    width = 0.2
    for t, task in enumerate(TASKS):
        for m, name in enumerate(("AIR", "DAIR")):
            ours = results[f"{task}/{name}"]["count_accuracy"]
            x = t + (m - 0.5) * 2 * width
            axis.bar(
                x - width / 2,
                ours,
                width,
                color=("#4363d8", "#e6194b")[m],
                label=f"{name} (airscene)" if t == 0 else None,
            )
            axis.bar(x + width / 2, PAPER[task][name], width, color=("#4363d8", "#e6194b")[m], alpha=0.35,
                     label=f"{name} (paper, approx.)" if t == 0 else None)  # fmt: skip
    axis.set_xticks(range(len(TASKS)), [f"{t}\n(test {TASKS[t][1][0]} digits)" for t in TASKS])
    axis.set_ylabel("count accuracy")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _report(results: dict[str, dict[str, Any]], quick: bool) -> str:
    lines = ["# Strong generalisation: AIR vs DAIR", ""]
    if quick:
        lines += ["*Quick mode: 2,000 training steps and 1,000 test scenes per model.*", ""]
    lines += [
        "| task | train counts | test counts | AIR | DAIR | paper AIR | paper DAIR |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, (train_counts, test_counts) in TASKS.items():
        air, dair = results[f"{task}/AIR"], results[f"{task}/DAIR"]
        lines.append(
            f"| {task} | {set(train_counts)} | {set(test_counts)} | {100 * air['count_accuracy']:.1f}% | "
            f"{100 * dair['count_accuracy']:.1f}% | ~{100 * PAPER[task]['AIR']:.0f}% | ~{100 * PAPER[task]['DAIR']:.0f}% |"
        )
    lines += ["", "Accuracy by true count (test scenes):", ""]
    lines.append(
        accuracy_table_markdown(
            {
                key: {int(k): v for k, v in r["accuracy_by_count"].items()}
                for key, r in results.items()
            }
        )
    )
    lines += ["", "Count confusion (rows: true count, columns: inferred count):", ""]
    for key, r in results.items():
        lines.append(f"- {key}: {r['confusion']}")
    lines += ["", "![generalisation](generalisation.png)", ""]
    return "\n".join(lines)
