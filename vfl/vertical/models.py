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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from vfl.core import configs
from vfl.core.configs import codec, describe, refuse_custom
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


#: A bottom or top model given as a Python object: a factory
#: ``(d_in, d_out, *, rngs) -> nnx.Module`` (a module class or a function).
ModuleFactory = Callable[..., nnx.Module]

#: Models registered by name (:func:`register_model`), usable as a bottom or a top.
_REGISTERED: dict[str, ModuleFactory] = {}


def register_model(name: str, factory: ModuleFactory) -> None:
    """Make ``name`` usable as ``ModelConfig(bottom=name)`` or ``top=name`` in this process:
    ``factory(d_in, d_out, *, rngs)`` builds the module. A name (unlike a factory object)
    travels in a config's JSON, so a setup message or a run manifest can carry it; every
    process that reads the config must register the same name."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"a model name must be a non-empty string without ':', got {name!r}")
    if name in BOTTOMS or name in TOPS:
        raise ConfigError(f"{name!r} is a built-in model; choose another name")
    if not callable(factory) or isinstance(factory, nnx.Module):
        raise ConfigError(f"the factory for model {name!r} must be a module class or a "
                          "function (d_in, d_out, *, rngs) -> nnx.Module")
    _REGISTERED[name] = factory


def is_custom_model(spec) -> bool:
    """Whether a bottom/top setting is a Python factory (not a name)."""
    return not isinstance(spec, str)


def _check_spec(spec, builtin: tuple[str, ...], what: str) -> None:
    if isinstance(spec, str):
        if spec not in builtin and spec not in _REGISTERED:
            raise ConfigError(
                f"{what} must be one of {builtin}, a name given to register_model, or a "
                f"factory (d_in, d_out, *, rngs) -> nnx.Module; got {spec!r}"
            )
        return
    if isinstance(spec, nnx.Module) or not callable(spec):
        raise ConfigError(
            f"{what} must be a factory (d_in, d_out, *, rngs) -> nnx.Module (the module "
            f"class or a function), not {type(spec).__name__}: every party builds its own "
            "module from the public seed"
        )


def spec_json(spec):
    """A bottom/top setting as JSON: names as they are, factories as descriptions."""
    if isinstance(spec, Mapping):
        return {str(k): spec_json(v) for k, v in spec.items()}
    return spec if isinstance(spec, str) else describe(spec)


def _decode_spec(setting: str):
    def decode(value):
        refuse_custom(setting, value, register="vfl.vertical.models.register_model")
        return dict(value) if isinstance(value, dict) else value

    return decode


@dataclass(frozen=True)
class ModelConfig:
    """The split architecture every party agrees on before training (public).

    ``bottom``: ``linear``, ``mlp``, a registered name (:func:`register_model`) or a factory
    ``(d_in, d_out, *, rngs) -> nnx.Module``, for every party; or a mapping from party
    name to one of those (parties it does not name get ``linear``). ``top``: ``sum``,
    ``linear``, ``mlp``, a registered name or a factory; a custom top receives the
    concatenated embeddings (``d_in`` = parties x embedding width). A factory gets
    ``rngs = nnx.Rngs(key)`` from the party's own key; its module must hold only
    ``nnx.Param`` state (no dropout or batch statistics) and map ``(rows, d_in)`` to
    ``(rows, d_out)``. Under the ``paillier`` protocol a passive party's source layer is
    linear (it is held encrypted), so a custom bottom works there only at the active party.
    """

    bottom: str | ModuleFactory | Mapping[str, str | ModuleFactory] = field(
        default="linear",
        metadata=codec(encode=spec_json, decode=_decode_spec("model.bottom")),
    )
    top: str | ModuleFactory = field(
        default="sum", metadata=codec(encode=spec_json, decode=_decode_spec("model.top"))
    )
    hidden: tuple[int, ...] = (16,)
    embed_dim: int | None = None  # None: n_outputs for linear bottoms, 8 for others
    top_hidden: tuple[int, ...] = ()

    def __post_init__(self):
        if isinstance(self.bottom, Mapping):
            if not self.bottom:
                raise ConfigError("a per-party bottom mapping must name at least one party")
            for party, spec in self.bottom.items():
                if not isinstance(party, str):
                    raise ConfigError(f"bottom mapping keys are party names, got {party!r}")
                _check_spec(spec, BOTTOMS, f"bottom[{party!r}]")
        else:
            _check_spec(self.bottom, BOTTOMS, "bottom")
        _check_spec(self.top, TOPS, "top")

    def bottom_for(self, party: str | None) -> str | ModuleFactory:
        """The bottom of ``party`` (``linear`` for a party a mapping does not name)."""
        if isinstance(self.bottom, Mapping):
            return self.bottom.get(party, "linear")
        return self.bottom

    @property
    def is_portable(self) -> bool:
        """Whether the JSON of this architecture rebuilds it (no factory objects)."""
        specs = list(self.bottom.values()) if isinstance(self.bottom, Mapping) else [
            self.bottom
        ]
        return not any(is_custom_model(s) for s in [*specs, self.top])

    def _all_linear(self) -> bool:
        if isinstance(self.bottom, Mapping):
            return all(isinstance(s, str) and s == "linear" for s in self.bottom.values())
        return isinstance(self.bottom, str) and self.bottom == "linear"

    def embedding_width(self, n_outputs: int) -> int:
        if isinstance(self.top, str) and self.top == "sum":
            if self.embed_dim not in (None, n_outputs):
                raise ConfigError(
                    f"a 'sum' top adds embeddings into the output, so embed_dim must equal "
                    f"the number of outputs ({n_outputs}); got {self.embed_dim}. Use "
                    "top='linear' or 'mlp' for wider embeddings."
                )
            return n_outputs
        if self.embed_dim is not None:
            return self.embed_dim
        return n_outputs if self._all_linear() else 8

    def to_json(self) -> dict:
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj: dict) -> ModelConfig:
        return configs.from_json(cls, obj)


class CustomTop(nnx.Module):
    """A user module applied to the concatenated embeddings."""

    def __init__(self, body: nnx.Module):
        self.body = body

    def __call__(self, embeddings):
        return self.body(jnp.concatenate(embeddings, axis=-1))


def _resolve(spec) -> ModuleFactory:
    return _REGISTERED[spec] if isinstance(spec, str) else spec


def _build_custom(spec, d_in: int, d_out: int, key, what: str) -> nnx.Module:
    """Build a user module and check it: only ``nnx.Param`` state, ``(rows, d_out)`` out."""
    # one default stream from the party's key: rngs(), rngs.params() and layers all work
    module = _resolve(spec)(d_in, d_out, rngs=nnx.Rngs(key))
    if not isinstance(module, nnx.Module):
        raise ConfigError(f"the {what} factory {spec_json(spec)!r} returned "
                          f"{type(module).__name__}, not an nnx.Module")
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ConfigError(
            f"the {what} module {spec_json(spec)!r} holds state other than nnx.Param "
            "(dropout RNGs, batch statistics); the parties train parameters only"
        )
    try:
        out = jax.eval_shape(
            lambda p, x: nnx.merge(graphdef, p)(x),
            params,
            jax.ShapeDtypeStruct((2, d_in), jnp.float32),
        )
        shape = getattr(out, "shape", None)
    except Exception as exc:  # a user module that cannot run on (rows, d_in) inputs
        raise ConfigError(
            f"the {what} module {spec_json(spec)!r} fails on a (rows, {d_in}) input: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if shape != (2, d_out):
        raise ConfigError(
            f"the {what} module {spec_json(spec)!r} maps (rows, {d_in}) to {shape}; "
            f"expected (rows, {d_out})"
        )
    return module


def make_bottom(
    config: ModelConfig, d_in: int, n_outputs: int, key, party: str | None = None
) -> nnx.Module:
    width = config.embedding_width(n_outputs)
    spec = config.bottom_for(party)
    if isinstance(spec, str) and spec == "linear":
        rngs = nnx.Rngs(params=key)
        return LinearBottom(d_in, width, rngs=rngs, zero_init=config.top == "sum")
    if isinstance(spec, str) and spec == "mlp":
        rngs = nnx.Rngs(params=key)
        return MLPBottom(d_in, tuple(config.hidden), width, rngs=rngs)
    return _build_custom(spec, d_in, width, key, "bottom")


def make_top(config: ModelConfig, n_parties: int, n_outputs: int, key) -> nnx.Module:
    top = config.top
    if isinstance(top, str) and top == "sum":
        return SumTop(n_outputs, rngs=nnx.Rngs(params=key))
    width = config.embedding_width(n_outputs) * n_parties
    if isinstance(top, str) and top in ("linear", "mlp"):
        rngs = nnx.Rngs(params=key)
        hidden = tuple(config.top_hidden) if top == "mlp" else ()
        return ConcatTop(width, hidden, n_outputs, rngs=rngs)
    return CustomTop(_build_custom(top, width, n_outputs, key, "top"))


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
