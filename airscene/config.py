"""Typed configuration: the single source of every hyperparameter.

Each field carries its help text in ``metadata["help"]``; the command line (``airscene.cli``)
is derived from these dataclasses, and the resolved config is written as JSON next to every
artefact (data cache, checkpoints), so nothing is listed twice.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from airscene.errors import AirsceneError


class ConfigError(AirsceneError, ValueError):
    """A config value out of range or of the wrong shape (reported as a one-line error)."""


# The largest canvas a model reads whole: AIR's core projects every pixel into its LSTM's gates.
MAX_CANVAS = 1024


def param(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its help text; tuples and other immutables only as defaults."""
    return field(default=default, metadata={"help": help, **metadata})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# DataConfig fields about a user's own images: they neither shape Multi-MNIST scenes (so they stay
# out of the scene cache key) nor apply to the Multi-MNIST-only `data make/show` verbs.
OWN_DATA_FIELDS = ("data_path", "data_array", "data_counts", "holdout_fraction")


# The data kinds (``DataConfig.kind``): the families of generated scenes that
# ``airscene.registry.SCENE_FAMILIES`` lists.
KINDS = (
    "multi-mnist",
    "scenes3d",
    "scattered-digits",
    "noisy-mnist",
    "grid-mnist",
    "cluttered-mnist",
    "sprites",
)


@dataclass(frozen=True)
class DataConfig:
    """Multi-MNIST scenes as in the paper: MNIST digits placed on a blank canvas (or, with
    kind scenes3d, the 3D experiment's rendered scenes)."""

    kind: Literal[KINDS] = param(
        "multi-mnist",
        "multi-mnist: the paper's 2D scenes; scattered-digits: many small MNIST digits that "
        "may touch and overlap a little (48x48, 14 px digits, 1-9 of them, unless the flags "
        "say otherwise); noisy-mnist and grid-mnist: the paper's scenes with Gaussian noise "
        "or over grid lines (SuPAIR's two cluttered variants, --clutter); cluttered-mnist: "
        "each scene clean, noisy or over grid lines (--clutter mixed); sprites: 0-4 coloured "
        "shapes over coloured backgrounds (64x64 RGB, with masks); scenes3d: 0-3 "
        "objects on a floor rendered in 3D (64x64; of the other data settings only counts, "
        "seed, n-train and n-test apply)",
    )
    canvas_size: int = param(50, "side of the square canvas in pixels (the paper: 50)")
    counts: tuple[int, ...] = param((0, 1, 2), "digit counts a scene may hold, e.g. 0,1,2 or 0,1,3")
    count_probs: tuple[float, ...] | None = param(
        None, "probability of each entry of --counts (default: uniform)"
    )
    overlap: bool = param(
        False,
        "allow digits to overlap (pixels summed, clipped to [0, 1]); default: ink boxes disjoint",
    )
    max_overlap: float = param(
        0.0,
        "how much of a digit's ink box another digit's may cover, as a fraction of the smaller "
        "box (0: ink boxes disjoint; --overlap: any)",
    )
    placement: Literal["scene", "digit"] = param(
        "scene",
        "how digits whose boxes clash are placed again: scene (the whole scene redrawn: uniform "
        "over the layouts that fit) or digit (each clashing digit redrawn alone: many digits "
        "fit in few rounds)",
    )
    digit_size: int | None = param(
        None,
        "shrink every digit's 28 px MNIST frame to this many pixels (default: 28, or "
        "--scale-range)",
    )
    scale_range: tuple[float, float] | None = param(
        None,
        "rescale each 28x28 digit by a factor drawn uniformly from MIN,MAX (default: no rescaling)",
    )
    clutter: Literal["none", "noise", "grid", "mixed"] = param(
        "none",
        "what lies under the digits: none (a black canvas); noise (SuPAIR's noisy variant: "
        "0.8 x + 0.1 plus Gaussian noise of sd 0.2, clipped to [0, 1]); grid (grid lines of "
        "intensity 0.4 every 5 px at a random phase, the digits' ink over them); mixed (each "
        "scene one of the three)",
    )
    n_train: int = param(60_000, "number of training scenes (drawn from MNIST train digits)")
    n_test: int = param(10_000, "number of test scenes (drawn from MNIST test digits)")
    seed: int = param(0, "seed of the scene generator (train and test use separate streams)")
    mnist_dir: str | None = param(
        None, "directory with the four standard MNIST idx(.gz) files (default: the embedded copy)"
    )
    data_path: str | None = param(
        None,
        "train on your own images instead of Multi-MNIST: a folder of images (any Pillow format) or "
        "a .npy/.npz array (N, H, W); each is fitted to the canvas",
    )
    data_array: str = param("x", "name of the image array inside a .npz given as the data path")
    data_counts: str | None = param(
        None,
        "ground-truth counts for the data path: a CSV (file,count), a JSON list/mapping, or an array "
        "name inside the .npz (default: counts.csv or ground_truth.json beside a folder, 'counts' in a .npz)",
    )
    holdout_fraction: float = param(
        0.1, "with a data path: this fraction (the last images) is held out for evaluation"
    )

    def __post_init__(self) -> None:
        _check(
            8 <= self.canvas_size <= MAX_CANVAS,
            f"canvas_size must lie in 8..{MAX_CANVAS} pixels, got {self.canvas_size}",
        )
        _check(len(self.counts) > 0, "counts must name at least one digit count")
        _check(all(c >= 0 for c in self.counts), f"counts must be >= 0, got {self.counts}")
        _check(len(set(self.counts)) == len(self.counts), f"counts repeat a value: {self.counts}")
        if self.count_probs is not None:
            _check(
                len(self.count_probs) == len(self.counts),
                f"count_probs has {len(self.count_probs)} entries for {len(self.counts)} counts",
            )
            _check(all(p >= 0 for p in self.count_probs), "count_probs must be >= 0")
            _check(abs(sum(self.count_probs) - 1.0) < 1e-6, "count_probs must sum to 1")
        if self.scale_range is not None:
            low, high = self.scale_range
            _check(
                0 < low <= high, f"scale_range must satisfy 0 < MIN <= MAX, got {self.scale_range}"
            )
            _check(
                round(28 * high) <= self.canvas_size,
                f"scale_range max {high} makes digits larger than the {self.canvas_size}px canvas",
            )
        _check(
            0 <= self.max_overlap <= 1, f"max_overlap must lie in [0, 1], got {self.max_overlap}"
        )
        _check(self.placement in ("scene", "digit"), f"unknown placement {self.placement!r}")
        if self.digit_size is not None:
            _check(self.scale_range is None, "give --digit-size or --scale-range, not both")
            _check(
                4 <= self.digit_size <= self.canvas_size,
                f"digit_size must lie in 4..{self.canvas_size} (the canvas), got {self.digit_size}",
            )
        _check(self.n_train >= 0 and self.n_test >= 0, "n_train and n_test must be >= 0")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(0 <= self.holdout_fraction < 1, "holdout_fraction must lie in [0, 1)")
        _check(
            self.kind in KINDS,
            f"unknown data kind {self.kind!r}",
        )
        _check(
            self.clutter in ("none", "noise", "grid", "mixed"), f"unknown clutter {self.clutter!r}"
        )
        if self.kind == "scenes3d":
            _check(self.canvas_size == 64, "3D scenes are 64x64: canvas_size must be 64")
            _check(self.max_count <= 3, f"3D scenes hold at most 3 objects, got {self.counts}")
            _check(self.data_path is None, "a data path is not a 3D scene set")

    @property
    def max_count(self) -> int:
        return max(self.counts)

    @property
    def probabilities(self) -> tuple[float, ...]:
        """Probability of each entry of ``counts`` (uniform unless given)."""
        if self.count_probs is None:
            return tuple(1.0 / len(self.counts) for _ in self.counts)
        return self.count_probs


