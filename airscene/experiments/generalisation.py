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
from airscene.model import build_model
from airscene.provenance import git_revision
from airscene.train import train

TASKS = {
    # name: (training counts, test counts)
    "extrapolation": ((0, 1, 2), (3,)),
    "interpolation": ((0, 1, 3), (2,)),
}
PAPER = {"extrapolation": {"AIR": 0.0, "DAIR": 0.8}, "interpolation": {"AIR": 0.6, "DAIR": 0.95}}


# Digits rescaled by 0.7-0.9 (20-25 px), the size public reproductions of the paper's
# Multi-MNIST use (Pyro: 28 px / (1.3 +- 0.1); Kosiorek's: 20 px). Three full-size 28 px digits
# fit a 50 px canvas only in a few crowded layouts; a model trained on those places its windows
# for them and splits digits of other layouts (benchmarks/interpolation_probe.py).
DIGIT_SCALE = (0.7, 0.9)


def run_config(train_counts: tuple[int, ...], dair: bool, steps: int, seed: int) -> RunConfig:
    """The default recipe on Multi-MNIST with ``train_counts`` digits of ``DIGIT_SCALE`` (N = the
    largest count, at least 3 as in the paper). DAIR's steps start afresh from the residual
    (``dair_memory`` off): no step can tell how many objects came before it, so a count never
    seen in training is met step by step as the counts that were."""
    base = RunConfig()
    return RunConfig(
        data=DataConfig(counts=train_counts, scale_range=DIGIT_SCALE),
        model=dataclasses.replace(
            base.model, dair=dair, dair_memory=not dair, max_steps=max(3, max(train_counts))
        ),
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
    # Test scenes are made as the training scenes were (layout, digit sizes), only with the
    # unseen count.
    test = load_scenes(
        dataclasses.replace(checkpoint.config.data, counts=test_counts, count_probs=None),
        "test",
        n=scenes,
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


def finished_run(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` already holds the end of a run with exactly ``config``: an
    experiment stopped part-way then continues with the runs it has not finished."""
    from airscene.checkpoint import CheckpointError, read_checkpoint

    try:
        checkpoint = read_checkpoint(run_dir)
    except (CheckpointError, OSError):
        return False
    return checkpoint.config == config and checkpoint.step == config.train.steps


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, minimum and maximum of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "seeds": len(array),
    }


def run_generalisation(
    out_dir: str | Path,
    quick: bool = False,
    seeds: tuple[int, ...] = (0,),
    reuse: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) AIR and DAIR on each task's training counts from each of ``seeds``,
    test them on the unseen count, and write report.md, results.json and a figure into
    ``out_dir``: per model the accuracy of every seed and their mean and spread.

    ``reuse`` maps '<task>/<AIR|DAIR>' (first seed) or '<task>/<AIR|DAIR>/<seed>' to an existing
    run directory trained on that task's counts. Runs already finished in ``out_dir/runs`` with
    the same config are reused, so a stopped experiment continues where it was.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = 2_000 if quick else 10_000
    scenes = 1_000 if quick else 10_000
    reuse = dict(reuse or {})
    results: dict[str, dict[str, Any]] = {}
    for task, (train_counts, test_counts) in TASKS.items():
        for name, dair in (("AIR", False), ("DAIR", True)):
            key = f"{task}/{name}"
            per_seed = {}
            for index, seed in enumerate(seeds):
                given = reuse.get(f"{key}/{seed}") or (reuse.get(key) if index == 0 else None)
                run_dir = Path(given or out / "runs" / f"{task}-{name.lower()}-seed{seed}")
                config = run_config(train_counts, dair, steps, seed)
                if given is None and not finished_run(run_dir, config):
                    train(
                        config,
                        run_dir,
                        overwrite=True,
                        progress=progress,
                        command=["airscene", "experiment", "generalisation"],
                    )
                per_seed[str(seed)] = evaluate_with_extra_step(run_dir, test_counts, scenes)
            results[key] = {
                "train_counts": list(train_counts),
                "test_counts": list(test_counts),
                "count_accuracy": spread([r["count_accuracy"] for r in per_seed.values()]),
                "by_seed": per_seed,
            }
    summary = {
        "experiment": "generalisation",
        "quick": quick,
        "seeds": list(seeds),
        "git_revision": git_revision(),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _figure(results, out / "generalisation.png")
    (out / "report.md").write_text(_report(results, quick, seeds))
    return summary


def _figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    width = 0.2
    for t, task in enumerate(TASKS):
        for m, name in enumerate(("AIR", "DAIR")):
            ours = results[f"{task}/{name}"]
            colour = ("#4363d8", "#e6194b")[m]
            x = t + (m - 0.5) * 2 * width
            axis.bar(x - width / 2, ours["count_accuracy"]["mean"], width, color=colour,
                     label=f"{name} (airscene, mean)" if t == 0 else None)  # fmt: skip
            each = [r["count_accuracy"] for r in ours["by_seed"].values()]
            axis.plot([x - width / 2] * len(each), each, "k.", markersize=4,
                      label="one seed" if t == 0 and m == 0 else None)  # fmt: skip
            axis.bar(x + width / 2, PAPER[task][name], width, color=colour, alpha=0.35,
                     label=f"{name} (paper, approx.)" if t == 0 else None)  # fmt: skip
    axis.set_xticks(range(len(TASKS)), [f"{t}\n(test {TASKS[t][1][0]} digits)" for t in TASKS])
    axis.set_ylabel("count accuracy")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cell(summary: dict[str, Any]) -> str:
    if summary["seeds"] == 1:
        return f"{100 * summary['mean']:.1f}%"
    return (
        f"{100 * summary['mean']:.1f}% ± {100 * summary['std']:.1f} "
        f"({100 * summary['min']:.1f}-{100 * summary['max']:.1f})"
    )


def _report(results: dict[str, dict[str, Any]], quick: bool, seeds: tuple[int, ...]) -> str:
    lines = ["# Strong generalisation: AIR vs DAIR", ""]
    if quick:
        lines += ["*Quick mode: 2,000 training steps and 1,000 test scenes per model.*", ""]
    lines += [
        f"Seeds {', '.join(map(str, seeds))}; each cell: the mean count accuracy over the seeds"
        + (", ± the standard deviation (the lowest-highest seed)." if len(seeds) > 1 else "."),
        "",
        "| task | train counts | test counts | AIR | DAIR | paper AIR | paper DAIR |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, (train_counts, test_counts) in TASKS.items():
        air, dair = results[f"{task}/AIR"], results[f"{task}/DAIR"]
        lines.append(
            f"| {task} | {set(train_counts)} | {set(test_counts)} | {_cell(air['count_accuracy'])} | "
            f"{_cell(dair['count_accuracy'])} | ~{100 * PAPER[task]['AIR']:.0f}% | ~{100 * PAPER[task]['DAIR']:.0f}% |"
        )
    lines += ["", "Each seed:", "", "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---|" + "---|" * len(seeds))
    for key, r in results.items():
        cells = [f"{100 * r['by_seed'][str(s)]['count_accuracy']:.1f}%" for s in seeds]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Count confusion (rows: true count, columns: inferred count):", ""]
    for key, r in results.items():
        for seed, one in r["by_seed"].items():
            lines.append(f"- {key}, seed {seed}: {one['confusion']}")
    lines += ["", "![generalisation](generalisation.png)", ""]
    return "\n".join(lines)
