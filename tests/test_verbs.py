"""Every verb with every shipped model, through the command line: ``infer``, ``show``, ``sample``
and ``eval`` of each model under ``airscene/pretrained/``. A model joins this matrix by being
shipped; none of these verbs may ask which kind of object model it holds."""

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from scipy.stats import binom

from airscene.checkpoint import read_checkpoint
from airscene.cli import main
from airscene.registry import scene_family

SHIPPED = sorted(
    path
    for path in Path(str(resources.files("airscene") / "pretrained")).iterdir()
    if (path / "checkpoint.json").is_file()
)


def test_the_package_ships_models():
    assert len(SHIPPED) >= 3, SHIPPED


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda path: path.name)
def shipped(request, tmp_path_factory):
    """A shipped model and a few PNG scenes of the data it was trained on."""
    model = request.param
    data = read_checkpoint(model).config.data
    family = scene_family(data.kind)
    images = tmp_path_factory.mktemp(model.name) / "scenes"
    family.export_png(family.load(data, "test", n=4), images, data)
    return model, images


def test_infer(shipped, tmp_path):
    model, images = shipped
    out = tmp_path / "found.jsonl"
    argv = ["infer", str(images), "--model", str(model), "--out", str(out), "--quiet"]
    assert main([*argv, "--overlay", str(tmp_path / "overlay")]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    truth = {
        r["file"]: r["count"]
        for r in json.loads((images / "ground_truth.json").read_text())["images"]
    }
    assert len(records) == len(truth) == 4
    for record in records:
        assert record["count"] == len(record["objects"])
        for found in record["objects"]:
            x0, y0, x1, y1 = found["box"]
            assert 0 <= x0 <= x1 and 0 <= y0 <= y1 and 0 < found["presence"] <= 1
    # The shipped models count their own kind of scene: fewer right than the model's measured
    # count accuracy makes 1% likely (binomial over the four) fails.
    right = sum(truth[Path(r["path"]).name] == r["count"] for r in records)
    accuracy = json.loads((model / "eval.json").read_text())["count_accuracy"]
    assert right >= binom.ppf(0.01, len(records), accuracy), records
    assert len(list((tmp_path / "overlay").glob("*.png"))) == 4


def test_show(shipped, tmp_path, capsys):
    model, _ = shipped
    out = tmp_path / "show.png"
    assert main(["show", "--model", str(model), "--n", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and f"wrote {out}" in capsys.readouterr().out


def test_sample(shipped, tmp_path, capsys):
    model, _ = shipped
    out = tmp_path / "sample.png"
    argv = ["sample", "--model", str(model), "--n", "6", "--counts", "1,2", "--out", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert out.stat().st_size > 0 and "1: " in said and "2: " in said, said


def test_eval(shipped, tmp_path, capsys):
    model, _ = shipped
    report = tmp_path / "eval.json"
    argv = ["eval", "--model", str(model), "--n", "12", "--iw-samples", "2", "--out", str(report)]
    assert main(argv) == 0
    result = json.loads(report.read_text())
    assert result["scenes"] == 12 and sum(map(sum, result["confusion"])) == 12
    assert result["count_accuracy"] >= 0.75, result


def test_verbs_that_run_a_model_flush_denormal_floats_first(monkeypatch, capsys):
    """Set before torch starts its threads, the flush reaches them all; verbs that run no
    model (models, data) leave torch unimported and the process as it was."""
    import torch

    import airscene
    from airscene import cli

    called = []
    monkeypatch.setattr(cli, "flush_denormals", lambda: called.append(True))
    assert cli.main(["models"]) == 0 and called == []
    listed = subprocess.run(  # a fresh process: this one imported torch long ago
        [
            sys.executable,
            "-c",
            "import sys; from airscene.cli import main; main(['models']); "
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.splitlines()[-1] == "False", listed.stdout
    assert cli.main(["eval", "--model", "no-such-model"]) == 2 and called == [True]
    capsys.readouterr()
    monkeypatch.undo()
    torch.set_flush_denormal(False)  # as a fresh process has it (earlier tests ran verbs)
    denormal = torch.tensor([1e-40])
    assert (denormal * 1.0).item() != 0.0
    try:
        assert airscene.flush_denormals is cli.flush_denormals  # the verbs' own call
        airscene.flush_denormals()
        assert (denormal * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
