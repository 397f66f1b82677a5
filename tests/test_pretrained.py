"""The model shipped inside the package: provenance, size, and counts on fresh images."""

import csv
import json
import re

import pytest
from PIL import Image

import airscene
from airscene.checkpoint import MODEL_FILE, pretrained_dir, read_checkpoint
from airscene.cli import main
from airscene.config import DataConfig
from airscene.data.scenes import export_png, load_scenes


@pytest.mark.parametrize("name", ["default", "conv-dair"])
def test_shipped_model_describes_itself(name):
    directory = pretrained_dir(name)
    checkpoint = read_checkpoint(name)
    assert checkpoint.path == directory
    assert (directory / MODEL_FILE).stat().st_size < 20 * 2**20
    assert (
        checkpoint.meta["command"][:2] == ["airscene", "train"] and checkpoint.meta["git_revision"]
    )
    assert checkpoint.config.train.seed == 0 and checkpoint.step == checkpoint.config.train.steps
    # Its provenance and evaluation beside it, as the package ships them.
    assert (directory / "README.md").is_file() and (directory / "eval.json").is_file()


def test_shipped_conv_dair_model_is_the_one_its_command_makes():
    checkpoint = read_checkpoint("conv-dair")
    flags = checkpoint.meta["command"][2:]
    assert flags[:4] == ["--dair", "--glimpse-networks", "conv", "--steps"]
    model = checkpoint.config.model
    assert model.dair and model.objects.glimpse_networks == "conv"
    assert checkpoint.step == int(flags[4]) == 30_000


def test_shipped_many_digits_is_the_run_the_grid_recipe_makes():
    # Trained with the recipe's values as flags before they were its own: the same run.
    import dataclasses

    from airscene.data.scattered import SCATTERED_DIGITS
    from airscene.grid import GridAIR

    checkpoint = read_checkpoint("many-digits")
    recipe = GridAIR.recipe(SCATTERED_DIGITS.preset())
    assert checkpoint.config.model == recipe.model and checkpoint.config.data == recipe.data
    assert checkpoint.config.train == dataclasses.replace(recipe.train, seed=0)
    assert checkpoint.config.model.likelihood == "bernoulli"
    assert (checkpoint.step, checkpoint.config.train.normal_likelihood_steps) == (18_000, 15_000)


def fresh_pngs(tmp_path):
    # test digits, and a scene seed the model never saw in training or evaluation
    scenes = load_scenes(DataConfig(seed=2026, n_test=200), "test")
    folder = export_png(scenes, tmp_path / "pngs")
    truth = {row["file"]: int(row["count"]) for row in csv.DictReader(open(folder / "counts.csv"))}
    return folder, truth


@pytest.mark.parametrize("name", ["default", "conv-dair"])
def test_shipped_model_counts_fresh_pngs(tmp_path, name):
    folder, truth = fresh_pngs(tmp_path)
    results = airscene.load(name).infer(sorted(folder.glob("*.png")))
    correct = sum(r.count == truth[r.path.split("/")[-1]] for r in results)
    assert len(results) == 200 and correct / 200 >= 0.98


