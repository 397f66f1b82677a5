"""Pieces of the paper's experiments: downstream labels, object ordering, per-count tables."""

import numpy as np
import pytest
import torch

from airscene.data.scenes import Scenes
from airscene.experiments.downstream import ascending_labels, ordered_object_latents, sum_labels
from airscene.experiments.report import accuracy_by_count, accuracy_table_markdown


def scenes_with(objects: list[list[tuple[int, int]]]) -> Scenes:
    """Scenes from lists of (digit label, ink-box left edge); boxes are 10 px wide."""
    n, k = len(objects), max(len(o) for o in objects)
    labels = np.full((n, k), -1, dtype=np.int8)
    boxes = np.full((n, k, 4), -1, dtype=np.int16)
    for i, scene in enumerate(objects):
        for j, (label, x0) in enumerate(scene):
            labels[i, j] = label
            boxes[i, j] = (x0, 5, x0 + 10, 25)
    counts = np.array([len(o) for o in objects], dtype=np.int64)
    return Scenes(
        images=np.zeros((n, 50, 50), dtype=np.uint8), counts=counts, boxes=boxes, labels=labels,
        digit_index=np.zeros((n, k), dtype=np.int32),
    )  # fmt: skip


def test_sum_and_ascending_labels_on_known_scenes():
    scenes = scenes_with([
        [(3, 5), (7, 30)],   # 3 left of 7: ascending
        [(3, 30), (7, 5)],   # 7 left of 3 (stored in the other order): not ascending
        [(4, 2), (4, 20)],   # equal digits count as ascending
        [(9, 10)],           # one digit: trivially ascending
        [],                  # empty scene
    ])  # fmt: skip
    assert sum_labels(scenes).tolist() == [10, 10, 8, 9, 0]
    assert ascending_labels(scenes).tolist() == [1, 0, 1, 1, 1]


def test_ordered_object_latents_are_sorted_left_to_right_with_absent_last():
    z_pres = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    z_where = torch.tensor(
        [
            [[0.4, 0.5, 0.0], [0.4, -0.5, 0.1], [0.4, -0.9, 0.0]],
            [[0.4, 0.2, 0.0], [0.4, -0.9, 0.0], [0.4, -0.8, 0.0]],
        ]
    )
    z_what = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    features = ordered_object_latents(z_pres, z_where, z_what)
    assert features.shape == (2, 3, 6)
    # scene 0: the object at x = -0.5 (step 1) comes before the one at x = 0.5 (step 0)
    torch.testing.assert_close(features[0, 0], torch.tensor([1.0, 0.4, -0.5, 0.1, 2.0, 3.0]))
    torch.testing.assert_close(features[0, 1], torch.tensor([1.0, 0.4, 0.5, 0.0, 0.0, 1.0]))
    assert torch.all(features[0, 2] == 0) and torch.all(features[1, 1:] == 0)  # absent: zeros, last
    # the same objects found in another order give the same features
    swapped = ordered_object_latents(
        z_pres[:1, [1, 0, 2]], z_where[:1, [1, 0, 2]], z_what[:1, [1, 0, 2]]
    )
    torch.testing.assert_close(swapped, features[:1])


def test_accuracy_by_count_table_on_a_synthetic_prediction_set():
    true = np.array([0, 0, 1, 1, 1, 1, 2, 2, 3, 3])
    inferred = np.array([0, 1, 1, 1, 1, 0, 2, 2, 2, 2])
    table = accuracy_by_count(true, inferred)
    assert table == {
        0: {"images": 2, "accuracy": 0.5},
        1: {"images": 4, "accuracy": 0.75},
        2: {"images": 2, "accuracy": 1.0},
        3: {"images": 2, "accuracy": 0.0},
    }
    markdown = accuracy_table_markdown({"AIR": table, "DAIR": {3: {"images": 2, "accuracy": 1.0}}})
    assert markdown.splitlines() == [
        "| model | 0 digits | 1 digit | 2 digits | 3 digits |",
        "|---|---|---|---|---|",
        "| AIR | 50.0% | 75.0% | 100.0% | 0.0% |",
        "| DAIR | - | - | - | 100.0% |",
    ]


def test_generalisation_experiment_wiring(tmp_path, capsys):
    # Tiny runs stand in for trained models: this checks the plumbing (N + 1 steps at test time,
    # unseen counts, report, figure, JSON), not the accuracies.
    import json

    from tiny import TINY_MODEL

    from airscene.cli import main
    from airscene.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from airscene.experiments.generalisation import TASKS
    from airscene.train import train

    reuse = []
    for task, (train_counts, _) in TASKS.items():
        for name, dair in (("AIR", False), ("DAIR", True)):
            config = RunConfig(
                data=DataConfig(counts=train_counts, n_train=50, n_test=20),
                model=ModelConfig(dair=dair, max_steps=3, **TINY_MODEL),
                train=TrainConfig(steps=2, batch_size=4, eval_every=0),
            )
            run = train(config, tmp_path / f"{task}-{name}", progress=False).run_dir
            reuse += ["--reuse", f"{task}/{name}={run}"]
    out = tmp_path / "report"
    assert main(["experiment", "generalisation", "--quick", "--out", str(out), *reuse]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {
        "extrapolation/AIR",
        "extrapolation/DAIR",
        "interpolation/AIR",
        "interpolation/DAIR",
    }
    extrapolation = summary["results"]["extrapolation/AIR"]
    assert (
        extrapolation["test_counts"] == [3] and len(extrapolation["confusion"]) == 5
    )  # counts 0..4: N + 1 = 4
    assert sum(map(sum, extrapolation["confusion"])) == 1000
    report = (out / "report.md").read_text()
    assert "| extrapolation | {0, 1, 2} | {3} |" in report and "paper" in report
    assert (out / "generalisation.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["experiment", "generalisation", "--reuse", "nonsense=x"]) == 2


@pytest.mark.slow
def test_generalisation_quick_mode_under_ten_minutes(tmp_path):
    import time

    from airscene.experiments.generalisation import run_generalisation

    started = time.perf_counter()
    summary = run_generalisation(tmp_path, quick=True, progress=False)
    assert time.perf_counter() - started < 600
    assert all(0.0 <= r["count_accuracy"] <= 1.0 for r in summary["results"].values())
    assert (tmp_path / "report.md").is_file() and (tmp_path / "generalisation.png").is_file()
