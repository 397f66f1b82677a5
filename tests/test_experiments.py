"""Pieces of the paper's experiments: downstream labels, object ordering, per-count tables."""

import numpy as np
import pytest
import torch

from airscene.data.scenes import Scenes
from airscene.experiments.downstream import ascending_labels, ordered_object_latents, sum_labels


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


def test_ascending_reads_digits_by_the_centres_of_their_ink():
    # Two stacked digits: the 2's ink starts left of the 5's but is centred right of it.
    scenes = scenes_with([[(5, 20), (2, 14)]])
    scenes.boxes[0] = [(20, 2, 26, 22), (14, 28, 40, 48)]  # the 5 narrow, the 2 wide
    assert ascending_labels(scenes).tolist() == [0]  # 5 (centre 23) then 2 (centre 27)
    scenes.boxes[0, 1] = (14, 28, 30, 48)  # the 2 narrower: centre 22, left of the 5
    assert ascending_labels(scenes).tolist() == [1]


def test_air_glimpses_are_the_windows_read_from_the_image_in_object_order(tmp_path):
    from airscene.checkpoint import load_model
    from airscene.data.training import images_to_tensor
    from airscene.experiments.downstream import air_latents
    from airscene.spatial import read_glimpse

    model, _ = load_model(tiny_air_run(tmp_path))
    images = (np.random.default_rng(0).random((5, 50, 50)) * 255).astype(np.uint8)
    size, steps = model.objects.config.glimpse_size, model.config.max_steps
    latents = air_latents(model, images).view(5, steps, -1)
    glimpses = air_latents(model, images, glimpses=True).view(5, steps, -1)
    assert glimpses.shape[-1] == 4 + size * size
    torch.testing.assert_close(glimpses[..., :4], latents[..., :4])  # same objects, same order
    assert (glimpses[..., 0] > 0).sum() >= 2  # objects to read (and the rest must be zeros)
    x = images_to_tensor(images)
    for b in range(5):
        for i in range(steps):
            if glimpses[b, i, 0] > 0:
                read = read_glimpse(x[b : b + 1], glimpses[b, i, 1:4][None], size)
                torch.testing.assert_close(glimpses[b, i, 4:], read.flatten())
            else:
                assert not glimpses[b, i].any()


def test_air_latents_explained_away_change_only_the_z_what_of_objects_with_company(tmp_path):
    from airscene.checkpoint import load_model
    from airscene.experiments.downstream import air_latents

    model, _ = load_model(tiny_air_run(tmp_path))  # plain AIR: the loop reads every object in x
    with torch.no_grad():  # z_pres about 1/2: scenes with one object and with several
        model.predictor.net[-1].bias[0] = 0.0
    images = (np.random.default_rng(0).random((8, 50, 50)) * 255).astype(np.uint8)
    steps = model.config.max_steps
    plain = air_latents(model, images).view(8, steps, -1)
    again = air_latents(model, images, explain_away=1).view(8, steps, -1)
    torch.testing.assert_close(again[..., :4], plain[..., :4])  # same objects, same windows
    count = plain[..., 0].sum(1)
    alone, company = count == 1, count >= 2
    assert alone.any() and company.any()
    # An object alone in its scene has nothing to explain away: read as the loop read it.
    torch.testing.assert_close(again[alone], plain[alone], atol=1e-5, rtol=0)
    assert (again[company][..., 4:] - plain[company][..., 4:]).abs().max() > 1e-3


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


