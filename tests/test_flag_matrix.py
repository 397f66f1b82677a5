"""Every verb's every flag at its edges: each numeric flag given 0, a negative, NaN and a huge
value, each path flag a missing, an unwritable and an existing target. Every invocation must end
in success or in one line on stderr and exit code 2: never a traceback, never a run that goes
on for minutes. Training and the experiments are replaced by stubs that check what they are
given (the parser and the configs are what is exercised); the other verbs run for real on the
shipped model with small sizes."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from airscene.cli import build_parser, main

NUMBERS = ("0", "-1", "nan", "1000000000000")
# Flags that name files or folders, and so get paths rather than numbers.
PATH_FLAGS = {
    "--out", "--run-dir", "--resume", "--overlay", "--input", "--data", "--mnist-dir",
    "--data-counts", "--curves-from", "--model",
}  # fmt: skip
# Flags whose values are names, switches or lists of names: not numbers, not paths.
OTHER_FLAGS = {"--help", "--version", "--reuse"}
UNWRITABLE = "/proc/airscene-test/out"  # no one may create files under /proc, not even root


def verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(verb words, its parser) for every verb and sub-verb."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from verbs(sub, (*prefix, name))
            return
    yield prefix, parser


def option_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.nargs != 0 and a.option_strings[0] not in OTHER_FLAGS
    ]


def numeric(action: argparse.Action) -> bool:
    if action.option_strings[0] in PATH_FLAGS or action.choices:
        return False
    parse = action.type or str
    try:
        parse("1")
        parse("x1")
    except (ValueError, argparse.ArgumentTypeError, TypeError):
        return True  # takes numbers and refuses other text
    return False


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with what the verbs read: a PNG, 3D scene descriptions, an existing file and a
    non-empty folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("matrix")
    Image.new("L", (50, 50)).save(root / "image.png")
    scenes = {"scenes": [{"objects": [{"shape": "cube", "position": [0, 0], "rotation_deg": 0}]}]}
    (root / "scenes.json").write_text(json.dumps(scenes))
    (root / "existing.png").write_bytes(b"")
    (root / "full").mkdir()
    (root / "full" / "a.txt").write_text("x")
    return root


def base_argv(words: tuple[str, ...], root: Path, case: str) -> list[str]:
    """The verb with small, valid settings, its outputs in a folder of their own (``case``)."""
    out = root / "out" / case
    out.mkdir(parents=True, exist_ok=True)
    bases = {
        ("data", "make"): ["--n", "3", "--split", "test"],
        ("data", "show"): [
            "--n",
            "3",
            "--num",
            "2",
            "--split",
            "test",
            "--out",
            str(out / "s.png"),
        ],
        ("train",): ["--run-dir", str(out / "run")],
        ("eval",): ["--model", "default", "--n", "4", "--iw-samples", "0", "--quiet"],
        ("sample",): ["--model", "default", "--n", "2", "--out", str(out / "p.png")],
        ("show",): ["--model", "default", "--n", "2", "--out", str(out / "i.png")],
        ("infer",): [str(root / "image.png"), "--quiet", "--out", str(out / "o.jsonl")],
        ("render3d",): [str(root / "scenes.json"), "--out", str(out / "renders")],
    }
    if words[0] == "experiment":
        return [*words, "--quick", "--out", str(out / "x")]
    return [*words, *bases[words]]


@pytest.fixture
def stubs(monkeypatch):
    """Training and the experiments, replaced by stubs that check their inputs and return at
    once: a resumed run's checkpoint is still read, so a bad one is still refused."""
    from airscene.experiments import (
        clutter,
        count,
        downstream,
        generalisation,
        many_objects,
        scenes3d,
    )

    training = importlib.import_module("airscene.train")  # the module, not airscene.train()

    def train(config, run_dir, overwrite=False, command=None, resume=False, **_):
        config, _ = training._run_config(config, Path(run_dir), resume)
        return SimpleNamespace(final_metrics={}, steps=config.train.steps, train_seconds=0.0)

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(count, "run_count", lambda out, **_: {"runs": {}})
    monkeypatch.setattr(downstream, "run_downstream", lambda out, **_: {"results": {}})
    monkeypatch.setattr(generalisation, "run_generalisation", lambda out, **_: {"results": {}})
    monkeypatch.setattr(scenes3d, "run_scenes3d", lambda out, **_: {"results": {}})
    monkeypatch.setattr(many_objects, "run_many_objects", lambda out, **_: {"schemes": {}})
    monkeypatch.setattr(clutter, "run_clutter", lambda out, **_: {"results": {}})


def cases(root: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every invocation of the matrix."""
    found = []
    for words, parser in verbs(build_parser()):
        for action in option_flags(parser):
            flag = action.option_strings[0]
            if flag in PATH_FLAGS:
                values = {
                    "missing": str(root / "no-such-folder" / "x.png"),
                    "unwritable": UNWRITABLE,
                    "existing-file": str(root / "existing.png"),
                    "existing-folder": str(root / "full"),
                }
            elif numeric(action):
                values = {value: value for value in NUMBERS}
            else:
                continue
            for label, value in values.items():
                name = f"{' '.join(words)} {flag} {label}"
                found.append((name, [*base_argv(words, root, name.replace(" ", "_")), flag, value]))
    return found


def test_every_flag_at_its_edges_fails_in_one_line_or_succeeds(place, stubs, capsys):
    failures = []
    tried = cases(place)
    for name, argv in tried:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own refusals
            code = stop.code
        except Exception as error:  # a traceback: the defect this test is for
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        said = capsys.readouterr()
        lines = [line for line in said.err.splitlines() if line.strip()]
        if code == 2 and len(lines) != 1:
            failures.append(f"{name}: exit 2 with {len(lines)} lines: {said.err!r}")
        elif code not in (0, 2):
            failures.append(f"{name}: exit {code}: {said.err!r}")
    assert len(tried) > 400, len(tried)
    assert not failures, "\n".join(failures)
