"""Scattered digits: many small MNIST digits on a canvas, allowed to touch and overlap a little
(the layout SPAIR compared itself with AIR on: 48x48 canvases of 1-9 digits of 14 px).

The scenes come from the Multi-MNIST generator (``airscene.data.scenes``: MNIST train digits
for training, test digits for held-out scenes) with this family's defaults: the canvas, the
digit size, the counts and how much two digits may overlap; any flag still overrides them.
Digits that overlap a little make connected components a wrong counter here.
"""

from __future__ import annotations

import dataclasses

from airscene.config import DataConfig, GlimpseConfig, ModelConfig, RunConfig
from airscene.data.scenes import MultiMnist

CANVAS = 48
DIGIT_SIZE = 14  # the 28 px MNIST frame shrunk to this: its ink is about 10 px across
COUNTS = tuple(range(1, 10))
MAX_OVERLAP = 0.2


class ScatteredDigits(MultiMnist):
    """Many small MNIST digits that may touch and overlap a little (see the module)."""

    kind = "scattered-digits"
    title = "scattered digits: ink boxes and labels"

    def preset(self) -> RunConfig:
        data = DataConfig(
            kind=self.kind,
            canvas_size=CANVAS,
            digit_size=DIGIT_SIZE,
            counts=COUNTS,
            max_overlap=MAX_OVERLAP,
            placement="digit",  # nine digits of a scene fit in a few rounds, not thousands
        )
        # One glimpse per digit: the window's prior scale is a digit's ink (about 10 px of 48).
        objects = GlimpseConfig(z_where_prior_loc=(0.22, 0.0, 0.0))
        model = ModelConfig(canvas_size=CANVAS, max_steps=max(COUNTS) + 1, objects=objects)
        return dataclasses.replace(RunConfig(), data=data, model=model)


SCATTERED_DIGITS = ScatteredDigits()