def test_generalisation_experiment_wiring(tmp_path, capsys):
    # Tiny runs stand in for trained models: this checks the plumbing (N + 1 steps at test time,
    # unseen counts, report, figure, JSON), not the accuracies.
    import json

    from tiny import TINY_MODEL, model_config

    from airscene.cli import main
    from airscene.config import DataConfig, RunConfig, TrainConfig
    from airscene.experiments.generalisation import TASKS
    from airscene.train import train

    reuse = []
    for task, (train_counts, _) in TASKS.items():
        for name, dair in (("AIR", False), ("DAIR", True)):
            for seed in (0, 1):
                config = RunConfig(
                    data=DataConfig(counts=train_counts, n_train=50, n_test=20),
                    model=model_config(dair=dair, max_steps=3, **TINY_MODEL),
                    train=TrainConfig(steps=2, batch_size=4, eval_every=0, seed=seed),
                )
                run = train(config, tmp_path / f"{task}-{name}-{seed}", progress=False).run_dir
                key = f"{task}/{name}" if seed == 0 else f"{task}/{name}/{seed}"
                reuse += ["--reuse", f"{key}={run}"]
    out = tmp_path / "report"
    argv = ["experiment", "generalisation", "--quick", "--seeds", "0,1", "--out", str(out)]
    assert main([*argv, *reuse]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert set(summary["results"]) == {
        "extrapolation/AIR",
        "extrapolation/DAIR",
        "interpolation/AIR",
        "interpolation/DAIR",
    }
    extrapolation = summary["results"]["extrapolation/AIR"]
    assert extrapolation["test_counts"] == [3] and set(extrapolation["by_seed"]) == {"0", "1"}
    for one in extrapolation["by_seed"].values():
        assert len(one["confusion"]) == 5  # counts 0..4: N + 1 = 4
        assert sum(map(sum, one["confusion"])) == 1000
    each = [one["count_accuracy"] for one in extrapolation["by_seed"].values()]
    spread = extrapolation["count_accuracy"]
    assert spread["mean"] == pytest.approx(sum(each) / 2) and spread["seeds"] == 2
    assert spread["min"] == min(each) and spread["max"] == max(each)
    report = (out / "report.md").read_text()
    assert "| extrapolation | {0, 1, 2} | {3} |" in report and "paper" in report
    assert "| model | seed 0 | seed 1 |" in report
    assert (out / "generalisation.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["experiment", "generalisation", "--reuse", "nonsense=x"]) == 2
    assert main(["experiment", "generalisation", "--reuse", "extrapolation/AIR/x=y"]) == 2


def test_generalisation_reuses_its_own_finished_runs(tmp_path, monkeypatch):
    # A stopped multi-seed experiment continues: a run already finished under OUT/runs with the
    # same config is evaluated, not trained again; one with another config is trained.
    from tiny import TINY_MODEL, model_config

    from airscene.config import DataConfig, RunConfig, TrainConfig
    from airscene.experiments import generalisation

    def tiny_config(train_counts, dair, steps, seed):
        return RunConfig(
            data=DataConfig(counts=train_counts, n_train=50, n_test=20),
            model=model_config(dair=dair, max_steps=3, **TINY_MODEL),
            train=TrainConfig(steps=2, batch_size=4, eval_every=0, seed=seed),
        )

    monkeypatch.setattr(generalisation, "run_config", tiny_config)
    trained = []
    real_train = generalisation.train

    def counted_train(config, run_dir, **options):
        trained.append(run_dir)
        return real_train(config, run_dir, **options)

    monkeypatch.setattr(generalisation, "train", counted_train)
    generalisation.run_generalisation(tmp_path, quick=True, progress=False)
    assert len(trained) == 4
    trained.clear()
    generalisation.run_generalisation(tmp_path, quick=True, progress=False)
    assert trained == []
    generalisation.run_generalisation(tmp_path, quick=True, seeds=(0, 5), progress=False)
    assert sorted(p.name for p in trained) == sorted(
        f"{task}-{name}-seed5" for task in generalisation.TASKS for name in ("air", "dair")
    )


@pytest.mark.slow
def test_generalisation_quick_mode_under_ten_minutes(tmp_path):
    import time

    from airscene.experiments.generalisation import run_generalisation

    started = time.perf_counter()
    summary = run_generalisation(tmp_path, quick=True, progress=False)
    assert time.perf_counter() - started < 600
    assert all(0.0 <= r["count_accuracy"]["mean"] <= 1.0 for r in summary["results"].values())
    assert (tmp_path / "report.md").is_file() and (tmp_path / "generalisation.png").is_file()


def tiny_air_run(tmp_path):
    from tiny import TINY_MODEL, model_config

    from airscene.config import DataConfig, RunConfig, TrainConfig
    from airscene.train import train

    config = RunConfig(
        data=DataConfig(n_train=60, n_test=20),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(steps=2, batch_size=4, eval_every=0),
    )
    return train(config, tmp_path / "tiny-air", progress=False).run_dir


def test_downstream_experiment_wiring(tmp_path, capsys, monkeypatch):
    # A tiny AIR run and a few classifier steps: the plumbing (labelled subsets of each size,
    # three representations, report, figure, JSON), not the accuracies.
    import json

    from airscene.checkpoint import load_model
    from airscene.experiments import downstream
    from airscene.experiments.downstream import (
        GLIMPSE_READOUT,
        OBJECT_READOUTS,
        REPRESENTATIONS,
        DownstreamSettings,
        run_downstream,
    )

    settings = DownstreamSettings(
        label_sizes=(10, 30, 1000),
        test_scenes=40,
        classifier_steps=3,
        small_set_steps=3,
        vae_steps=3,
        repeats_below_1000=2,
        posterior_draws=2,
        readout_fits=3,
        explain_away=1,
        test_draws=2,
    )
    out = tmp_path / "downstream"
    scored = []  # (readers, views, their widths) of every test score

    def recording(models, views, labels, chunk=1024):
        scored.append((len(models), len(views), {v.shape[-1] for v in views}))
        return real_ensemble_accuracy(models, views, labels, chunk)

    real_ensemble_accuracy = downstream.ensemble_accuracy
    monkeypatch.setattr(downstream, "ensemble_accuracy", recording)
    summary = run_downstream(out, model=tiny_air_run(tmp_path), progress=False, settings=settings)
    # Every latent reader is scored on the posterior mean and 2 draws (each with its features),
    # the CNN on the pixels once: 3 sizes x 2 tasks, single fits and fits together.
    pixels = {w for _, v, widths in scored if v == 1 for w in widths}
    assert pixels == {50} and sum(v == 1 for _, v, _ in scored) == 2 * (2 + 2 + 1)
    assert all(v == 3 and len(widths) == 1 for _, v, widths in scored if widths != {50})
    assert {r for r, _, _ in scored} == {1, 3}  # single fits, and 3 fits together
    for name in ("explain_away", "test_draws", "posterior_draws"):
        with pytest.raises(ValueError, match=name):
            DownstreamSettings(**{name: -1})
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"].keys() == {"sum", "ascending"}
    for task in ("sum", "ascending"):
        for size in ("10", "30", "1000"):
            row = saved["results"][task][size]
            assert set(row) == set(REPRESENTATIONS)
            assert all(0.0 <= row[name]["accuracy"] <= 1.0 for name in REPRESENTATIONS)
            for name in REPRESENTATIONS:
                # Under 1,000 labels: one fit per drawn subset (2); from 1,000 up one subset,
                # fitted 3 times for the object readouts (answering together), once otherwise.
                together = size == "1000" and name in OBJECT_READOUTS
                fits = 2 if size != "1000" else 3 if together else 1
                assert len(row[name]["runs"]) == fits
                assert row[name].get("fits_together") == (3 if together else None)
        assert 0 < saved["results"][task]["majority_class_accuracy"] <= 1
    # AIR's features: N objects x [z_pres, z_where (3), z_what (4)]; the VAE's latent matches.
    assert summary["feature_dims"]["AIR latents"] == 3 * (1 + 3 + 4)
    assert summary["feature_dims"]["VAE latents"] == 3 * (1 + 3 + 4)
    glimpse = load_model(summary["air_model"])[0].objects.config.glimpse_size
    # The glimpse readout's objects: [z_pres, z_where (3), the attended glimpse's pixels].
    assert summary["feature_dims"][GLIMPSE_READOUT] == 3 * (1 + 3 + glimpse**2)
    report = (out / "report.md").read_text()
    assert "| labelled scenes | AIR latents | VAE latents | CNN on pixels |" in report
    assert "fitted 3 times on the same scenes" in report and "% (" in report  # mean of the fits
    assert "z_what is read again (1 pass(es))" in report
    assert summary["settings"]["explain_away"] == 1
    assert "averaged over each test scene's posterior mean and 2 draws" in report
    assert (out / "downstream.png").read_bytes()[:4] == b"\x89PNG"
    # A missing model: one line, exit 2, no output directory made.
    from airscene.cli import main

    capsys.readouterr()
    missing = ["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "not-made")]
    assert main(["experiment", "downstream", *missing]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "not-made").exists()
    for flag in ("--explain-away", "--test-draws"):
        negative = [flag, "-1", "--out", str(tmp_path / "not-made")]
        assert main(["experiment", "downstream", *negative]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not (tmp_path / "not-made").exists()


def test_standardised_views_keep_an_unused_latents_draws_on_the_common_scale():
    from airscene.experiments.downstream import _standardised

    g = torch.Generator().manual_seed(0)
    means = torch.randn(1, 500, 2, generator=g)
    means[..., 1] = 0.5  # a latent the model leaves unused: its mean never moves...
    draws = means + torch.randn(4, 500, 2, generator=g)  # ...and its draws are as wide as the prior
    views, test = _standardised(torch.cat([means, draws]), draws[0])
    spread = views.flatten(0, 1).std(0)
    assert torch.allclose(spread, torch.ones(2), atol=1e-4)  # not 1,000 for the unused one
    assert float(test[:, 1].std()) < 2


def test_feature_classifier_learns_a_separable_task():
    from airscene.experiments.baselines import accuracy, feature_classifier, fit_classifier

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 6, generator=g)
    labels = (inputs[:, 0] + inputs[:, 3] > 0).long()
    classifier = fit_classifier(feature_classifier(6, 2, hidden=32), inputs, labels, 300, seed=0)
    assert accuracy(classifier, inputs, labels) > 0.95


def test_cosine_fit_learns_and_its_steps_shrink_to_nothing():
    from airscene.experiments.baselines import accuracy, feature_classifier, fit_classifier

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(200, 6, generator=g)
    labels = (inputs[:, 0] + inputs[:, 3] > 0).long()

    class Recorded(torch.nn.Module):  # keeps its weights as each training step saw them
        def __init__(self):
            super().__init__()
            self.net, self.seen = feature_classifier(6, 2, hidden=32), []

        def forward(self, x):
            if self.training:
                self.seen.append(torch.cat([p.detach().flatten() for p in self.parameters()]))
            return self.net(x)

    moves = {}
    for cosine in (False, True):
        torch.manual_seed(0)
        classifier = fit_classifier(Recorded(), inputs, labels, 300, seed=0, cosine=cosine)
        assert accuracy(classifier, inputs, labels) > 0.95
        step = torch.stack(classifier.seen).diff(dim=0).abs().max(dim=1).values  # per step
        moves[cosine] = (float(step[:20].mean()), float(step[-20:].mean()))
    # Adam moves a weight by about the learning rate: constant, the last steps move as far as
    # the first; with the cosine, they move a small fraction of it.
    assert moves[False][1] > 0.3 * moves[False][0]
    assert moves[True][1] < 0.02 * moves[True][0]


def test_ensemble_accuracy_averages_the_readers_probabilities():
    from airscene.experiments.baselines import accuracy, ensemble_accuracy

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits[x.long().squeeze(-1)]

    inputs = torch.arange(4.0).unsqueeze(-1)  # row i is example i
    labels = torch.tensor([0, 0, 1, 1])
    # Each reader is sure and right on two examples, unsure and wrong on the other two.
    a = Fixed([[5.0, 0.0], [5.0, 0.0], [0.2, 0.0], [0.2, 0.0]])
    b = Fixed([[0.0, 0.2], [0.0, 0.2], [0.0, 5.0], [0.0, 5.0]])
    assert accuracy(a, inputs, labels) == accuracy(b, inputs, labels) == 0.5
    assert ensemble_accuracy([a, b], inputs, labels) == 1.0
    assert ensemble_accuracy([a], inputs, labels) == 0.5
    # Views of the same examples (e.g. the posterior mean and a draw) are averaged like readers:
    # one reader, whose rows 4-7 answer as b does, sees the examples as rows 0-3 and 4-7.
    c = Fixed(a.logits.tolist() + b.logits.tolist())
    views = (inputs, inputs + 4)
    assert [ensemble_accuracy([c], v, labels) for v in views] == [0.5, 0.5]
    assert ensemble_accuracy([c], views, labels) == 1.0
    assert ensemble_accuracy([c], views, labels, chunk=3) == 1.0  # chunks cut across the views


def test_vae_and_cnn_baselines_learn():
    import numpy as np

    from airscene.experiments.baselines import PixelCNN, PixelVAE, train_vae

    images = np.zeros((64, 32, 32), dtype=np.uint8)
    images[::2, 8:24, 8:24] = 255  # half blank, half a square
    untrained = PixelVAE(32 * 32, 4)
    trained = train_vae(images, latent_dim=4, steps=150, seed=0)
    x = torch.from_numpy(images).float().flatten(1) / 255
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert trained.negative_elbo(x, g) < 0.5 * untrained.negative_elbo(x, g)
        # Squares and blanks get different codes.
        codes = trained.encode(x)[0]
        assert (codes[0] - codes[1]).norm() > 3 * (codes[0] - codes[2]).norm()
    assert PixelCNN(32, 19)(x.view(64, 32, 32)).shape == (64, 19)


def test_count_experiment_from_benchmark_curves(tmp_path, capsys):
    import json

    from airscene.cli import main
    from airscene.config import RunConfig, to_dict

    curves = tmp_path / "curves"
    curves.mkdir()
    for name, points in (("air", [0.5, 0.96, 0.99]), ("dair", [0.4, 0.9, 0.985])):
        curve = [
            {"step": 500 * (i + 1), "train_seconds": 20.0 * (i + 1), "count_accuracy": a}
            for i, a in enumerate(points)
        ]
        (curves / f"tta-{name}-seed0.json").write_text(
            json.dumps(
                {
                    "name": f"{name}-seed0",
                    "config": to_dict(RunConfig()),
                    "hardware": {"cpu_count": 2, "machine": "x86_64", "torch": "2.13.0",
                                 "torch_threads": 2, "cuda": None},
                    "final_count_accuracy": points[-1],
                    "best_count_accuracy": max(points),
                    "steps_to": {"0.95": 1000, "0.98": 1500},
                    "seconds_to": {"0.95": 40.0, "0.98": 60.0 if name == "air" else None},
                    "curve": curve,
                }
            )
        )  # fmt: skip
    out = tmp_path / "count"
    assert main(["experiment", "count", "--curves-from", str(curves), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| AIR | 99.00% | 99.00% | 1,500 | 0.7 min | 1.0 min | 1,000 |" in report
    assert "| DAIR | 98.50% |" in report and "not reached" in report
    assert (out / "count.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["runs"]["DAIR"]["curve"][0]["step"] == 500
    # A missing curve: one line, exit 2.
    capsys.readouterr()
    assert main(["experiment", "count", "--curves-from", str(tmp_path), "--out", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "tta-air-seed0.json" in errors[0]
    # Each experiment has its own flags: argparse rejects another's (usage error, exit 2).
    for other in (["--model", "default"], ["--reuse", "extrapolation/AIR=runs/x"]):
        with pytest.raises(SystemExit) as stop:
            main(["experiment", "count", *other, "--out", str(out)])
        assert stop.value.code == 2
        assert f"unrecognized arguments: {other[0]}" in capsys.readouterr().err


def test_time_to_accuracy_summarises_a_tiny_run(tmp_path):
    from tiny import TINY_MODEL, model_config

    from airscene.config import DataConfig, RunConfig, TrainConfig
    from airscene.experiments.count import first_reaching, time_to_accuracy

    config = RunConfig(
        data=DataConfig(n_train=60, n_test=20),
        model=model_config(**TINY_MODEL),
        train=TrainConfig(steps=4, batch_size=4, eval_every=2, eval_scenes=20, log_every=2),
    )
    summary = time_to_accuracy(config, tmp_path / "run", "air-seed0", progress=False)
    assert [p["step"] for p in summary["curve"]] == [2, 4]
    assert summary["final_count_accuracy"] == summary["curve"][-1]["count_accuracy"]
    assert set(summary["steps_to"]) == {"0.95", "0.98"}
    curve = [{"count_accuracy": a, "step": s} for s, a in ((1, 0.5), (2, 0.97), (3, 0.99))]
    assert first_reaching(curve, 0.95)["step"] == 2 and first_reaching(curve, 0.999) is None


@pytest.mark.slow
def test_downstream_and_count_quick_modes_under_ten_minutes(tmp_path):
    import time

    from airscene.experiments.count import run_count
    from airscene.experiments.downstream import run_downstream

    for run in (run_downstream, run_count):
        started = time.perf_counter()
        run(tmp_path / run.__name__, quick=True, progress=False)
        assert time.perf_counter() - started < 600, run.__name__
        assert (tmp_path / run.__name__ / "report.md").is_file()


def object_features(scenes_digits: list[list[int]], z_what: int = 10) -> torch.Tensor:
    """Ordered object latents (B, 3 * (4 + z_what)) whose z_what is a sharp one-hot of the digit."""
    features = torch.zeros(len(scenes_digits), 3, 4 + z_what)
    for b, digits in enumerate(scenes_digits):
        for i, digit in enumerate(digits):
            features[b, i, 0] = 1.0
            features[b, i, 4 + digit] = 30.0
    return features.flatten(1)


def test_object_readout_computes_sum_and_order_from_digit_distributions():
    from airscene.experiments.baselines import ObjectDigitReadout

    scenes = [[3, 5], [5, 3], [7], [], [2, 2], [1, 4, 2], [9, 9]]
    features = object_features(scenes)
    answers = {}
    for task in ("sum", "ascending"):
        # z_what is already the digit's logits
        readout = ObjectDigitReadout(3, torch.nn.Identity(), task)
        log_p = readout(features)
        assert log_p.shape == (len(scenes), 19 if task == "sum" else 2)
        assert torch.allclose(log_p.exp().sum(-1), torch.ones(len(scenes)), atol=1e-4)
        answers[task] = log_p.argmax(-1).tolist()
    assert answers["sum"] == [8, 8, 7, 0, 4, 7, 18]
    assert answers["ascending"] == [1, 0, 1, 1, 1, 0, 1]


def test_object_readout_learns_digits_from_sums_alone():
    from airscene.experiments.baselines import ObjectDigitReadout, accuracy, fit_classifier
    from airscene.networks import mlp

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 8, generator=g) * 2
    digits = torch.randint(0, 10, (600, 2), generator=g)
    features = torch.zeros(600, 3, 12)
    features[:, :2, 0] = 1.0
    features[:, :2, 4:] = centres[digits] + 0.3 * torch.randn(600, 2, 8, generator=g)
    sums = digits.sum(1)
    readout = ObjectDigitReadout(3, mlp([8, 32, 10]), "sum")  # the features are on unit scale
    fit_classifier(readout, features.flatten(1)[:500], sums[:500], steps=600, seed=0)
    assert accuracy(readout, features.flatten(1)[500:], sums[500:]) > 0.9


def test_decoded_glimpse_reader_keeps_the_decoder_frozen():
    # The object readout's digit head draws z_what with AIR's decoder: training the head must
    # leave that decoder (and the model it came from) exactly as it was.
    from airscene.experiments.baselines import DecodedGlimpseCNN, fit_classifier
    from airscene.networks import GlimpseDecoder

    torch.manual_seed(0)
    decoder = GlimpseDecoder(z_what_dim=6, hidden=16, glimpse_size=8, output_bias=-2.0)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    head = DecodedGlimpseCNN(decoder, glimpse_size=8, classes=3)
    frozen = {k: v.clone() for k, v in head.decoder.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    z_what, labels = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)
    fit_classifier(head, z_what, labels, steps=20, seed=0)
    assert head(z_what).shape == (100, 3)
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in head.decoder.state_dict().items())
    assert not head.decoder.training


def test_scenes3d_experiment_wiring(tmp_path, monkeypatch, capsys):
    # Tiny runs: the plumbing (both pose gradients, the CNN, held-out scores, report, figure,
    # JSON, reuse of finished runs), not the accuracies.
    import json

    from airscene.cli import main
    from airscene.config import DataConfig, ModelConfig, RenderedConfig, RunConfig, TrainConfig
    from airscene.experiments import scenes3d

    def tiny_config(pose_gradient, steps, seed):
        return RunConfig(
            data=DataConfig(kind="scenes3d", canvas_size=64, counts=(0, 1, 2, 3), n_train=48,
                            n_test=12),
            model=ModelConfig(
                canvas_size=64, max_steps=3, dair=True, lstm_size=16, predictor_hidden=16,
                baseline_lstm_size=8, z_pres_prior=1e-3,
                objects=RenderedConfig(encoder_hidden=16, pose_gradient=pose_gradient),
            ),
            train=TrainConfig(steps=steps, batch_size=8, eval_every=1, seed=seed,
                              likelihood_blur_start=4.0, likelihood_blur_steps=1),
        )  # fmt: skip

    monkeypatch.setattr(scenes3d, "run_config", tiny_config)
    monkeypatch.setattr(scenes3d, "QUICK_STEPS", {"autograd": 2, "finite-difference": 1, "cnn": 3})
    trained = []
    real_train = scenes3d.train
    monkeypatch.setattr(
        scenes3d, "train", lambda config, run_dir, **o: trained.append(run_dir) or real_train(
            config, run_dir, **o)
    )  # fmt: skip
    out = tmp_path / "report"
    assert main(["experiment", "scenes3d", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {
        "AIR (autograd)",
        "AIR (finite-difference)",
        "supervised CNN (turn)",
        "supervised CNN (raw angle)",
    }
    assert summary["held_out_scenes"] == 12
    autograd = summary["results"]["AIR (autograd)"]
    assert autograd["curve"][-1]["step"] == 2 and autograd["steps"] == 2
    assert sum(map(sum, autograd["held_out"]["confusion"])) == 12
    assert 0 <= summary["results"]["supervised CNN (raw angle)"]["held_out"]["count_accuracy"] <= 1
    report = (out / "report.md").read_text()
    assert "| supervised CNN (turn) | 3 |" in report and "targets first reached" in report
    assert (out / "scenes3d.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "AIR (finite-difference): count" in printed and "wrote" in printed
    assert len(trained) == 2
    trained.clear()
    assert main(["experiment", "scenes3d", "--quick", "--out", str(out)]) == 0
    assert trained == []  # finished runs are reused


def test_supervised_loss_takes_the_cheapest_assignment_of_objects_to_slots():
    from airscene.experiments.supervised3d import supervised_loss

    target = {
        "count": torch.tensor([2]),
        "shape": torch.tensor([[1, 2, -1]]),
        "position": torch.tensor([[[0.5, 0.0], [-0.5, 0.2], [0.0, 0.0]]]),
        "turn": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]),
    }

    def prediction(slot_of_object):
        shape_logits = torch.full((1, 3, 3), -20.0)
        position = torch.zeros(1, 3, 2)
        turn = torch.zeros(1, 3, 3, 2)
        turn[..., 0] = 1.0
        presence = torch.full((1, 3), -20.0)
        for j, slot in enumerate(slot_of_object):
            shape_logits[0, slot, target["shape"][0, j]] = 20.0
            position[0, slot] = target["position"][0, j]
            turn[0, slot, target["shape"][0, j]] = target["turn"][0, j]
            presence[0, slot] = 20.0
        return {
            "count_logits": torch.tensor([[-20.0, -20.0, 20.0, -20.0]]),
            "presence_logit": presence,
            "shape_logits": shape_logits,
            "position": position,
            "turn": turn,
        }

    # Right in any slots: no loss; the objects' positions swapped between two slots: a loss.
    assert supervised_loss(prediction([2, 0]), target) < 1e-6
    assert supervised_loss(prediction([0, 1]), target) < 1e-6
    wrong = prediction([0, 1])
    wrong["position"][0, [0, 1]] = wrong["position"][0, [1, 0]]
    assert supervised_loss(wrong, target) > 1.0


@pytest.mark.slow
def test_scenes3d_quick_mode_under_ten_minutes(tmp_path):
    import time

    from airscene.experiments.scenes3d import run_scenes3d

    started = time.perf_counter()
    summary = run_scenes3d(tmp_path, quick=True, progress=False)
    assert time.perf_counter() - started < 600
    assert set(summary["results"]) == {
        "AIR (autograd)",
        "AIR (finite-difference)",
        "supervised CNN (turn)",
        "supervised CNN (raw angle)",
    }
    assert (tmp_path / "report.md").is_file() and (tmp_path / "scenes3d.png").is_file()


def test_many_objects_grid_switches_its_likelihood_at_the_recipes_fraction_of_its_steps():
    """The grid's recipe scores under the normal for 15,000 of its 18,000 steps; a run the
    experiment shortens switches to its own Bernoulli at the same fraction, never past its end."""
    from airscene.experiments.many_objects import QUICK, Sizes, scheme_config

    for steps, warm_up in (
        (18_000, 15_000),
        (Sizes().grid_steps, 6_667),
        (QUICK.grid_steps, 1_250),
    ):
        run = scheme_config("grid", steps, seed=0)
        assert run.model.likelihood == "bernoulli"
        assert (run.train.steps, run.train.normal_likelihood_steps) == (steps, warm_up)
    for scheme in ("AIR", "DAIR"):  # the sequential recipes have no warm-up
        assert scheme_config(scheme, 3_000, seed=0).train.normal_likelihood_steps == 0


def test_many_objects_experiment_wiring(tmp_path, monkeypatch, capsys):
    # Tiny runs: the plumbing (three schemes trained and measured per n, the transfer to 84 and
    # 160 px, the speeds, report, figures, JSON), not the accuracies.
    import dataclasses
    import json

    from airscene.cli import main
    from airscene.experiments import many_objects

    real_config = many_objects.scheme_config

    def tiny_config(scheme, steps, seed, eval_scenes):
        assert eval_scenes == 200  # the quick sizes' (replaced below)
        run = real_config(scheme, steps, seed, eval_scenes)
        objects = dataclasses.replace(run.model.objects, encoder_hidden=8, decoder_hidden=8)
        model = dataclasses.replace(run.model, objects=objects, lstm_size=8, predictor_hidden=8,
                                    baseline_lstm_size=8, grid_channels=8)  # fmt: skip
        data = dataclasses.replace(run.data, n_train=32, n_test=8)
        train = dataclasses.replace(run.train, batch_size=4, eval_scenes=8, eval_every=steps)
        return dataclasses.replace(run, model=model, data=data, train=train)

    monkeypatch.setattr(many_objects, "scheme_config", tiny_config)
    monkeypatch.setattr(
        many_objects,
        "QUICK",
        many_objects.Sizes(2, 1, scenes=4, transfer_scenes=2, timed_steps=1, eval_scenes=200),
    )
    out = tmp_path / "report"
    assert main(["experiment", "many-objects", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["schemes"]) == ["grid", "AIR", "DAIR"]
    for result in summary["schemes"].values():
        assert list(result["by_count"]) == ["1", "3", "5", "7", "9"]
        assert all(row["scenes"] == 4 and row["step_seconds"] > 0
                   for row in result["by_count"].values())  # fmt: skip
    assert list(summary["transfer"]) == ["84px n=10", "84px n=15", "84px n=20", "160px n=30-40"]
    assert summary["transfer"]["160px n=30-40"]["scenes"] == 2
    assert set(summary["images_per_second"]) == {"48", "84", "256"}
    report = (out / "report.md").read_text()
    assert "| grid | 2 steps" in report and "84px n=20" in report
    for figure in ("count.png", "step_time.png", "boxes.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    assert "grid: count n=1" in capsys.readouterr().out
    # Runs given with --reuse are measured, not trained again.
    from airscene.experiments import runs

    monkeypatch.setattr(runs, "train", None)
    runs = out / "runs"
    reuse = [f"--reuse={s}={runs / (s.lower() + '-seed0')}" for s in ("grid", "AIR", "DAIR")]
    again = tmp_path / "again"
    assert main(["experiment", "many-objects", "--quick", "--out", str(again), *reuse]) == 0
    rerun = json.loads((again / "results.json").read_text())
    assert rerun["schemes"]["AIR"]["run"] == str(runs / "air-seed0")
    assert rerun["schemes"]["grid"]["train_seconds"] is not None
    assert main(["experiment", "many-objects", "--reuse", "CNN=x"]) == 2


def test_clutter_experiment_wiring(tmp_path, monkeypatch, capsys):
    # Tiny runs: the plumbing (AIR with and without a background on each cluttered kind,
    # measured, report, figures, JSON), not the accuracies.
    import dataclasses
    import json

    from airscene.cli import main
    from airscene.experiments import clutter

    real_config = clutter.clutter_config

    def tiny_config(kind, arm, steps, seed):
        run = real_config(kind, arm, steps, seed)
        objects = dataclasses.replace(run.model.objects, encoder_hidden=8, decoder_hidden=8)
        model = dataclasses.replace(run.model, objects=objects, lstm_size=8, predictor_hidden=8,
                                    baseline_lstm_size=8)  # fmt: skip
        data = dataclasses.replace(run.data, n_train=32, n_test=8)
        train = dataclasses.replace(run.train, batch_size=4, eval_scenes=8, eval_every=steps)
        return dataclasses.replace(run, model=model, data=data, train=train)

    monkeypatch.setattr(clutter, "clutter_config", tiny_config)
    arms = ("AIR", "DAIR+background", "grid+background")
    quick = clutter.Sizes(steps=2, scenes=8, kinds=clutter.KINDS, arms=arms)
    monkeypatch.setattr(clutter, "QUICK", quick)
    out = tmp_path / "report"
    assert main(["experiment", "clutter", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    # The grid arm on the sprites only: grey ink on the grid has no background to cover.
    keys = ["noisy-mnist/AIR", "noisy-mnist/DAIR+background", "grid-mnist/AIR",
            "grid-mnist/DAIR+background", "sprites/AIR", "sprites/DAIR+background",
            "sprites/grid+background"]  # fmt: skip
    assert list(summary["results"]) == keys
    backgrounds = {"noisy-mnist": "learned", "grid-mnist": "learned", "sprites": "smooth"}
    for key, row in summary["results"].items():
        kind = key.split("/")[0]
        model, data = row["config"]["model"], row["config"]["data"]
        assert row["scenes"] == 8 and model["dair"] == ("DAIR" in key)
        assert model["background"] == (backgrounds[kind] if "background" in key else "none")
        assert model["inference"] == ("grid" if "grid+" in key else "sequential")
        assert data["kind"] == kind
        if kind == "sprites":  # colour objects with masks, their ARI measured
            assert model["channels"] == 3 and model["objects"]["kind"] == "masked"
            assert 0 <= row["foreground_ari"] <= 1 or row["foreground_ari"] != row["foreground_ari"]
        else:
            assert data["clutter"] == ("noise" if "noisy" in key else "grid")
            assert "foreground_ari" not in row
    report = (out / "report.md").read_text()
    assert "| noisy-mnist | DAIR+background |" in report and "~0.93 (SuPAIR)" in report
    assert "| 2 steps, seed 0" in report  # each row's own steps and seed (a reused run's differ)
    assert "| sprites | grid+background |" in report and "![sprites: grid+background's" in report
    assert "![grid-mnist: DAIR+background's" in report
    assert "refuses them" in report and "noisy-mnist/grid+background" in report
    assert set(summary["skipped"]) == {"noisy-mnist/grid+background", "grid-mnist/grid+background"}
    assert "| sprites | DAIR+background |" in report and "0.91 (Slot Attention)" in report
    for figure in ("noisy-mnist.png", "grid-mnist.png", "sprites.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    assert "grid-mnist/DAIR+background: count" in capsys.readouterr().out
    # Runs given with --reuse are measured, not trained again.
    from airscene.experiments import runs

    monkeypatch.setattr(runs, "train", None)
    runs = out / "runs"
    reuse = [f"--reuse={key}={runs / (key.replace('/', '-').lower() + '-seed0')}" for key in keys]
    again = tmp_path / "again"
    assert main(["experiment", "clutter", "--quick", "--out", str(again), *reuse]) == 0
    rerun = json.loads((again / "results.json").read_text())
    assert rerun["results"]["grid-mnist/AIR"]["run"] == str(runs / "grid-mnist-air-seed0")
    assert main(["experiment", "clutter", "--reuse", "shapes/AIR=x"]) == 2
    assert main(["experiment", "clutter", "--reuse", "noisy-mnist/grid+background=x"]) == 2
