"""The ``airscene`` command: verbs as thin layers over the public Python API.

Flags are derived from the config dataclasses (``airscene.flags``). Whatever differs between
kinds of object or of scene is asked of the object model or the scene family
(``airscene.registry``). Errors the user can fix (``AirsceneError``) end in one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from airscene.config import (
    OWN_DATA_FIELDS,
    DataConfig,
    DownstreamSettings,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from airscene.errors import AirsceneError, TrainingInterrupted
from airscene.flags import (
    ArgumentParser,
    add_config_arguments,
    config_from_args,
    given_fields,
    value_parser,
    whole_number,
)
from airscene.floats import flush_denormals
from airscene.shipped import NAMES

EXIT_USAGE = 2


# ---------------------------------------------------------------------------------------------
# Verbs


def _scene_config(args: argparse.Namespace):
    """The scene family ``--kind`` names and the data config of the flags, from the family's own
    defaults; a flag that does not shape that family's scenes is refused."""
    from airscene.registry import scene_family

    family = scene_family(args.kind or DataConfig.kind)
    if family.fields is not None:
        other = [n for n in given_fields(DataConfig, args) if n not in family.fields]
        if other:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in other)
            raise AirsceneError(f"{flags}: not a setting of --kind {family.kind}")
    return family, config_from_args(DataConfig, args, base=family.preset().data)


def _data_make(args: argparse.Namespace) -> int:
    from airscene.data.scenes import cache_dir

    family, config = _scene_config(args)
    if args.format == "npz" and args.out and not family.writes_npz:
        raise AirsceneError(
            f"--kind {family.kind} writes --format png to --out (npz stays in the cache)"
        )
    splits = ("train", "test") if args.split == "both" else (args.split,)
    out = Path(args.out) if args.out else (Path(family.kind) if args.format == "png" else None)
    if out is not None and out.exists() and not out.is_dir():
        raise AirsceneError(f"{out}: exists and is not a directory; choose another --out")
    if out is not None and args.format == "npz":
        existing = [out / f"{split}.npz" for split in splits if (out / f"{split}.npz").exists()]
        if existing and not args.force:
            raise AirsceneError(f"{existing[0]}: already exists; pass --force to replace it")
    if out is not None and args.format == "png":
        for split in splits:
            target = out / split
            if target.exists() and any(target.iterdir()):
                raise AirsceneError(f"{target}: exists and is not empty; choose another --out")
    for split in splits:
        started = time.perf_counter()
        scenes = family.load(config, split, n=args.n)
        seconds = time.perf_counter() - started
        histogram = np.bincount(scenes.counts, minlength=config.max_count + 1)
        summary = ", ".join(f"{k}: {int(histogram[k])}" for k in config.counts)
        if args.format == "png":
            where = family.export_png(scenes, out / split, config)
        elif out is not None:
            where = out / f"{split}.npz"
            family.save_npz(scenes, where, config)
        else:
            where = cache_dir()
        print(f"{split}: {len(scenes)} scenes ({summary}) in {seconds:.1f}s -> {where}")
    return 0


def _data_show(args: argparse.Namespace) -> int:
    from airscene.data.scenes import load_npz
    from airscene.visualise import scene_grid

    family, config = _scene_config(args)
    if args.input and not family.writes_npz:
        raise AirsceneError(f"--input reads .npz files of data make; --kind {family.kind} has none")
    scenes = load_npz(args.input) if args.input else family.load(config, args.split, n=args.n)
    shown = scenes[: args.num]
    boxes = [
        [tuple(b) for b in s_boxes[:count]]
        for s_boxes, count in zip(shown.boxes, shown.counts, strict=True)
    ]
    path = scene_grid(
        shown.images, args.out, boxes=boxes, captions=family.captions(shown), title=family.title
    )
    print(f"wrote {path} ({len(shown)} scenes)")
    return 0


# Flags shared by two configs: the model's canvas size sets the data's, the data seed is --data-seed.
_DATA_RENAME = {"seed": "data_seed", "data_path": "data"}