C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build ``cls`` from a dict such as ``to_dict`` wrote; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        hint, kinds = hints[name], fields[name].metadata.get("kinds")
        if kinds is not None and isinstance(value, dict):
            kind = value.get("kind", fields[name].default_factory().kind)
            if kind not in kinds:
                raise ConfigError(f"{name}: unknown kind {kind!r} (known: {', '.join(kinds)})")
            kwargs[name] = from_dict(kinds[kind], value)
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = from_dict(hint, value)
        else:
            kwargs[name] = _coerce(hint, value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    """JSON lists back to tuples where the field is a tuple."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


@dataclass(frozen=True)
class GlimpseConfig:
    """The paper's 2D objects: a window z_where, the glimpse read in it, an appearance z_what."""

    kind: Literal["glimpse"] = param(
        "glimpse", "the object model (glimpse: the paper's 2D objects)"
    )
    glimpse_size: int = param(28, "side of a glimpse (read by the encoder, drawn by the decoder)")
    z_what_dim: int = param(50, "dimensions of z_what, an object's appearance code")
    encoder_hidden: int = param(200, "hidden units of the glimpse encoder (glimpse -> z_what)")
    decoder_hidden: int = param(200, "hidden units of the glimpse decoder (z_what -> glimpse)")
    glimpse_networks: Literal["dense", "conv"] = param(
        "dense",
        "the glimpse encoder and decoder: dense (one hidden layer each, as the paper) or conv "
        "(two strided convolutions, then the hidden layer; glimpse_size a multiple of 4)",
    )
    decoder_output_bias: float = param(
        -2.0,
        "initial bias before the decoder's sigmoid: glimpses start near blank (avoids collapse to 0 objects)",
    )
    z_where_prior_loc: tuple[float, float, float] = param(
        (0.42, 0.0, 0.0),
        "prior mean of z_where = (scale, x, y); scale is the window's side as a fraction of the canvas "
        "(0.42 of 50 px = 21 px: an MNIST digit's ink, not its 28 px frame)",
    )
    z_where_prior_scale: tuple[float, float, float] = param(
        (0.04, 1.0, 1.0),
        "prior standard deviation of z_where (a tight scale: one object per window)",
    )
    composite: Literal["sum", "capped"] = param(
        "sum",
        "how overlapping objects make the image: sum (the paper: intensities add up) or capped "
        "(the sum capped at 1, as digits that touch are composed in the scattered-digits data, so "
        "two overlapping digits drawn whole are not penalised for ink brighter than white)",
    )
    z_where_max_scale: float | None = param(
        0.1,
        "upper bound on q(z_where)'s standard deviation (None: unbounded softplus). A bound keeps "
        "glimpses where the network puts them instead of at random windows that merely copy pixels",
    )

    def __post_init__(self) -> None:
        _check(self.kind == "glimpse", f"GlimpseConfig is kind 'glimpse', got {self.kind!r}")
        _check(self.glimpse_size >= 4, f"glimpse_size must be >= 4, got {self.glimpse_size}")
        for name in ("z_what_dim", "encoder_hidden", "decoder_hidden"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.glimpse_networks in ("dense", "conv"),
            f"unknown glimpse_networks {self.glimpse_networks!r} (dense or conv)",
        )
        _check(
            self.glimpse_networks != "conv" or self.glimpse_size % 4 == 0,
            f"conv glimpse networks need a glimpse_size that is a multiple of 4, got {self.glimpse_size}",
        )
        _check(
            self.composite in ("sum", "capped"),
            f"unknown composite {self.composite!r} (sum or capped)",
        )
        _check(self.z_where_prior_loc[0] > 0, "the prior mean of the z_where scale must be > 0")
        _check(all(s > 0 for s in self.z_where_prior_scale), "z_where_prior_scale must be > 0")
        _check(
            self.z_where_max_scale is None or self.z_where_max_scale > 0,
            "z_where_max_scale must be > 0",
        )


@dataclass(frozen=True)
class RenderedConfig:
    """Objects drawn by the fixed 3D renderer: shape, position on the floor, turn about z."""

    kind: Literal["render3d"] = param(
        "render3d", "the object model (render3d: the fixed 3D renderer's objects)"
    )
    glimpse_size: int = param(24, "side of a glimpse (read by the encoder), in pixels")
    glimpse_window: float = param(
        24.0,
        "side of the window a glimpse is read from, in image pixels, centred where the object's "
        "position appears (the longest object is about 15 px long near the floor's centre)",
    )
    encoder_hidden: int = param(
        256, "hidden units of each of the glimpse encoder's two layers (glimpse -> shape, turn)"
    )
    position_prior_scale: float = param(
        0.5,
        "prior standard deviation of an object's position on the floor (world units; the floor "
        "is [-0.8, 0.8]^2)",
    )
    position_max_scale: float = param(
        0.05, "upper bound on q(position)'s standard deviation (world units; a pixel is ~0.06)"
    )
    turn_max_scale: float = param(
        0.5, "upper bound on q(turn)'s standard deviation (radians of the symmetry-reduced turn)"
    )
    pose_gradient: Literal["autograd", "finite-difference"] = param(
        "autograd",
        "how position and rotation gradients pass the renderer: autograd, or central finite "
        "differences (the paper's estimator, for a renderer that is not differentiable)",
    )
    finite_difference_step: float = param(
        0.005, "the finite differences' step in world units and radians"
    )
    shape_gradient: Literal["enumerate", "likelihood-ratio"] = param(
        "enumerate",
        "how q(shape) learns: enumerate (each object re-rendered as every shape in its place, the "
        "rest of the scene as drawn, and q's gradient is the exact expectation over the shapes: "
        "a local expectation gradient), or likelihood-ratio (the sampled shape's REINFORCE term "
        "with z_pres's NVIL baseline)",
    )
    apart_prior_strength: float = param(
        100.0,
        "nats a present object loses for each earlier object it sits on, times (1 - d / d_min)^2 "
        "for centres d apart (d_min: the scenes' smallest centre distance): the scenes' objects "
        "never intersect, so neither may the model's; 0 turns it off",
    )

    def __post_init__(self) -> None:
        _check(self.kind == "render3d", f"RenderedConfig is kind 'render3d', got {self.kind!r}")
        _check(self.glimpse_size >= 4, f"glimpse_size must be >= 4, got {self.glimpse_size}")
        _check(self.glimpse_window > 0, "glimpse_window must be > 0")
        _check(self.encoder_hidden >= 1, "encoder_hidden must be >= 1")
        for name in ("position_prior_scale", "position_max_scale", "turn_max_scale"):
            _check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _check(
            self.pose_gradient in ("autograd", "finite-difference"),
            f"unknown pose_gradient {self.pose_gradient!r}",
        )
        _check(self.finite_difference_step > 0, "finite_difference_step must be > 0")
        _check(
            self.shape_gradient in ("enumerate", "likelihood-ratio"),
            f"unknown shape_gradient {self.shape_gradient!r}",
        )
        _check(self.apart_prior_strength >= 0, "apart_prior_strength must be >= 0")


@dataclass(frozen=True)
class MaskedConfig:
    """2D objects with a mask: a window z_where, and z_what decoded to an appearance (one value
    per image channel) and a mask; drawn front to back in inference order, each covering what
    lies behind it."""

    kind: Literal["masked"] = param(
        "masked",
        "the object model (masked: 2D objects of any colour, an appearance and a mask each, the "
        "first found in front)",
    )
    glimpse_size: int = param(16, "side of a glimpse (read by the encoder, drawn by the decoder)")
    z_what_dim: int = param(16, "dimensions of z_what, an object's appearance and mask code")
    encoder_hidden: int = param(200, "hidden units of the glimpse encoder (glimpse -> z_what)")
    decoder_hidden: int = param(
        200, "hidden units of the glimpse decoder (z_what -> appearance and mask)"
    )
    mask_bias: float = param(
        -2.0, "initial bias before the mask's sigmoid: objects start nearly transparent"
    )
    glimpse_networks: Literal["dense", "conv"] = param(
        "dense",
        "the glimpse encoder and decoder: dense (one hidden layer each) or conv (two strided "
        "convolutions each side of the hidden layer; glimpse_size a multiple of 4)",
    )
    z_where_prior_loc: tuple[float, float, float] = param(
        (0.25, 0.0, 0.0),
        "prior mean of z_where = (scale, x, y); scale is the window's side as a fraction of the "
        "canvas (0.25 of 64 px = 16 px: the sprites' 10-18 px shapes)",
    )
    z_where_prior_scale: tuple[float, float, float] = param(
        (0.05, 1.0, 1.0), "prior standard deviation of z_where"
    )
    z_where_max_scale: float | None = param(
        0.1, "upper bound on q(z_where)'s standard deviation (None: unbounded softplus)"
    )
    mask_writing: Literal["mask", "logit"] = param(
        "mask",
        "how a decoded glimpse is written onto the canvas: mask (resampled as it is, its mask's "
        "edge soft over a glimpse pixel) or logit (the mask's logits resampled, then squashed: "
        "an edge as sharp as the decoder makes it at any window size)",
    )
    window_range: tuple[float, float] = param(
        (0.1, 0.45),
        "the least and most a window's side may be, as a fraction of the canvas (q's mean of "
        "the scale is squashed into it): an object's window cannot grow over the whole image "
        "and take the background's place",
    )

    def __post_init__(self) -> None:
        _check(self.kind == "masked", f"MaskedConfig is kind 'masked', got {self.kind!r}")
        _check(
            self.glimpse_networks != "conv" or self.glimpse_size % 4 == 0,
            f"conv glimpse networks need a glimpse_size that is a multiple of 4, got "
            f"{self.glimpse_size}",
        )
        low, high = self.window_range
        _check(
            0 < low < self.z_where_prior_loc[0] < high <= 1,
            f"window_range {self.window_range} must hold the prior's scale "
            f"{self.z_where_prior_loc[0]} strictly inside, within (0, 1]",
        )
        _check(
            self.mask_writing in ("mask", "logit"),
            f"unknown mask_writing {self.mask_writing!r} (mask or logit)",
        )
        _check(self.glimpse_size >= 4, f"glimpse_size must be >= 4, got {self.glimpse_size}")
        for name in ("z_what_dim", "encoder_hidden", "decoder_hidden"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.z_where_max_scale is None or self.z_where_max_scale > 0,
            "z_where_max_scale must be > 0",
        )


# The object models a ModelConfig can hold, by their ``kind``. A new object model adds its
# config here (and its class to ``airscene.registry.OBJECT_MODELS``).
OBJECT_CONFIGS: dict[str, type] = {
    "glimpse": GlimpseConfig,
    "render3d": RenderedConfig,
    "masked": MaskedConfig,
}
# The type of ModelConfig.objects: one of the OBJECT_CONFIGS classes.
ObjectConfig = GlimpseConfig | RenderedConfig | MaskedConfig


@dataclass(frozen=True)
class ModelConfig:
    """The AIR model: the recurrent core, the count prior and p(x | z); ``objects`` holds the
    settings of the object model (what an object is and how objects make an image)."""

    canvas_size: int = param(50, "side of the square image the model explains, in pixels")
    channels: int = param(
        1,
        "colour channels of the images it explains: 1 (grey, the paper) or 3 (RGB; with "
        "--objects masked)",
    )
    core_pool: int = param(
        1,
        "the recurrent core (and NVIL's baseline) reads the image average-pooled by this "
        "factor: 1 every pixel (the paper); 2 a quarter as many numbers, for large colour "
        "images (glimpses still read every pixel)",
    )
    max_steps: int = param(
        3, "N: the most objects (inference steps) per image; the paper uses 3 for 0-2 digits"
    )
    dair: bool = param(False, "DAIR: the network reads the residual x - canvas-so-far instead of x")
    dair_memory: bool = param(
        True,
        "with DAIR, each step's LSTM carries the state and latents of the steps before (the "
        "paper); --no-dair-memory starts every step afresh from the residual alone, so that no "
        "step can tell how many objects came before it",
    )
    presence_from: Literal["state", "residual"] = param(
        "state",
        "what decides each step's z_pres: the LSTM state (the paper), or with DAIR the residual "
        "alone (through the step's image projection), so that going on cannot depend on how many "
        "objects came before: a count never seen in training is found as one that was",
    )
    lstm_size: int = param(256, "units of the inference network's LSTM")
    predictor_hidden: int = param(
        200,
        "hidden units of the step's predictor (z_pres and the object's posterior) on the LSTM state",
    )
    baseline_lstm_size: int = param(256, "units of the NVIL baseline network's own LSTM")
    z_pres_prior: float = param(
        1e-10,
        "rho: prior probability that another object is present; each object costs log(1/rho) nats, "
        "so a strong prior (1e-10: 23.0 nats) keeps one digit from being split over two windows "
        "(how often each value splits digits: benchmarks/README.md, training from every seed)",
    )
    likelihood: Literal["normal", "bernoulli"] = param("normal", "pixel likelihood p(x | z)")
    likelihood_sigma: float = param(0.3, "standard deviation of the normal pixel likelihood")
    likelihood_power: float = param(
        2.0,
        "shape p of the normal likelihood, generalised: log p(x | z) = -|x - mean|^p / "
        "(2^(p/2) sigma^p) + const per pixel, so 2 is the normal; p > 2 forgives small misfits "
        "(a glimpse drawn a little blurred) and punishes ink left undrawn harder",
    )
    objects: ObjectConfig = field(
        default_factory=GlimpseConfig,
        metadata={"help": "the object model", "kinds": OBJECT_CONFIGS},
    )
    inference: Literal["sequential", "grid"] = param(
        "sequential",
        "how q finds the objects: sequential (the paper: one object per step, at most "
        "max_steps) or grid (spatially parallel: every cell of a grid over the image proposes "
        "at most one object at once; 2D objects only: grey glimpses read images of any size, "
        "masked objects are composited without order over the background)",
    )
    cell_size: int = param(
        8, "grid: side of a cell in pixels (at most one object is centred in each)"
    )
    cell_reach: float = param(
        0.5,
        "grid: how far an object's centre may lie from its cell's centre, in cells (0.5: inside the cell, so one cell owns each centre)",
    )
    grid_channels: int = param(64, "grid: channels of the convolutional network over the image")
    grid_refine_passes: int = param(
        0,
        "grid: passes of a search on the scene's ELBO that refines q's mode at inference (each "
        "tries switching on the cells q most nearly found and switching off objects centred in "
        "another's window, the neighbours' objects read again from what the others leave, "
        "their windows moved a pixel where that explains it better, and keeps the switches "
        "that gain; 0: q's mode as it is)",
    )
    grid_aspect_spread: float = param(
        0.0,
        "grid: windows narrower than tall (SPAIR's separate width): a window's width is its "
        "height times exp(-a softplus(-v)), v ~ N(0, 1) a fourth cell-local latent and a this "
        "spread, so that a window can fit a thin digit and leave its neighbour out; 0: square "
        "windows",
    )
    grid_presence_bias: float = param(
        -2.0, "grid: q(z_pres)'s initial logit in every cell (-2: about one cell in eight on)"
    )
    background: Literal["none", "learned", "smooth"] = param(
        "none",
        "what lies under the objects in p(x | z): none (a black canvas, the paper); learned "
        "(a latent z_bg of a few dimensions that weights learned basis images, with its own "
        "encoder; the objects are drawn over it, covering it where their ink is); smooth "
        "(z_bg is a coarse grid of colours, background_grid a side, bilinearly upsampled: any "
        "level, gradient or smooth colour field, nothing of an object's size)",
    )
    background_dim: int = param(
        8,
        "learned background: dimensions of z_bg, the number of basis images it mixes",
    )
    background_grid: int = param(
        4, "smooth background: side of the grid of colours z_bg holds (4: 4x4 per channel)"
    )
    background_detail: float = param(
        0.3,
        "smooth background: prior standard deviation, in logits, of each grid colour's "
        "departure from the image's mean background colour (small: a grid cell cannot take an "
        "object's colour cheaply)",
    )
    background_smoothness: float = param(
        0.0,
        "smooth background: length scale in pixels over which the prior correlates the grid "
        "colours' departures (a squared-exponential kernel; 0: independent): broad colour "
        "fields cost little, a blob of an object's size much",
    )

    @property
    def image_size(self) -> int:
        """Numbers per image: channels x canvas_size^2."""
        return self.channels * self.canvas_size**2

    @property
    def core_input_size(self) -> int:
        """Numbers per image the recurrent core reads: the image, pooled by ``core_pool``."""
        return self.channels * (self.canvas_size // self.core_pool) ** 2

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(
            self.inference in ("sequential", "grid"),
            f"unknown inference {self.inference!r} (sequential or grid)",
        )
        _check(2 <= self.cell_size <= 64, f"cell_size must lie in 2..64, got {self.cell_size}")
        _check(0 < self.cell_reach <= 2, f"cell_reach must lie in (0, 2], got {self.cell_reach}")
        _check(self.grid_channels >= 1, f"grid_channels must be >= 1, got {self.grid_channels}")
        _check(
            self.grid_refine_passes >= 0,
            f"grid_refine_passes must be >= 0, got {self.grid_refine_passes}",
        )
        _check(
            self.grid_aspect_spread >= 0,
            f"grid_aspect_spread must be >= 0, got {self.grid_aspect_spread}",
        )
        _check(
            self.background in ("none", "learned", "smooth"),
            f"unknown background {self.background!r} (none, learned or smooth)",
        )
        _check(1 <= self.background_dim <= 64, "background_dim must lie in 1..64")
        _check(self.background_detail > 0, "background_detail must be > 0")
        _check(self.background_smoothness >= 0, "background_smoothness must be >= 0")
        _check(
            self.background_smoothness == 0 or self.background == "smooth",
            "background_smoothness correlates the smooth background's colours: it needs "
            "--background smooth",
        )
        _check(
            2 <= self.background_grid <= self.canvas_size,
            f"background_grid must lie in 2..{self.canvas_size} (the canvas)",
        )
        _check(
            8 <= self.canvas_size <= MAX_CANVAS,
            f"canvas_size must lie in 8..{MAX_CANVAS} pixels, got {self.canvas_size}",
        )
        for name in ("lstm_size", "predictor_hidden", "baseline_lstm_size"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(
            0 < self.z_pres_prior < 1, f"z_pres_prior must lie in (0, 1), got {self.z_pres_prior}"
        )
        _check(
            self.likelihood in ("normal", "bernoulli"), f"unknown likelihood {self.likelihood!r}"
        )
        _check(
            self.presence_from in ("state", "residual"),
            f"unknown presence_from {self.presence_from!r}",
        )
        _check(self.dair_memory or self.dair, "--no-dair-memory needs DAIR")
        _check(
            self.presence_from == "state" or self.dair,
            "presence_from residual needs DAIR (plain AIR sees the same image at every step)",
        )
        _check(
            self.likelihood_sigma > 0, f"likelihood_sigma must be > 0, got {self.likelihood_sigma}"
        )
        _check(
            1 <= self.likelihood_power <= 16,
            f"likelihood_power must lie in [1, 16] (beyond, |x - mean|^p overflows), got "
            f"{self.likelihood_power}",
        )
        _check(
            self.likelihood_power == 2.0 or self.likelihood == "normal",
            "likelihood_power shapes the normal likelihood only",
        )
        _check(
            isinstance(self.objects, tuple(OBJECT_CONFIGS.values())),
            f"objects must be the config of one of {', '.join(OBJECT_CONFIGS)}, got {self.objects!r}",
        )
        if self.inference == "grid":
            _check(
                self.objects.kind in ("glimpse", "masked"),
                f"inference grid needs 2D glimpse objects (glimpse or masked); objects "
                f"{self.objects.kind!r} are inferred by the sequential loop only",
            )
            _check(
                not self.dair,
                "--dair is a way of the sequential loop (each step reads what the ones before "
                "left); grid inference reads every cell at once",
            )
        _check(self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        _check(
            self.core_pool >= 1 and self.canvas_size % self.core_pool == 0,
            f"core_pool must divide canvas_size {self.canvas_size}, got {self.core_pool}",
        )
        _check(
            self.core_pool == 1 or self.inference == "sequential",
            "core_pool is the sequential loop's: grid inference reads the image by convolutions",
        )
        if self.channels != 1:
            _check(
                self.objects.kind == "masked",
                f"colour images need objects with a colour (--objects masked); objects "
                f"{self.objects.kind!r} are grey",
            )
        if self.background != "none":
            _check(
                self.objects.kind in ("glimpse", "masked"),
                f"--background {self.background} draws 2D glimpse objects over it; the objects "
                f"{self.objects.kind!r} render their own scene",
            )
            _check(
                self.inference == "sequential" or self.objects.kind == "masked",
                f"--background {self.background} under grid inference needs masked objects "
                "(--objects masked), which cover it; grey summed ink on the grid has no "
                "background",
            )
        if self.objects.kind == "render3d":
            _check(
                self.canvas_size == 64,
                "the 3D renderer's objects draw 64x64 images: canvas_size must be 64 "
                "(train --kind scenes3d sets it)",
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: the recipe that trains AIR quickly and from every seed."""

    steps: int = param(10_000, "training steps (minibatches)")
    batch_size: int = param(
        64,
        "images per step, over all processes: under torchrun each of K processes trains on "
        "batch_size / K of them, so the recipe (and its learning rate) is the same at any K",
    )
    learning_rate: float = param(
        1e-3, "Adam learning rate of the model (generative and inference networks)"
    )
    baseline_learning_rate: float = param(
        1e-2, "Adam learning rate of the NVIL baseline network (larger: it must track the signal)"
    )
    lr_schedule: Literal["constant", "cosine"] = param(
        "cosine",
        "learning-rate schedule of the model: cosine decays to final_lr_fraction at the last step",
    )
    final_lr_fraction: float = param(
        0.05, "the cosine schedule's last learning rate, as a fraction of the first"
    )
    grad_clip: float | None = param(
        None, "clip the model's gradient norm to this value (default: no clipping)"
    )
    z_pres_prior_start: float | None = param(
        None,
        "anneal rho geometrically from this value to the model's z_pres_prior (default: no annealing)",
    )
    z_pres_prior_anneal_steps: int = param(0, "steps over which rho is annealed")
    likelihood_blur_start: float = param(
        0.0,
        "coarse to fine: blur image and reconstruction by a Gaussian of this many pixels in "
        "p(x | z), shrinking linearly to none over likelihood-blur-steps (a renderer's pose "
        "gradients reach only objects that overlap their image; blurred, farther ones; 0: none)",
    )
    likelihood_blur_steps: int = param(0, "steps over which the likelihood's blur shrinks to 0")
    background_detail_steps: int = param(
        0,
        "smooth background: its colours' departures from the image's mean colour are let in "
        "linearly from 0 over this many steps, so the objects learn to draw before the "
        "background can paint them as blobs (0: from the start)",
    )
    normal_likelihood_steps: int = param(
        0,
        "a Bernoulli model trains its first this many steps under the normal pixel likelihood "
        "(sd likelihood-sigma), then under its own: the normal's gentle misfit while glimpses "
        "learn to draw, the Bernoulli's dear undrawn ink once they do; evaluations always score "
        "under its own (0: no warm-up; a normal model, or a run no longer than this, trains "
        "under the normal throughout; train --steps keeps a recipe's warm-up at its fraction "
        "of the run)",
    )
    kl_warmup_steps: int = param(
        0,
        "grid inference: the objects' KL term rises linearly from 0 to its full weight over "
        "this many steps, so glimpses learn to draw before an object must pay its cost (0: none)",
    )
    normalise_signal: bool = param(
        True,
        "NVIL: centre and scale the learning signal by running moments (the learned baseline's)",
    )
    z_pres_baseline: Literal["learned", "stop"] = param(
        "learned",
        "the sequential scheme's baseline for each step's z_pres: learned (NVIL's network "
        "regressed onto the learning signal) or stop (the signal the sample would have had "
        "had the step stopped, computed exactly from the objects before it, plus the network "
        "for the rest: an extra object's cost is seen against the scene's, not lost in it; "
        "the signal less the stop's is exactly 0 where a step stopped; the residual is not "
        "normalised, since centring it by the batch's mean would give every stopped step the "
        "others' mean, and scaling it would shrink an extra object's few nats to nothing)",
    )
    seed: int = param(0, "seed of the model's initialisation, minibatch order and sampling noise")
    max_nonfinite_steps: int = param(
        10, "stop the run after this many non-finite losses or gradients in a row (each is skipped)"
    )
    keep_checkpoints: int = param(
        3, "keep the newest this many checkpoints (the newest is never deleted)"
    )
    eval_every: int = param(
        1000, "evaluate count accuracy on held-out scenes every this many steps (0: never)"
    )
    eval_scenes: int = param(1000, "held-out test scenes used by the evaluations during training")
    checkpoint_every: int = param(2000, "write a checkpoint every this many steps")
    log_every: int = param(50, "append to the metrics CSV and TensorBoard every this many steps")
    device: Literal["auto", "cpu", "cuda"] = param(
        "auto", "where to train: auto picks cuda when available"
    )
    threads: int | None = param(None, "CPU threads for PyTorch (default: PyTorch's choice)")

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(
            self.learning_rate > 0 and self.baseline_learning_rate > 0, "learning rates must be > 0"
        )
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0")
        _check(
            self.lr_schedule in ("constant", "cosine"), f"unknown lr_schedule {self.lr_schedule!r}"
        )
        _check(0 < self.final_lr_fraction <= 1, "final_lr_fraction must lie in (0, 1]")
        if self.z_pres_prior_start is not None:
            _check(0 < self.z_pres_prior_start < 1, "z_pres_prior_start must lie in (0, 1)")
        _check(self.z_pres_prior_anneal_steps >= 0, "z_pres_prior_anneal_steps must be >= 0")
        _check(
            self.normal_likelihood_steps >= 0,
            f"normal_likelihood_steps must be >= 0, got {self.normal_likelihood_steps}",
        )
        _check(
            self.kl_warmup_steps >= 0,
            f"kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}",
        )
        _check(self.background_detail_steps >= 0, "background_detail_steps must be >= 0")
        _check(
            self.z_pres_baseline in ("learned", "stop"),
            f"z_pres_baseline must be learned or stop, got {self.z_pres_baseline!r}",
        )
        _check(
            self.likelihood_blur_start >= 0 and self.likelihood_blur_steps >= 0,
            "likelihood_blur_start and likelihood_blur_steps must be >= 0",
        )
        _check(
            self.eval_every >= 0 and self.eval_scenes >= 1, "eval_every >= 0 and eval_scenes >= 1"
        )
        _check(
            self.checkpoint_every >= 1 and self.log_every >= 1,
            "checkpoint_every and log_every must be >= 1",
        )
        _check(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")
        _check(self.threads is None or self.threads >= 1, "threads must be >= 1")
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")

    def over_steps(self, steps: int) -> TrainConfig:
        """This schedule for a run of ``steps`` steps, its normal-likelihood warm-up kept at
        the same fraction of the run, so that a recipe's run made shorter still ends under its
        model's own likelihood (the grid's: the last sixth under the Bernoulli)."""
        warm_up = round(self.normal_likelihood_steps * steps / self.steps)
        return dataclasses.replace(self, steps=steps, normal_likelihood_steps=warm_up)


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on; written as config.json in the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(
            self.data.data_path is None or self.model.objects.kind != "render3d",
            "the 3D renderer's objects train on rendered scenes with their descriptions, not on "
            "a data path",
        )
        _check(
            self.data.canvas_size == self.model.canvas_size,
            f"data canvas_size {self.data.canvas_size} != model canvas_size {self.model.canvas_size}",
        )
        _check(
            self.train.z_pres_baseline == "learned" or self.model.inference == "sequential",
            "--z-pres-baseline is the sequential scheme's: grid inference sums each cell's "
            "z_pres out exactly and has no baseline",
        )


def sprites_run() -> RunConfig:
    """The defaults of coloured sprites (``airscene train --kind sprites``): 0-4 shapes over
    coloured backgrounds, masked objects in colour over a smooth background, DAIR, z_pres's
    stop baseline (measured: 53.1% count against NVIL's 33.6% at 5,000 steps)."""
    return RunConfig(
        data=DataConfig(
            kind="sprites", canvas_size=64, counts=(0, 1, 2, 3, 4), n_train=20_000, n_test=1_000
        ),
        model=ModelConfig(
            canvas_size=64,
            channels=3,
            max_steps=4,
            dair=True,
            core_pool=2,
            objects=MaskedConfig(),
            background="smooth",
        ),
        train=TrainConfig(steps=5_000, background_detail_steps=1_500, z_pres_baseline="stop"),
    )


def scenes3d_run() -> RunConfig:
    """The defaults of the 3D experiment (``airscene train --kind scenes3d``): rendered scenes of
    0-3 objects, the renderer as the object model, and its recipe; every flag still applies."""
    return RunConfig(
        data=DataConfig(
            kind="scenes3d", canvas_size=64, counts=(0, 1, 2, 3), n_train=20_000, n_test=1_000
        ),
        # DAIR and a wide coarse-to-fine blur: the best of the first runs (README, "AIR over the
        # renderer"); AIR without blur learnt to infer nothing.
        model=ModelConfig(
            canvas_size=64, max_steps=3, dair=True, z_pres_prior=1e-3, objects=RenderedConfig()
        ),
        train=TrainConfig(
            steps=2_500,
            likelihood_blur_start=10.0,
            likelihood_blur_steps=2_000,
            eval_every=250,
            checkpoint_every=500,
        ),
    )


@dataclass(frozen=True)
class DownstreamSettings:
    """Sizes and readers of one run of the downstream experiment (full or quick)."""

    label_sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    test_scenes: int = 5_000
    classifier_steps: int = 6_000  # minibatches of 64 for every classifier on 1,000+ labels
    small_set_steps: int = 1_000  # the same under 1,000 labels (a few batches: more only overfit)
    vae_steps: int = 10_000
    repeats_below_1000: int = 3  # small labelled sets are drawn this many times; mean reported
    # Each labelled scene is also given to the latent readers as this many draws from its
    # representation's posterior (AIR's q(z | x), the VAE's q(z | x)) beside its posterior
    # mean: the posterior's own spread as data augmentation.
    posterior_draws: int = 8
    # Every classifier's learning rate decays to 0 over its steps (a cosine): one fit then ends
    # settled instead of wherever its last minibatches left it (measured with
    # benchmarks/downstream_readout.py --learning-rate; README, downstream tasks).
    cosine: bool = True
    # From 1,000 labels up, each object readout is fitted this many times on the same labelled
    # scenes (initialisation and minibatches seeded seed + k) and answers with the fits' class
    # probabilities averaged (an ensemble, still a reader of the same inputs); the single fits'
    # accuracies are kept in the JSON beside it.
    readout_fits: int = 3
    # The two that ``airscene experiment downstream`` takes as flags (the rest are its sizes).
    explain_away: int = param(
        1,
        "read each object's z_what again with the scene's other objects removed from the image, "
        "this many passes (GlimpseObjects.explain_away; 0: as inference read it; default: 1)",
    )
    test_draws: int = param(
        8,
        "every latent reader answers a test scene with its class probabilities averaged over the "
        "posterior mean and this many draws from q(z | x), AIR's or the VAE's (0: at the mean "
        "only; the CNN on pixels has no posterior; default: 8, with --quick 2)",
    )

    def __post_init__(self) -> None:
        for name in ("explain_away", "test_draws", "posterior_draws"):
            value = getattr(self, name)
            _check(value >= 0, f"{name} must be 0 or more, got {value}")

    @classmethod
    def quick(cls) -> DownstreamSettings:
        return cls(
            label_sizes=(10, 100, 1_000),
            test_scenes=1_000,
            classifier_steps=400,
            small_set_steps=400,
            vae_steps=1_500,
            repeats_below_1000=1,
            posterior_draws=2,
            readout_fits=2,
            test_draws=2,
        )
