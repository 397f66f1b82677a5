"""The ``airscene`` command line: data make / data show round trips and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import airscene
from airscene.cli import main
from airscene.config import DataConfig
from airscene.data.scenes import cache_dir, generate_scenes, load_npz, scene_rng


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("airscene: error: "), err
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"airscene {airscene.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", airscene.__version__)


def test_help_lists_verbs_and_config_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "data" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "make", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--counts",
        "--count-probs",
        "--scale-range",
        "--overlap",
        "--mnist-dir",
        "--force",
    ):
        assert flag in out


def test_missing_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "airscene: error:" in err[0] and "airscene --help" in err[0]


def test_data_make_fills_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "make", "--n", "200", "--counts", "0,1,2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    for line, split in zip(out, ("train", "test"), strict=True):
        match = re.match(
            rf"{split}: 200 scenes \(0: (\d+), 1: (\d+), 2: (\d+)\) in .*s -> (.*)$", line
        )
        assert match, line
        assert sum(int(g) for g in match.groups()[:3]) == 200
        assert Path(match.group(4)) == cache_dir()
        (cached,) = cache_dir().glob(f"{split}-200-*.npz")
        scenes = load_npz(cached)
        config = DataConfig(counts=(0, 1, 2))
        expected = generate_scenes(config, split, 200, scene_rng(config, split))
        np.testing.assert_array_equal(scenes.images, expected.images)
        assert np.bincount(scenes.counts, minlength=3).tolist() == [
            int(g) for g in match.groups()[:3]
        ]


def test_data_make_png_then_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pngs"
    args = ["data", "make", "--format", "png", "--n", "20", "--split", "test", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert not (out / "train").exists()
    files = sorted(p.name for p in (out / "test").iterdir())
    assert files == [f"{i:05d}.png" for i in range(20)] + ["counts.csv", "ground_truth.json"]
    with Image.open(out / "test" / "00003.png") as image:
        assert image.mode == "L" and image.size == (50, 50)
    truth = json.loads((out / "test" / "ground_truth.json").read_text())
    assert len(truth["images"]) == 20 and truth["config"]["counts"] == [0, 1, 2]

    before = snapshot(out)
    # Same run again, and even with another seed and --force: nothing is overwritten.
    for extra in ([], ["--seed", "5"], ["--seed", "5", "--force"]):
        assert main(args + extra) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{out / 'test'}: exists and is not empty" in line
        assert snapshot(out) == before


def test_data_make_png_default_out_is_multi_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "make", "--format", "png", "--n", "5"]) == 0
    for split in ("train", "test"):
        assert len(list((tmp_path / "multi-mnist" / split).glob("*.png"))) == 5
    assert "multi-mnist" in capsys.readouterr().out


def test_data_make_npz_then_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "make", "--format", "npz", "--n", "60", "--out", "arrays"]) == 0
    capsys.readouterr()
    for split in ("train", "test"):
        scenes = load_npz(tmp_path / "arrays" / f"{split}.npz")
        assert len(scenes) == 60
    assert (
        main(["data", "show", "--input", "arrays/train.npz", "--num", "9", "--out", "fig.png"]) == 0
    )
    assert "wrote fig.png (9 scenes)" in capsys.readouterr().out
    with Image.open(tmp_path / "fig.png") as figure:
        assert figure.format == "PNG"
        width, height = figure.size
        assert width > 100 and height > 100
        assert np.asarray(figure.convert("L")).std() > 0  # not a blank image


def test_data_show_without_input_uses_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "grid.png"
    code = main(
        ["data", "show", "--split", "test", "--n", "30", "--num", "4", "--out", str(target)]
    )
    assert code == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(cache_dir().glob("test-30-*.npz"))) == 1


def test_data_show_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.npz"
    assert main(["data", "show", "--input", str(missing)]) == 2
    assert f"{missing}: no such scenes file" in one_error_line(capsys.readouterr().err)


def test_force_replaces_npz_and_its_absence_protects_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "arrays"
    base = ["data", "make", "--n", "30", "--split", "train", "--out", str(out)]
    assert main(base) == 0
    first = (out / "train.npz").read_bytes()
    capsys.readouterr()

    # Without --force: exit 2, one line naming the file, file untouched.
    before = snapshot(out)
    assert main(base + ["--seed", "7"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{out / 'train.npz'}: already exists; pass --force" in line
    assert snapshot(out) == before

    # With --force: replaced by the new scenes.
    assert main(base + ["--seed", "7", "--force"]) == 0
    replaced = load_npz(out / "train.npz")
    config = DataConfig(seed=7)
    expected = generate_scenes(config, "train", 30, scene_rng(config, "train"))
    np.testing.assert_array_equal(replaced.images, expected.images)
    assert (out / "train.npz").read_bytes() != first

    # --split both refuses when either file exists, before writing anything.
    before = snapshot(out)
    assert main(["data", "make", "--n", "30", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err)
    assert snapshot(out) == before and not (out / "test.npz").exists()


@pytest.mark.parametrize("fmt", ["npz", "png"])
def test_out_that_is_a_file_is_a_one_line_error(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    code = main(
        ["data", "make", "--n", "5", "--split", "test", "--format", fmt, "--out", str(a_file)]
    )
    assert code == 2
    assert f"{a_file}: exists and is not a directory" in one_error_line(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--counts", "0,0"], r"counts repeat a value"),
        (["--counts", "0,-1"], r"counts must be >= 0"),
        (["--count-probs", "0.5,0.1,0.1"], r"count_probs must sum to 1"),
        (["--count-probs", "0.5,0.5"], r"count_probs has 2 entries for 3 counts"),
        (["--scale-range", "2,1"], r"scale_range must satisfy 0 < MIN <= MAX"),
        (["--scale-range", "0.5,2"], r"makes digits larger than the 50px canvas"),
        (["--canvas-size", "4"], r"canvas_size must lie in 8\.\.1024"),
        (["--canvas-size", "20"], r"20px canvas cannot hold a 28x28 MNIST digit"),
        (["--counts", "6"], r"could not place 6 digits overlapping at most 0 "),
    ],
)
def test_bad_config_values_are_one_line_errors(
    tmp_path: Path, flags: list[str], pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["data", "make", "--n", "3", "--split", "test", "--out", str(out), *flags])
    assert code == 2
    captured = capsys.readouterr()
    assert re.search(pattern, one_error_line(captured.err)), captured.err
    assert "Traceback" not in captured.err
    assert not (out / "test.npz").exists()


def test_unparseable_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "make", "--counts", "a,b"])
    assert exit_info.value.code == 2
    assert "expected a comma-separated list" in capsys.readouterr().err


def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airscene", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"airscene {airscene.__version__}"