def _train(args: argparse.Namespace) -> int:
    from airscene.distributed import launched_by_torchrun, main_process
    from airscene.train import train

    command = ["airscene", *sys.argv[1:]]
    # Under torchrun every process runs this verb; rank 0 alone speaks.
    say = print if main_process() else (lambda *a, **k: None)
    if args.resume:
        given = [
            *given_fields(ModelConfig, args),
            *[n for n in given_fields(TrainConfig, args) if n != "steps"],
            *given_fields(DataConfig, args, rename=_DATA_RENAME),
        ]
        if given or args.run_dir or args.force:
            extra = ", ".join(f"--{n.replace('_', '-')}" for n in given) or "--run-dir/--force"
            raise AirsceneError(
                f"--resume continues a run with its own config (--steps may extend it); drop {extra}"
            )
        say(f"resuming {args.resume}", file=sys.stderr)
        result = train(None, args.resume, resume=True, command=command, steps=args.steps)
    else:
        preset = _train_preset(args)
        model = config_from_args(ModelConfig, args, base=preset.model)
        data = config_from_args(DataConfig, args, base=preset.data, rename=_DATA_RENAME)
        base = preset.train if args.steps is None else preset.train.over_steps(args.steps)
        train_config = config_from_args(TrainConfig, args, base=base)
        config = RunConfig(data=data, model=model, train=train_config)
        if launched_by_torchrun() and not args.run_dir:
            raise AirsceneError(
                "under torchrun, give --run-dir: every process must name the same one"
            )
        run_dir = Path(args.run_dir or time.strftime("runs/air-%Y%m%d-%H%M%S"))
        say(
            f"training {_scheme_name(model)} for {config.train.steps} steps -> {run_dir}",
            file=sys.stderr,
        )
        result = train(config, run_dir, overwrite=args.force, command=command)
    summary = {k: v for k, v in result.final_metrics.items() if v is not None}
    say(f"done: {result.steps} steps in {result.train_seconds:.0f}s; {summary}")
    return 0


def _scheme_name(model: ModelConfig) -> str:
    """What a run trains, in the words of the papers: AIR, DAIR, or the grid scheme."""
    if model.inference == "grid":
        return "AIR with grid inference"
    return "DAIR" if model.dair else "AIR"


def _train_preset(args: argparse.Namespace) -> RunConfig:
    """The run ``train`` starts from: the defaults of the scene family ``--kind`` names, else of
    the one ``--objects``' object model trains on (``train --kind scenes3d``: the 3D
    experiment's recipe), adapted to the ``--inference`` scheme's recipe if one is named; any
    flag still overrides."""
    from airscene.registry import inference_scheme, object_model_class, scene_family

    kind = args.kind
    if kind is None and args.objects is not None and args.data is None:
        kind = object_model_class(args.objects).default_data
    preset = scene_family(kind or DataConfig.kind).preset()
    if args.inference is None:
        return preset
    objects = args.objects or preset.model.objects.kind
    return inference_scheme(args.inference, objects).recipe(preset)


def _eval(args: argparse.Namespace) -> int:
    from airscene.checkpoint import load_model
    from airscene.data.scenes import Scenes
    from airscene.registry import scene_family

    model, checkpoint = load_model(args.model)
    data = config_from_args(DataConfig, args, base=checkpoint.config.data, rename=_DATA_RENAME)
    if args.data is not None:  # the user's own images: all of them, counts if given
        from airscene.data.training import training_data

        own = dataclasses.replace(
            checkpoint.config, data=dataclasses.replace(data, holdout_fraction=0.0)
        )
        images, counts, _ = training_data(own)
        scenes = Scenes.unlabelled(images, counts)
    else:
        scenes = scene_family(data.kind).load(data, "test", n=args.n)
    result = model.objects.evaluate(
        model,
        scenes,
        generator=torch_generator(args.seed),
        iw_samples=args.iw_samples,
        progress=not args.quiet,
    )
    report = {"model": str(checkpoint.path), "step": checkpoint.step, **result.to_dict()}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(f"{checkpoint.path} (step {checkpoint.step:,})\n{result.summary()}")
    return 0


