"""Which images a step of the recurrent loop still runs for, and the noise it draws for them.

A step of AIR is *decided* for an image while every earlier z_pres of that image was 1; the
others enter no term of p or q (they are masked), so the loops of the inference network and of
the baseline network compute each step only for the images it is decided for. ``ActiveRows``
holds those images, takes their rows out of a batch, keeps the ones that go on, and packs what
each step computed into one table (``Packed``) that is scattered back into (B, N, ...) at the
end, with zeros for undecided steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def decided_steps(z_pres: torch.Tensor) -> torch.Tensor:
    """(B, N) 1 where step i's z_pres was actually decided: every earlier object was present."""
    return torch.cat([torch.ones_like(z_pres[:, :1]), z_pres[:, :-1]], dim=1)


class ActiveRows:
    """The images (rows of a batch of ``batch``) whose current step of ``steps`` is decided."""

    def __init__(self, batch: int, steps: int, device: torch.device) -> None:
        self.batch, self.steps = batch, steps
        self.index = torch.arange(batch, device=device)  # (K,) rows still running
        self._flat: list[torch.Tensor] = []  # per recorded step, its rows' places in B * N

    @property
    def every_row(self) -> bool:
        return self.index.numel() == self.batch

    def __len__(self) -> int:
        return self.index.numel()

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """The active rows of a (B, ...) tensor, (K, ...); the tensor itself while all are."""
        return tensor if self.every_row else tensor[self.index]

    def record(self, step: int) -> None:
        """Note that the values of ``step`` are about to be computed for the active rows."""
        self._flat.append(self.index * self.steps + step)

    def keep(self, keep: torch.Tensor, *carried: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Go on with the active rows at positions ``keep`` (K',) only; returns the ``carried``
        (K, ...) tensors cut to those rows."""
        if keep.numel() == self.index.numel():
            return carried
        self.index = self.index[keep]
        return tuple(tensor[keep] for tensor in carried)

    def pack(self, values: dict[str, list[torch.Tensor]]) -> Packed:
        """The values of every recorded step ((K_t, ...) floating point tensors per name, in
        step order) side by side in one (K, F) table: one scatter (and one in the backward pass)
        for all of them, instead of one per name."""
        names = list(values)
        for name in names:
            first = values[name][0]
            if first.dim() < 1 or not first.is_floating_point():
                raise TypeError(f"{name}: pack takes floating (K, ...) values, got {first.dtype}")
        flat = [name for name in names if values[name][0].dim() == 1]
        wide = [name for name in names if values[name][0].dim() > 1]
        blocks = []
        for t in range(len(self._flat)):
            parts = [torch.stack([values[name][t] for name in flat], dim=1)] if flat else []
            parts += [_as_columns(values[name][t]) for name in wide]
            blocks.append(torch.cat(parts, dim=1))  # (K_t, F)
        wide_shapes = {name: values[name][0].shape[1:] for name in wide}
        return Packed(torch.cat(blocks), flat, wide_shapes, self, self.flat_index())

    def flat_index(self) -> torch.Tensor:
        """(K,) the place in B * N of every recorded row, in the order ``pack`` lays them out."""
        return torch.cat(self._flat)


def _as_columns(value: torch.Tensor) -> torch.Tensor:
    return value if value.dim() == 2 else value.flatten(1)


@dataclass
class Packed:
    """Per-step values of the active rows, packed by ``ActiveRows.pack``: rows in step order,
    the one-dimensional values' columns first, then each wider value's."""

    table: torch.Tensor  # (K, F) every recorded row of every step
    flat: list[str]  # names of values with one number per row, one column each
    wide: dict[str, torch.Size]  # names of wider values, and one row's shape
    rows: ActiveRows
    flat_index: torch.Tensor  # (K,) each table row's place in B * N

    def columns(self) -> dict[str, torch.Tensor]:
        """Every name's values of every recorded row, (K, ...)."""
        return self._split(self.table)

    def scatter(self) -> dict[str, torch.Tensor]:
        """Every name as one (B, N, ...) tensor, zero where a step was not computed."""
        rows, table = self.rows, self.table
        every = table.new_zeros(rows.batch * rows.steps, table.shape[1])
        every = every.index_copy(0, self.flat_index, table).view(rows.batch, rows.steps, -1)
        return self._split(every)

    def _split(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(self.flat)
        out = dict(zip(self.flat, table[..., :n].unbind(-1), strict=True))
        widths = [math.prod(shape) for shape in self.wide.values()]
        parts = table[..., n:].split(widths, dim=-1)
        for (name, shape), part in zip(self.wide.items(), parts, strict=True):
            out[name] = part if len(shape) == 1 else part.reshape(*table.shape[:-1], *shape)
        return out


# Where noise comes from: one generator for the whole batch, or one per equal slice of it (the
# shards of a data-parallel minibatch, so one process can draw what several would).
Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal(
    shape: torch.Size | tuple, like: torch.Tensor, generator: Generators
) -> torch.Tensor:
    """Standard-normal draws of ``shape`` on ``like``'s device and dtype."""
    return _draw(torch.randn, shape, like, generator)


def truncated_normal(low: torch.Tensor, high: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard-normal draws truncated to [``low``, ``high``] (elementwise, same shape), by the
    inverse CDF at a uniform draw between the bounds' CDFs."""
    lower, upper = torch.special.ndtr(low), torch.special.ndtr(high)
    u = lower + (upper - lower) * uniform(low.shape, low, generator)
    return torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7)).clamp(low, high)


def uniform(shape: torch.Size | tuple, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """U(0, 1) draws of ``shape`` on ``like``'s device and dtype."""
    return _draw(torch.rand, shape, like, generator)


def _draw(sample, shape, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """``sample(shape)`` from one generator; from several, each draws its equal slice of the
    first dimension and the slices are joined in order."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return sample(shape, generator=generator, device=like.device, dtype=like.dtype)
    shards = len(generator)
    if shape[0] % shards:
        raise ValueError(f"a batch of {shape[0]} does not split into {shards} equal shards")
    part = (shape[0] // shards, *shape[1:])
    return torch.cat(
        [sample(part, generator=g, device=like.device, dtype=like.dtype) for g in generator]
    )


class StepNoise:
    """The random draws of one inference step, for the active rows of a batch of ``batch``.

    Every draw is made for the whole batch and the rows taken from it, so the random stream does
    not depend on which images are still being inferred: the loop that skips the images whose
    objects have all been found draws exactly what the plain every-step loop draws.
    """

    def __init__(
        self,
        generator: Generators,
        batch: int,
        like: torch.Tensor,
        rows: ActiveRows | None = None,
    ) -> None:
        self.generator, self.batch, self.like, self.rows = generator, batch, like, rows

    def _rows(self, draws: torch.Tensor) -> torch.Tensor:
        return draws if self.rows is None else self.rows.take(draws)

    def uniform(self) -> torch.Tensor:
        """U(0, 1) draws, (K,)."""
        return self._rows(uniform((self.batch,), self.like, self.generator))

    def normal(self, dim: int) -> torch.Tensor:
        """Standard-normal draws, (K, dim)."""
        return self._rows(standard_normal((self.batch, dim), self.like, self.generator))

    def categorical(self, logits: torch.Tensor) -> torch.Tensor:
        """One draw per row from the categorical of ``logits`` (K, C), as int64 (K,): the
        inverse CDF at one uniform per image of the batch."""
        u = self.uniform().unsqueeze(1)  # (K, 1)
        cdf = torch.softmax(logits, dim=-1).cumsum(-1)
        return (cdf < u).sum(-1).clamp_max(logits.shape[-1] - 1)
