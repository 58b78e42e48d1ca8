"""The shared model as one flat parameter vector.

A Flax NNX module (an MLP, or logistic regression with ``hidden=()``, reusing
:class:`vfl.vertical.models.MLPBottom`) is split once into its graph definition and ``nnx.Param``
state; the state is raveled into a single float32 vector. Every horizontal component works
on such vectors and on stacks of them, ``(clients, P)``: deltas, weighted averages, robust
aggregators, compression, SCAFFOLD controls and the bytes on the wire. The vector layout
(the order of ``jax.tree`` leaves) is public and identical at every party because each builds
the same module from the same public config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from vfl.core.nn import MLPBottom


class FlatModel:
    def __init__(self, d_in: int, hidden: tuple[int, ...], n_outputs: int, seed: int):
        module = MLPBottom(d_in, tuple(hidden), n_outputs, rngs=nnx.Rngs(params=seed))
        self.graphdef, state = nnx.split(module, nnx.Param)
        flat, self.unravel = ravel_pytree(state)
        self.init = np.asarray(flat, dtype=np.float32)
        self.size = int(flat.shape[0])
        self.d_in, self.hidden, self.n_outputs = d_in, tuple(hidden), n_outputs
        # Which coordinates belong to the output layer ("head"): FedPer keeps them local.
        paths = jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.full(leaf.shape, "out" in jax.tree_util.keystr(path)),
            state,
        )
        mask, _ = ravel_pytree(paths)
        self.head_mask = np.asarray(mask, dtype=bool)

    def apply(self, flat, x):
        """Logits ``(rows, n_outputs)``; pure, jit- and vmap-friendly."""
        return nnx.merge(self.graphdef, self.unravel(flat))(x)

    def tree(self, flat) -> dict:
        """A flat vector as the module's parameters: nested dicts of numpy arrays
        (``{"layers": {0: {"kernel", "bias"}, ...}, "out": {"kernel", "bias"}}``)."""
        state = self.unravel(jnp.asarray(flat, dtype=jnp.float32))
        return jax.tree.map(np.asarray, nnx.to_pure_dict(state))

    @property
    def key(self) -> tuple:
        """Hashable identity of the architecture (cache key for compiled functions)."""
        return (self.d_in, self.hidden, self.n_outputs)
