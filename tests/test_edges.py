"""The edges a new user met, each as it was reported: one line on stderr and exit 2, with
nothing written, or the right behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from airscene.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    said = capsys.readouterr()
    return code, said.out, said.err


def one_line_refusal(argv: list[str], capsys, *words: str) -> str:
    code, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (argv, code, err)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "digit.png"
    Image.new("L", (50, 50)).save(path)
    return path


def test_sample_of_the_3d_model_draws_3d_scenes(tmp_path, capsys):
    out = tmp_path / "p.png"
    code, said, _ = run(["sample", "--model", "scenes3d", "--n", "4", "--out", str(out)], capsys)
    assert code == 0 and out.stat().st_size > 0 and f"wrote {out}" in said


@pytest.mark.parametrize("size", ["0", "-3"])
def test_infer_batch_size_must_be_positive(tmp_path, image, capsys, size):
    out = tmp_path / "o.jsonl"
    argv = ["infer", str(image), "--batch-size", size, "--out", str(out)]
    one_line_refusal(argv, capsys, "--batch-size")
    assert not out.exists()


def test_infer_on_a_gpu_this_torch_has_not(tmp_path, image, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "o.jsonl"
    one_line_refusal(["infer", str(image), "--device", "cuda", "--out", str(out)], capsys, "CUDA")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--model", "default", "--n", "0"],
        ["sample", "--model", "default", "--n", "-2"],
        ["show", "--model", "default", "--n", "0"],
        ["show", "--model", "default", "--n", "100000"],
        ["data", "show", "--num", "-1"],
        ["data", "show", "--num", "100000"],
        ["eval", "--model", "default", "--n", "0"],
        ["eval", "--model", "default", "--iw-samples", "-1"],
    ],
)
def test_sizes_out_of_range_are_refused(argv, capsys):
    one_line_refusal(argv, capsys, "error")


@pytest.mark.parametrize(
    "out, words",
    [("x.txt", "PNG"), ("s5", "PNG"), ("/nonexistent/dir/p.png", "no directory")],
)
def test_figure_outputs_are_png_files_in_existing_folders(out, words, capsys):
    one_line_refusal(["sample", "--model", "default", "--out", out], capsys, words)
    one_line_refusal(["data", "show", "--out", out], capsys, words)


def test_nothing_is_created_for_a_missing_folder(capsys):
    one_line_refusal(["sample", "--model", "default", "--out", "/nonexistent/dir/p.png"], capsys)
    assert not __import__("pathlib").Path("/nonexistent").exists()


def test_render3d_refuses_a_folder_of_earlier_renders_unless_forced(tmp_path, capsys):
    scene = {"objects": [{"shape": "cube", "position": [0, 0], "rotation_deg": 10}]}
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    two.write_text(json.dumps({"scenes": [scene, scene]}))
    one.write_text(json.dumps({"scenes": [scene]}))
    out = tmp_path / "renders"
    assert run(["render3d", str(two), "--out", str(out)], capsys)[0] == 0
    one_line_refusal(["render3d", str(one), "--out", str(out)], capsys, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    assert run(["render3d", str(one), "--out", str(out), "--force"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png"]  # no stale render left


def test_train_needs_a_step(tmp_path, capsys):
    one_line_refusal(["train", "--steps", "0", "--run-dir", str(tmp_path / "r")], capsys, "steps")
    assert not (tmp_path / "r").exists()


def test_a_misspelt_model_name_suggests_the_nearest(capsys):
    line = one_line_refusal(["eval", "--model", "conv-dar"], capsys)
    assert "did you mean 'conv-dair'" in line and "'scenes3d'" in line


def test_models_lists_the_shipped_models(capsys):
    code, said, _ = run(["models"], capsys)
    names = {"default", "conv-dair", "scenes3d", "many-digits", "cluttered-digits", "sprites"}
    assert code == 0 and all(name in said for name in names)
    assert "AIR with grid inference, glimpse objects, on scattered-digits" in said
    code, said, _ = run(["models", "--json"], capsys)
    rows = json.loads(said)
    assert {row["name"] for row in rows} == names
    assert all(0.85 < row["figures"]["count_accuracy"] <= 1 for row in rows)


def test_data_show_draws_3d_scenes_and_refuses_an_npz_of_them(tmp_path, capsys):
    out = tmp_path / "s.png"
    argv = ["data", "show", "--kind", "scenes3d", "--split", "test", "--n", "6", "--num", "4"]
    assert run([*argv, "--out", str(out)], capsys)[0] == 0 and out.stat().st_size > 0
    one_line_refusal([*argv, "--input", str(tmp_path / "x.npz"), "--out", str(out)], capsys)


def test_train_at_another_canvas_size(tmp_path, capsys):
    # --canvas-size sets the model's canvas and the data's alike.
    run_dir = tmp_path / "r"
    argv = ["train", "--canvas-size", "40", "--run-dir", str(run_dir), "--steps", "1",
            "--batch-size", "4", "--n-train", "8", "--n-test", "4", "--eval-every", "0",
            "--lstm-size", "8", "--predictor-hidden", "8", "--baseline-lstm-size", "8",
            "--encoder-hidden", "8", "--decoder-hidden", "8", "--z-what-dim", "2"]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["model"]["canvas_size"] == config["data"]["canvas_size"] == 40


def test_usage_errors_are_one_line(capsys):
    one_line_refusal(["infer"], capsys, "airscene infer: error")
    one_line_refusal(["train", "--lstm-size", "nan"], capsys, "--lstm-size")
    one_line_refusal(["train", "--learning-rate", "nan"], capsys, "finite")


def test_eval_says_what_it_measured(capsys):
    code, said, _ = run(["eval", "--model", "default", "--n", "30", "--quiet"], capsys)
    assert code == 0 and "count accuracy" in said and "true \\ found" in said
    code, said, _ = run(["eval", "--model", "scenes3d", "--n", "12", "--quiet"], capsys)
    assert code == 0 and "shape accuracy" in said and "rotation error" in said
    code, said, _ = run(["eval", "--model", "default", "--n", "10", "--json", "--quiet"], capsys)
    assert json.loads(said)["scenes"] == 10


def digits_scene() -> np.ndarray:
    """A fresh 2-digit Multi-MNIST test scene, uint8 (50, 50)."""
    from airscene.config import DataConfig
    from airscene.data.scenes import load_scenes

    scenes = load_scenes(DataConfig(counts=(2,), seed=7), "test", n=4)
    return scenes.images[0]


def test_transparent_and_float_images_are_read_as_they_look(tmp_path):

    from airscene.pipeline import load

    ink = digits_scene()
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = ink  # black strokes, transparent elsewhere: over black they would vanish
    Image.fromarray(rgba, "RGBA").save(tmp_path / "strokes.png")
    Image.fromarray(ink.astype(np.float32) / 255, "F").save(tmp_path / "scene.tiff")
    Image.fromarray(np.zeros((50, 50, 4), np.uint8), "RGBA").save(tmp_path / "empty.png")
    pipeline = load("default")
    strokes, tiff, empty = pipeline.infer(
        [tmp_path / "strokes.png", tmp_path / "scene.tiff", tmp_path / "empty.png"]
    )
    assert strokes.count == 2 and strokes.inverted and strokes.warning is None
    assert tiff.count == 2 and tiff.warning is None
    assert empty.error is not None and "transparent everywhere" in empty.error


def test_confident_wrong_answers_are_flagged(tmp_path, capsys):

    ink = digits_scene().astype(np.float32) / 255
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.5, 1.0, 50, dtype=np.float32)[None, :]
    gradient = np.clip(ramp + rng.normal(0, 0.1, (50, 50)), 0, 1) * (1 - ink)
    Image.fromarray((gradient * 255).astype(np.uint8)).save(tmp_path / "gradient.png")
    Image.fromarray(digits_scene()).save(tmp_path / "clean.png")
    out = tmp_path / "found.jsonl"
    argv = ["infer", str(tmp_path), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = {json.loads(line)["path"].split("/")[-1]: json.loads(line) for line in out.open()}
    assert "held-out" in records["gradient.png"]["warning"]  # dark digits on a noisy gradient
    assert "warning" not in records["clean.png"] and records["clean.png"]["residual"] < 0.5
    assert "1 of 2 images flagged" in capsys.readouterr().err
    # The same in colour: the grey model says in one line that it reads grey images; the
    # other images are still read, and the exit status is 2.
    colour = np.clip(ramp[..., None] * [1.0, 0.7, 0.4], 0, 1) * (1 - ink[..., None])
    Image.fromarray((colour * 255).astype(np.uint8), "RGB").save(tmp_path / "colour.png")
    assert main([*argv, "--force"]) == 2
    records = {json.loads(line)["path"].split("/")[-1]: json.loads(line) for line in out.open()}
    assert "a colour image, and this model reads grey images" in records["colour.png"]["error"]
    assert records["clean.png"]["count"] == 2
    assert "1 of 3 images could not be read" in capsys.readouterr().err
    # The 3D model on a Multi-MNIST scene is flagged too.
    from airscene.pipeline import load

    (found,) = load("scenes3d").infer([tmp_path / "clean.png"])
    assert found.warning is not None
