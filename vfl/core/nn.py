"""Flax NNX building blocks shared by the vertical and the horizontal models."""

from __future__ import annotations

import jax
from flax import nnx


class MLPBottom(nnx.Module):
    """ReLU layers of the given ``hidden`` widths, then a linear output layer."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, *, rngs: nnx.Rngs):
        sizes = (d_in, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.out = nnx.Linear(sizes[-1], d_out, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.out(x)