def torch_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _sample(args: argparse.Namespace) -> int:
    from airscene.checkpoint import load_model
    from airscene.visualise import scene_grid

    model, checkpoint = load_model(args.model)
    if args.counts is None:  # the training data's count distribution
        counts, probs = checkpoint.config.data.counts, checkpoint.config.data.probabilities
    else:
        counts, probs = args.counts, args.count_probs
    if counts and max(counts) > model.most_objects:
        raise AirsceneError(
            f"--counts {','.join(map(str, counts))}: this model draws at most "
            f"{model.most_objects} objects on its canvas"
        )
    try:
        drawn = model.sample(
            args.n,
            generator=torch_generator(args.seed),
            counts=counts,
            count_probs=probs,
            within_canvas=True,
        )
    except ValueError as error:
        raise AirsceneError(str(error)) from None
    boxes = model.objects.figure_boxes(drawn.objects).cpu().numpy()
    present = drawn.z_pres.numpy() > 0
    path = scene_grid(
        drawn.images.numpy(),
        args.out,
        boxes=[[tuple(b) for b in boxes[i][present[i]]] for i in range(args.n)],
        captions=[f"n={int(c)}" for c in drawn.count],
        title="scenes drawn from the prior (positions truncated to the canvas)",
    )
    drawn_counts = [int(c) for c in drawn.count]
    histogram = ", ".join(f"{c}: {drawn_counts.count(c)}" for c in sorted(set(counts)))
    print(f"wrote {path} (scenes by count: {histogram})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from airscene.checkpoint import load_model
    from airscene.data.training import images_to_tensor
    from airscene.registry import scene_family
    from airscene.visualise import show_inference

    model, checkpoint = load_model(args.model)
    data = config_from_args(DataConfig, args, base=checkpoint.config.data, rename=_DATA_RENAME)
    scenes = scene_family(data.kind).load(data, "test")[: args.n]
    path = show_inference(model, images_to_tensor(scenes.images), args.out, scenes.counts)
    print(f"wrote {path}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    from airscene.data.images import find_images, read_image
    from airscene.pipeline import load
    from airscene.visualise import draw_overlay

    paths = find_images(args.paths)
    out_path = args.out
    if out_path is not None and out_path.exists() and not args.force:
        raise AirsceneError(f"{out_path}: already exists; pass --force to replace it")
    overlay = Path(args.overlay) if args.overlay else None
    if overlay is not None:
        if overlay.exists() and (not overlay.is_dir() or any(overlay.iterdir())) and not args.force:
            raise AirsceneError(f"{overlay}: exists and is not an empty directory; pass --force")
        if not overlay.parent.is_dir():
            raise AirsceneError(f"{overlay}: no directory {str(overlay.parent)!r}")
    pipeline = load(args.model, args.device)  # a bad model or device: nothing written yet
    if overlay is not None:
        overlay.mkdir(exist_ok=True)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    width = max(5, len(str(len(paths))))
    failed = flagged = 0
    stream = open(out_path, "w") if out_path is not None else sys.stdout
    try:
        for index, result in enumerate(
            pipeline.iter_infer(
                paths, batch_size=args.batch_size, invert=invert, progress=not args.quiet
            )
        ):
            stream.write(json.dumps(result.to_record()) + "\n")
            flagged += result.warning is not None
            if result.error is not None:
                failed += 1
            elif overlay is not None:
                image = read_image(result.path, pipeline.model.config.channels)
                name = f"{index:0{width}d}-{Path(result.path).stem}.png"
                draw_overlay(
                    1.0 - image if result.inverted else image,
                    [o.box for o in result.objects],
                    overlay / name,
                )
    finally:
        if stream is not sys.stdout:
            stream.close()
    flags = f"{flagged} of {len(paths)} images flagged: their answer may be wrong (see their "
    flags += "records' warning)"
    if failed:
        also = f"; {flags}" if flagged else ""
        print(
            f"airscene: error: {failed} of {len(paths)} images could not be read (see their "
            f"records){also}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if flagged:
        print(f"airscene: {flags}", file=sys.stderr)
    return 0


def _experiment_downstream(args: argparse.Namespace) -> int:
    from airscene.experiments.downstream import MODEL, REPRESENTATIONS, run_downstream

    base = DownstreamSettings.quick() if args.quick else DownstreamSettings()
    settings = config_from_args(DownstreamSettings, args, base=base)  # bad values: exit 2
    out = _experiment_out(args)
    model = args.model if args.model is not None else MODEL
    summary = run_downstream(out, quick=args.quick, seed=args.seed, model=model, settings=settings)
    for task, rows in summary["results"].items():
        largest = max(int(k) for k in rows if k.isdigit())
        cells = ", ".join(
            f"{name} {100 * rows[str(largest)][name]['accuracy']:.1f}%" for name in REPRESENTATIONS
        )
        print(f"{task} with {largest:,} labels: {cells}")
    print(f"wrote {out / 'report.md'}")
    return 0


def _experiment_count(args: argparse.Namespace) -> int:
    from airscene.experiments.count import run_count

    out = _experiment_out(args)
    summary = run_count(out, quick=args.quick, seed=args.seed, curves_from=args.curves_from)
    for name, run in summary["runs"].items():
        print(f"{name}: final count accuracy {100 * run['final_count_accuracy']:.2f}%")
    print(f"wrote {out / 'report.md'}")
    return 0


def _experiment_generalisation(args: argparse.Namespace) -> int:
    from airscene.experiments.generalisation import TASKS, run_generalisation

    out = _experiment_out(args)
    reuse = {}
    for item in args.reuse or []:
        key, _, path = item.partition("=")
        valid = [f"{t}/{m}" for t in TASKS for m in ("AIR", "DAIR")]
        model, _, seed = key.rpartition("/") if key.count("/") == 2 else (key, "", "0")
        if model not in valid or not seed.isdigit() or not path:
            raise AirsceneError(
                f"--reuse {item!r}: expected KEY=RUN_DIR with KEY one of {', '.join(valid)}, "
                "optionally followed by /SEED"
            )
        reuse[key] = path
    summary = run_generalisation(out, quick=args.quick, seeds=args.seeds, reuse=reuse)
    for key, result in summary["results"].items():
        accuracy = result["count_accuracy"]
        print(
            f"{key}: {100 * accuracy['mean']:.1f}% on {result['test_counts']} digits "
            f"(mean of {accuracy['seeds']} seeds, {100 * accuracy['min']:.1f}-{100 * accuracy['max']:.1f}%)"
        )
    print(f"wrote {out / 'report.md'}")
    return 0


def _experiment_scenes3d(args: argparse.Namespace) -> int:
    from airscene.experiments.scenes3d import result_line, run_scenes3d

    out = _experiment_out(args)
    summary = run_scenes3d(out, quick=args.quick, seed=args.seed)
    for name, result in summary["results"].items():
        print(result_line(name, result["held_out"]))
    print(f"wrote {out / 'report.md'}")
    return 0


def _experiment_clutter(args: argparse.Namespace) -> int:
    from airscene.experiments.clutter import ARMS, KINDS, arms_of, run_clutter

    out = _experiment_out(args)
    keys = [f"{kind}/{arm}" for kind in KINDS for arm in arms_of(kind, tuple(ARMS))]
    reuse = _reused_runs(args.reuse, keys, "KIND/MODEL")
    summary = run_clutter(out, quick=args.quick, seed=args.seed, reuse=reuse)
    for key, row in summary["results"].items():
        print(f"{key}: count {100 * row['count_accuracy']:.1f}%")
    print(f"wrote {out / 'report.md'}")
    return 0


def _experiment_many_objects(args: argparse.Namespace) -> int:
    from airscene.experiments.many_objects import SCHEMES, run_many_objects

    out = _experiment_out(args)
    reuse = _reused_runs(args.reuse, SCHEMES, "SCHEME")
    summary = run_many_objects(out, quick=args.quick, seed=args.seed, reuse=reuse)
    for scheme, result in summary["schemes"].items():
        rows = result["by_count"]
        print(f"{scheme}: count " + ", ".join(
            f"n={n} {100 * row['count_accuracy']:.1f}%" for n, row in rows.items()
        ))  # fmt: skip
    print(f"wrote {out / 'report.md'}")
    return 0


def _reused_runs(items: list[str] | None, keys, name: str) -> dict[str, str]:
    """An experiment's ``--reuse KEY=RUN`` items as {KEY: RUN}, each KEY one of ``keys``."""
    reuse = {}
    for item in items or []:
        key, _, run = item.partition("=")
        if key not in keys or not run:
            raise AirsceneError(
                f"--reuse {item}: expected {name}=RUN with {name} one of {', '.join(keys)}"
            )
        reuse[key] = run
    return reuse


def _experiment_out(args: argparse.Namespace) -> Path:
    return Path(args.out or f"results/{args.experiment}")


# ---------------------------------------------------------------------------------------------
# The parser, one builder per verb

MODEL_HELP = f"a shipped model ({NAMES}; `airscene models` lists them), a checkpoint or a run"

# A figure of more scenes than this is not read by anyone (and takes minutes to draw).
MAX_TILES = 100


def figure_path(text: str) -> Path:
    """A figure's ``--out``: a .png file in a directory that exists (none is created)."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text!r}: figures are PNG files; end the name in .png")
    return new_file_path(text)


def new_file_path(text: str) -> Path:
    """An output file: in a directory that exists, and not itself a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no directory {str(path.parent)!r}")
    return path


def _add_data_parser(verbs) -> None:
    data = verbs.add_parser(
        "data", help="make and look at generated scenes (Multi-MNIST; --kind scenes3d: 3D scenes)"
    )
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION")
    data_verbs.required = True

    make = data_verbs.add_parser(
        "make",
        help="generate scenes (cached; optionally exported as .npz or PNG files)",
        description="Generate scenes of --kind (Multi-MNIST by default) with their ground truth "
        "(count, boxes, and labels or 3D descriptions).",
    )
    make.add_argument("--split", choices=("train", "test", "both"), default="both")
    make.add_argument(
        "--n",
        type=whole_number(1),
        default=None,
        help="scenes per split (overrides --n-train/--n-test)",
    )
    make.add_argument(
        "--format",
        choices=("npz", "png"),
        default="npz",
        help="npz: arrays (cached, and written to --out if given); png: one PNG per scene plus "
        "ground_truth.json and counts.csv in --out/SPLIT (default --out: ./multi-mnist)",
    )
    make.add_argument("--out", default=None, help="output directory")
    make.add_argument("--force", action="store_true", help="replace existing .npz files in --out")
    add_config_arguments(make, DataConfig, exclude=OWN_DATA_FIELDS)
    make.set_defaults(handler=_data_make)

    show = data_verbs.add_parser(
        "show",
        help="save a PNG grid of scenes with their ground-truth boxes and counts",
        description="Draw generated scenes of --kind (or an .npz from data make) with their "
        "ground-truth boxes and what is in each.",
    )
    show.add_argument("--split", choices=("train", "test"), default="train")
    show.add_argument(
        "--n",
        type=whole_number(1),
        default=None,
        help="scenes in the split (as given to data make)",
    )
    show.add_argument(
        "--num",
        type=whole_number(1, MAX_TILES),
        default=36,
        help=f"how many scenes to draw (at most {MAX_TILES})",
    )
    show.add_argument("--input", default=None, help="an .npz written by `data make --out`")
    show.add_argument("--out", type=figure_path, default="scenes.png", help="PNG file to write")
    add_config_arguments(show, DataConfig, exclude=OWN_DATA_FIELDS)
    show.set_defaults(handler=_data_show)


def _add_train_parser(verbs) -> None:
    train = verbs.add_parser(
        "train",
        help="train AIR (DAIR with --dair) on Multi-MNIST, 3D scenes (--kind scenes3d) or your "
        "own images (--data)",
        description="Train AIR. Every hyperparameter is a flag; the resolved config, metrics, "
        "TensorBoard scalars and checkpoints go into --run-dir.",
    )
    train.add_argument(
        "--run-dir", default=None, help="output directory (default: runs/air-TIMESTAMP)"
    )
    train.add_argument("--force", action="store_true", help="replace a non-empty --run-dir")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint, exactly as if never stopped "
        "(with --steps N: on to step N, the learning-rate schedule stretched to end there)",
    )
    add_config_arguments(train, TrainConfig)
    add_config_arguments(train, ModelConfig)
    add_config_arguments(train, DataConfig, exclude=("canvas_size",), rename=_DATA_RENAME)
    train.set_defaults(handler=_train)


def _add_eval_parser(verbs) -> None:
    evaluate = verbs.add_parser(
        "eval",
        help="count accuracy, count confusion, box IoU, ELBO and log p(x) on held-out scenes "
        "(3D models: count, shape, position and rotation)",
        description="Evaluate a trained model on held-out scenes of its training data (MNIST "
        "test digits; a 3D model's held-out renders) or on your own images (--data): the count "
        "accuracy and its confusion matrix, and what the model's kind of object has (2D: box "
        "IoU, ELBO, log p(x) on request; 3D: shape, position, rotation). Data flags default to "
        "the model's training data. The report is printed in words, or as JSON with --json.",
    )
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument(
        "--n", type=whole_number(1), default=1000, help="held-out scenes to evaluate on"
    )
    evaluate.add_argument(
        "--iw-samples",
        type=whole_number(0),
        default=0,
        help="also estimate log p(x) by importance sampling with this many samples per image "
        "(100 is a good bound; it multiplies the cost; default: 0, not estimated)",
    )
    evaluate.add_argument(
        "--seed", type=whole_number(0), default=0, help="seed of the sampling noise"
    )
    evaluate.add_argument(
        "--out", type=new_file_path, default=None, help="also write the report as JSON here"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of in words"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(
        evaluate, DataConfig, exclude=("canvas_size", "n_train", "n_test"), rename=_DATA_RENAME
    )
    evaluate.set_defaults(handler=_eval)


def _add_models_parser(verbs) -> None:
    models = verbs.add_parser(
        "models",
        help="list the shipped models: what each was trained on and what it reaches",
        description="The models inside the package, by the name --model takes: what each was "
        "trained on (the counts and canvas it expects) and its figures on held-out scenes "
        "(its eval.json).",
    )
    models.add_argument("--json", action="store_true", help="print them as JSON")
    models.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from airscene.shipped import shipped_models

    found = shipped_models()
    if args.json:
        rows = [{**vars(m), "folder": str(m.folder)} for m in found]
        print(json.dumps(rows, indent=2))
        return 0
    for model in found:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in model.figures.items())
        print(
            f"{model.name}: {model.summary}\n  trained: {model.trained_on}\n  held-out: {figures}"
        )
    return 0


def _add_render3d_parser(verbs) -> None:
    render = verbs.add_parser(
        "render3d",
        help="render 3D scenes you describe (JSON) with the fixed renderer of the 3D experiment",
        description='Render scenes described as {"scenes": [{"objects": [{"shape": NAME, '
        '"position": [x, y], "rotation_deg": R}, ...]}, ...]} to DIR/00000.png, ... in order. '
        "--describe prints the scene space: shapes, floor extent, the smallest distance between "
        "object centres, image size and each shape's rotational symmetry.",
    )
    render.add_argument("scenes", nargs="?", help="JSON file of scene descriptions")
    render.add_argument("--out", help="directory for the PNG files (new, or empty)")
    render.add_argument("--describe", action="store_true", help="print the scene space as JSON")
    render.add_argument(
        "--force", action="store_true", help="render into a non-empty --out, replacing its PNGs"
    )
    render.set_defaults(handler=_render3d)


def _render3d(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from airscene.render3d import SceneError, SceneSpace, read_scenes, render_scenes

    space = SceneSpace()
    if args.describe:
        print(json.dumps(space.describe(), indent=2))
        return 0
    if not args.scenes or not args.out:
        raise AirsceneError("render3d needs SCENES.json and --out DIR (or --describe)")
    try:
        document = json.loads(Path(args.scenes).read_text())
    except OSError as error:
        raise AirsceneError(f"{args.scenes}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AirsceneError(f"{args.scenes}: not valid JSON ({error})") from None
    try:
        scenes = read_scenes(document, space)
    except SceneError as error:
        raise AirsceneError(f"{args.scenes}: {error}") from None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (args.force and out.is_dir()):
            raise AirsceneError(f"{out}: exists and is not an empty directory; pass --force")
        for stale in out.glob("*.png"):  # a later `infer DIR` must not read earlier renders
            stale.unlink()
    images = render_scenes(scenes)  # every scene checked and drawn before any file is written
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images.numpy()):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out / f"{i:05d}.png")
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def _add_sample_parser(verbs) -> None:
    sample = verbs.add_parser(
        "sample",
        help="PNG grid of scenes drawn from the model's prior",
        description="Scenes drawn from the generative model: a count per scene, then every "
        "object's latents from their prior, decoded into the image. The count is drawn from "
        "--counts, not from the model's count prior rho: rho is a counting penalty chosen for "
        "training (the default 1e-10 makes each object ten billion times less likely than none, "
        "so that a digit is not split over two windows), and scenes drawn with it are almost "
        "always empty. Positions come from the model's prior truncated to the canvas (for 2D "
        "objects N(0, 1) in half-canvas units, kept where the whole window lies on the canvas), "
        "so every object drawn is seen whole.",
    )
    sample.add_argument("--model", required=True, help=MODEL_HELP)
    sample.add_argument(
        "--counts",
        default=None,
        type=value_parser(tuple[int, ...])[0],
        metavar="N,N,...",
        help="object counts to draw scenes with, e.g. 0,1,2 (default: the training data's)",
    )
    sample.add_argument(
        "--count-probs",
        default=None,
        type=value_parser(tuple[float, ...])[0],
        metavar="P,P,...",
        help="probability of each entry of --counts (default: uniform)",
    )
    sample.add_argument(
        "--n",
        type=whole_number(1, MAX_TILES),
        default=36,
        help=f"scenes to draw (at most {MAX_TILES})",
    )
    sample.add_argument("--seed", type=whole_number(0), default=0, help="seed of the draws")
    sample.add_argument("--out", type=figure_path, default="samples.png", help="PNG file to write")
    sample.set_defaults(handler=_sample)


def _add_show_parser(verbs) -> None:
    show = verbs.add_parser(
        "show",
        help="PNG of test images, reconstructions, inferred boxes and counts",
        description="Run a trained model on held-out scenes of its training data (or of the data "
        "flags) and draw each image above its reconstruction, with every inferred object's box "
        "coloured by the step that found it and the count found against the true one.",
    )
    show.add_argument("--model", required=True, help=MODEL_HELP)
    show.add_argument(
        "--n",
        type=whole_number(1, MAX_TILES // 2),
        default=10,
        help=f"images to show (at most {MAX_TILES // 2}: each beside its reconstruction)",
    )
    show.add_argument("--out", type=figure_path, default="inference.png", help="PNG file to write")
    add_config_arguments(
        show,
        DataConfig,
        exclude=("canvas_size", "n_train", "n_test", *OWN_DATA_FIELDS),
        rename=_DATA_RENAME,
    )
    show.set_defaults(handler=_show)


def _add_infer_parser(verbs) -> None:
    infer = verbs.add_parser(
        "infer",
        help="find, count and describe the objects in your images (JSON Lines)",
        description="Run a trained model on image files, directories or globs (any Pillow "
        "format, any size). One JSON record per image: path, count, and per object its box in "
        "the image's pixels, presence probability and what the model's kind of object says of "
        "it (2D: attention window, z_where, z_what; 3D: shape, position, rotation).",
    )
    infer.add_argument("paths", nargs="+", help="image files, directories or glob patterns")
    infer.add_argument(
        "--model",
        default="default",
        help=f"{MODEL_HELP} (default: 'default', AIR trained on 0-2 MNIST digits on a 50x50 "
        "canvas: images of other objects, more of them or of another scale want a model "
        "trained on them, e.g. 'scenes3d' for the 3D renders or your own with train --data)",
    )
    infer.add_argument(
        "--out",
        type=new_file_path,
        default=None,
        help="write JSON Lines here instead of stdout",
    )
    infer.add_argument(
        "--overlay", default=None, help="directory for PNGs with the boxes drawn and numbered"
    )
    infer.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="dark objects on a light background: auto detects them from the image border",
    )
    infer.add_argument(
        "--batch-size", type=whole_number(1), default=256, help="images inferred at once"
    )
    infer.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    infer.add_argument(
        "--force", action="store_true", help="replace an existing --out / non-empty --overlay"
    )
    infer.add_argument("--quiet", action="store_true", help="no progress bar")
    infer.set_defaults(handler=_infer)


def _add_experiment_parser(verbs) -> None:
    experiment = verbs.add_parser(
        "experiment",
        help="reproduce one of the paper's experiments (report, figures, raw JSON)",
        description="Each experiment writes report.md, figures and raw JSON into --out "
        "(default: results/NAME).",
    )
    names = experiment.add_subparsers(dest="experiment", metavar="NAME")
    names.required = True
    parsers = {
        "generalisation": names.add_parser(
            "generalisation",
            help="AIR vs DAIR trained on {0,1,2} digits and tested on 3, trained on {0,1,3} and "
            "tested on 2",
        ),
        "downstream": names.add_parser(
            "downstream",
            help="the sum and the order of two digits learnt from 10-10,000 labels on frozen AIR "
            "latents, VAE latents, or pixels (CNN)",
        ),
        "count": names.add_parser(
            "count", help="count accuracy against steps and wall time for AIR and DAIR"
        ),
        "many-objects": names.add_parser(
            "many-objects",
            help="sequential AIR and DAIR against the spatially parallel grid on 48x48 scenes of "
            "1-9 small digits (count, AP, step time against n), and the grid model on 84x84 "
            "and 160x160 canvases of 10-40 digits",
        ),
        "clutter": names.add_parser(
            "clutter",
            help="AIR without and with a learned background, and DAIR with it, on Multi-MNIST "
            "with noise and over grid lines (SuPAIR's variants) and on coloured sprites (there "
            "also the grid): count accuracy against SuPAIR's figures, the sprites' foreground "
            "ARI",
        ),
        "scenes3d": names.add_parser(
            "scenes3d",
            help="AIR over the fixed 3D renderer (pose gradients by autograd and by finite "
            "differences) against a supervised CNN: count, shape, position and rotation",
        ),
    }
    quick = {
        "generalisation": "2,000 steps and 1,000 test scenes per model",
        "downstream": "up to 1,000 labels",
        "count": "1,500 steps",
        "many-objects": "grid 1,500 steps, AIR and DAIR 600, 200 scenes per count",
        "clutter": "AIR and DAIR+background only, 400 steps each, 300 scenes per kind",
        "scenes3d": "AIR 1,000 steps, its finite-difference twin 300, the CNN 1,000",
    }
    for name, parser in parsers.items():
        parser.add_argument(
            "--quick",
            action="store_true",
            help=f"small sizes, under 10 minutes on 2 CPU cores ({quick[name]})",
        )
        if name != "generalisation":
            parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--out", default=None, help=f"output directory (default: results/{name})"
        )
    parsers["generalisation"].add_argument(
        "--seeds",
        type=value_parser(tuple[int, ...])[0],
        default=(0,),
        metavar="A,B,...",
        help="train every model from each of these seeds; the report gives each seed and their "
        "mean and spread (default: 0)",
    )
    parsers["generalisation"].add_argument(
        "--reuse",
        action="append",
        metavar="KEY=RUN_DIR",
        help="use an existing run instead of training, e.g. extrapolation/AIR=runs/air for the first "
        "seed or extrapolation/AIR/2=runs/air2 for seed 2 (repeatable); finished runs under "
        "OUT/runs with the same config are reused without asking",
    )
    parsers["generalisation"].set_defaults(handler=_experiment_generalisation)
    parsers["downstream"].add_argument(
        "--model",
        default=None,
        help="the AIR checkpoint or run whose latents are read, or a shipped model's name "
        "(default: 'conv-dair', the shipped conv + DAIR model; 'default' is the plain AIR)",
    )
    # DownstreamSettings' readers as flags; its sizes come from --quick.
    flags = ("explain_away", "test_draws")
    sizes = [f.name for f in dataclasses.fields(DownstreamSettings) if f.name not in flags]
    add_config_arguments(parsers["downstream"], DownstreamSettings, exclude=sizes)
    parsers["downstream"].set_defaults(handler=_experiment_downstream)
    parsers["count"].add_argument(
        "--curves-from",
        default=None,
        metavar="DIR",
        help="read tta-{air,dair}-seedN.json curves written by benchmarks/time_to_accuracy.py "
        "instead of training",
    )
    parsers["count"].set_defaults(handler=_experiment_count)
    parsers["scenes3d"].set_defaults(handler=_experiment_scenes3d)
    _reuse_flag(
        parsers["many-objects"],
        "SCHEME=MODEL",
        "grid=many-digits or AIR=runs/air (repeatable; SCHEME: grid, AIR or DAIR)",
    )
    parsers["many-objects"].set_defaults(handler=_experiment_many_objects)
    _reuse_flag(
        parsers["clutter"],
        "KIND/MODEL=RUN",
        "noisy-mnist/DAIR+background=runs/noisy (repeatable; MODEL: AIR, AIR+background, "
        "DAIR+background or, on sprites, grid+background)",
    )
    parsers["clutter"].set_defaults(handler=_experiment_clutter)


