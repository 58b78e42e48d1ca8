"""Split-model pieces as Flax NNX modules: bottom models per party, a top model at the
active party.

The ``linear`` family (linear bottoms without bias, a ``sum`` top with one bias) is exactly
logistic / softmax / linear regression on all parties' columns, which is what the classic
vertical-LR protocols train; the ``mlp`` family gives each party a small MLP and the top an
MLP over the concatenated embeddings.

Modules are used functionally: :class:`ModelHandle` splits a module into its graph
definition and its ``nnx.Param`` state once, and jitted pure functions take the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from vfl.core.errors import ConfigError
from vfl.core.nn import MLPBottom

BOTTOMS = ("linear", "mlp")
TOPS = ("sum", "linear", "mlp")


class LinearBottom(nnx.Module):
    """``h = X W``: no bias, the top model owns the single intercept.

    Under a ``sum`` top (logistic/linear regression) ``W`` starts at zero, as the classic
    vertical-LR protocols do. Under a ``linear``/``mlp`` top it starts random (LeCun
    normal): with every embedding at zero the top's ReLUs would never pass a gradient.
    """

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, zero_init: bool = True):
        init = nnx.initializers.zeros if zero_init else nnx.initializers.lecun_normal()
        self.linear = nnx.Linear(d_in, d_out, use_bias=False, kernel_init=init, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


class SumTop(nnx.Module):
    """Adds the parties' embeddings and one bias: the linear-model top."""

    def __init__(self, d_out: int, *, rngs: nnx.Rngs):
        self.bias = nnx.Param(jnp.zeros((d_out,)))

    def __call__(self, embeddings):
        return sum(embeddings) + self.bias[...]


class ConcatTop(nnx.Module):
    """Concatenates the embeddings and applies a linear layer or an MLP."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, *, rngs: nnx.Rngs):
        self.body = MLPBottom(d_in, hidden, d_out, rngs=rngs) if hidden else nnx.Linear(
            d_in, d_out, rngs=rngs
        )

    def __call__(self, embeddings):
        return self.body(jnp.concatenate(embeddings, axis=-1))


@dataclass(frozen=True)
class ModelConfig:
    """The split architecture every party agrees on before training (public)."""

    bottom: str = "linear"
    top: str = "sum"
    hidden: tuple[int, ...] = (16,)
    embed_dim: int | None = None  # None: n_outputs for linear bottoms, 8 for mlp
    top_hidden: tuple[int, ...] = ()

    def __post_init__(self):
        if self.bottom not in BOTTOMS:
            raise ConfigError(f"bottom must be one of {BOTTOMS}, got {self.bottom!r}")
        if self.top not in TOPS:
            raise ConfigError(f"top must be one of {TOPS}, got {self.top!r}")

    def embedding_width(self, n_outputs: int) -> int:
        if self.top == "sum":
            if self.embed_dim not in (None, n_outputs):
                raise ConfigError(
                    f"a 'sum' top adds embeddings into the output, so embed_dim must equal "
                    f"the number of outputs ({n_outputs}); got {self.embed_dim}. Use "
                    "top='linear' or 'mlp' for wider embeddings."
                )
            return n_outputs
        if self.embed_dim is not None:
            return self.embed_dim
        return n_outputs if self.bottom == "linear" else 8

    def to_json(self) -> dict:
        return {
            "bottom": self.bottom,
            "top": self.top,
            "hidden": list(self.hidden),
            "embed_dim": self.embed_dim,
            "top_hidden": list(self.top_hidden),
        }


def make_bottom(config: ModelConfig, d_in: int, n_outputs: int, key) -> nnx.Module:
    width = config.embedding_width(n_outputs)
    rngs = nnx.Rngs(params=key)
    if config.bottom == "linear":
        return LinearBottom(d_in, width, rngs=rngs, zero_init=config.top == "sum")
    return MLPBottom(d_in, tuple(config.hidden), width, rngs=rngs)


def make_top(config: ModelConfig, n_parties: int, n_outputs: int, key) -> nnx.Module:
    rngs = nnx.Rngs(params=key)
    if config.top == "sum":
        return SumTop(n_outputs, rngs=rngs)
    width = config.embedding_width(n_outputs) * n_parties
    hidden = tuple(config.top_hidden) if config.top == "mlp" else ()
    return ConcatTop(width, hidden, n_outputs, rngs=rngs)


class ModelHandle:
    """A module split once into ``graphdef`` and ``nnx.Param`` state, used functionally."""

    def __init__(self, module: nnx.Module):
        self.graphdef, self.params = nnx.split(module, nnx.Param)

    def apply(self, params, *args):
        return nnx.merge(self.graphdef, params)(*args)

    def export(self, params) -> dict:
        """Parameters as a nested dict of numpy arrays (checkpoints, reports)."""
        return jax.tree.map(lambda a: jax.device_get(a), nnx.to_pure_dict(params))

    def load(self, pure: dict):
        state = jax.tree.map(lambda x: x, self.params)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
        return state