def test_shipped_model_counts_upscaled_jpegs(tmp_path, capsys):
    folder, truth = fresh_pngs(tmp_path)
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for png in folder.glob("*.png"):
        Image.open(png).resize((100, 100), Image.Resampling.BICUBIC).save(
            jpegs / f"{png.stem}.jpg", quality=90
        )
    out = tmp_path / "found.jsonl"
    assert main(["infer", str(jpegs), "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    correct = sum(
        r["count"] == truth[r["path"].split("/")[-1].replace(".jpg", ".png")] for r in records
    )
    assert len(records) == 200 and correct / 200 >= 0.95
    assert all(r["width"] == 100 for r in records)


def test_cli_sample_default_model_draws_the_counts_asked_for(tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert (
        main(["sample", "--model", "default", "--n", "100", "--counts", "1,2", "--out", str(out)])
        == 0
    )
    line = capsys.readouterr().out
    counts = dict(re.findall(r"(\d+): (\d+)", line.split("scenes by count:")[1]))
    assert set(counts) == {"1", "2"} and abs(int(counts["1"]) - 50) < 16, line
    assert out.stat().st_size > 0
    # Default: the training data's counts {0, 1, 2}, uniform - not rho, which draws empty scenes.
    assert main(["sample", "--model", "default", "--n", "100", "--out", str(out)]) == 0
    counts = dict(re.findall(r"(\d+): (\d+)", capsys.readouterr().out.split("scenes by count:")[1]))
    assert set(counts) == {"0", "1", "2"} and all(abs(int(v) - 33) < 15 for v in counts.values())
    assert main(["sample", "--model", "default", "--counts", "0,5", "--out", str(out)]) == 2
    assert "at most 3 objects" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse, as for every list flag
        main(["sample", "--model", "default", "--counts", "a", "--out", str(out)])
    assert usage.value.code == 2


def test_shipped_3d_model_describes_itself():
    checkpoint = read_checkpoint("scenes3d")
    assert checkpoint.path == pretrained_dir("scenes3d")
    assert checkpoint.meta["object_model"] == "render3d" and checkpoint.meta["git_revision"]
    assert checkpoint.config.data.kind == "scenes3d"
    assert checkpoint.config.train.seed == 0 and checkpoint.step == checkpoint.config.train.steps
    assert (pretrained_dir("scenes3d") / MODEL_FILE).stat().st_size < 20 * 2**20


def test_shipped_3d_model_counts_and_names_shapes_of_scenes_rendered_from_new_descriptions(
    tmp_path,
):
    # Descriptions from a seed the model never saw, rendered by `airscene render3d`, read back
    # by `airscene infer --model scenes3d`; inferred objects are matched to the described ones
    # by position, as the 3D evaluation does.
    import numpy as np

    from airscene.data.scenes3d import sample_descriptions
    from airscene.evaluate3d import match_objects
    from airscene.render3d import SceneSpace

    scenes = sample_descriptions(200, (0, 1, 2, 3), np.random.default_rng(2026), SceneSpace())
    document = {
        "scenes": [
            {
                "objects": [
                    {"shape": o.shape, "position": list(o.position), "rotation_deg": o.rotation_deg}
                    for o in objects
                ]
            }
            for objects in scenes
        ]
    }
    (tmp_path / "scenes.json").write_text(json.dumps(document))
    assert main(["render3d", str(tmp_path / "scenes.json"), "--out", str(tmp_path / "png")]) == 0
    out = tmp_path / "found.jsonl"
    argv = ["infer", "--model", "scenes3d", str(tmp_path / "png"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = {r["path"].split("/")[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    counted = shaped = objects_total = 0
    for i, objects in enumerate(scenes):
        record = records[f"{i:05d}.png"]
        counted += record["count"] == len(objects)
        found = record["objects"]
        rows, cols = match_objects(
            np.array([o.position for o in objects]).reshape(-1, 2),
            np.array([f["position"] for f in found]).reshape(-1, 2),
        )
        shaped += sum(
            objects[r].shape == found[c]["shape"] for r, c in zip(rows, cols, strict=True)
        )
        objects_total += len(objects)
    assert counted / len(scenes) >= 0.95, counted
    assert shaped / objects_total >= 0.90, (shaped, objects_total)


def test_samples_within_the_canvas_show_every_object_whole():
    # sample draws positions from the prior truncated to the canvas: every present object's
    # window lies on the canvas, and so does all it draws; the plain prior puts many off it.
    import torch

    from airscene.checkpoint import load_model

    model, _ = load_model("default")
    generator = torch.Generator().manual_seed(0)
    inside = model.sample(400, generator=generator, counts=(1, 2), within_canvas=True)
    plain = model.sample(400, generator=generator, counts=(1, 2))
    size = model.config.canvas_size
    for drawn, whole in ((inside, True), (plain, False)):
        windows = model.objects.windows(drawn.objects)[drawn.z_pres > 0]
        on_canvas = ((windows[:, :2] >= 0) & (windows[:, 2:] <= size)).all(1)
        assert bool(on_canvas.all()) == whole, float(on_canvas.float().mean())
    assert (inside.images.flatten(1).amax(1) > 0.5).all()  # no blank tile among n >= 1


def test_shipped_sprites_model_counts_and_segments_fresh_colour_pngs(tmp_path):
    # Scenes of a seed the model never saw, written as RGB PNGs by `data make` and read back
    # by `infer`; and the masks of the same scenes, each pixel's owner, against the true masks.
    import numpy as np
    import torch

    from airscene.data.training import images_to_tensor
    from airscene.masked_objects import adjusted_rand_index
    from airscene.registry import scene_family

    checkpoint = read_checkpoint("sprites")
    assert checkpoint.meta["object_model"] == "masked" and checkpoint.meta["git_revision"]
    assert checkpoint.config.model.inference == "grid" and checkpoint.config.model.channels == 3
    assert (pretrained_dir("sprites") / MODEL_FILE).stat().st_size < 20 * 2**20
    out = tmp_path / "png"
    argv = ["data", "make", "--kind", "sprites", "--seed", "2026", "--n", "100"]
    assert main([*argv, "--split", "test", "--format", "png", "--out", str(out)]) == 0
    truth = {r["file"]: int(r["count"]) for r in csv.DictReader(open(out / "test" / "counts.csv"))}
    results = airscene.load("sprites").infer(sorted((out / "test").glob("*.png")))
    correct = sum(r.count == truth[r.path.split("/")[-1]] for r in results)
    assert len(results) == 100 and correct >= 90  # 96.1% on 10,000 such scenes
    family = scene_family("sprites")
    scenes = family.load(
        DataConfig(**{**vars(checkpoint.config.data), "seed": 2026}), "test", n=100
    )
    model = airscene.load_model("sprites")[0].eval()
    with torch.no_grad():
        x = images_to_tensor(scenes.images)
        found = model.segmentation(x, model(x, sample=False)).numpy()
    scores = [
        adjusted_rand_index(true[true > 0], inferred[true > 0])
        for true, inferred in zip(scenes.segmentation, found, strict=True)
        if (true > 0).any()
    ]
    assert np.mean(scores) >= 0.95  # 0.990 on 10,000 such scenes