def _reuse_flag(parser: argparse.ArgumentParser, metavar: str, example: str) -> None:
    """An experiment's ``--reuse``: measure a given run instead of training one."""
    parser.add_argument(
        "--reuse",
        action="append",
        metavar=metavar,
        help=f"measure this run, checkpoint or shipped model instead of training one, e.g. {example}",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``airscene`` argument parser (verbs as sub-commands)."""
    from airscene.provenance import __version__

    parser = ArgumentParser(
        prog="airscene",
        description="Attend, Infer, Repeat: find, count and describe the objects in an image.",
    )
    parser.add_argument("--version", action="version", version=f"airscene {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for add in (
        _add_data_parser,
        _add_train_parser,
        _add_eval_parser,
        _add_sample_parser,
        _add_show_parser,
        _add_infer_parser,
        _add_models_parser,
        _add_render3d_parser,
        _add_experiment_parser,
    ):
        add(verbs)
    return parser


# Verbs that run a model; the others (models, data) do not import torch.
_MODEL_VERBS = ("train", "eval", "sample", "show", "infer", "render3d", "experiment")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``airscene`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb in _MODEL_VERBS:
        flush_denormals()
    try:
        return int(args.handler(args) or 0)
    except AirsceneError as error:
        print(f"airscene: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`airscene infer ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # e.g. an output path that cannot be written
        where = f"{error.filename}: " if error.filename else ""
        print(f"airscene: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:  # sizes far beyond this machine (numpy's allocation failures are these)
        print("airscene: error: not enough memory for these sizes", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as error:  # torch's allocators raise plain RuntimeErrors
        if "allocate" not in str(error):
            raise
        print("airscene: error: not enough memory for these sizes", file=sys.stderr)
        return EXIT_USAGE
    except TrainingInterrupted as stopped:
        print(f"airscene: interrupted: {stopped}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("airscene: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
