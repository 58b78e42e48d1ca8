"""Jitted per-party computations, built once per (architecture, optimizer) and shared.

Every federation in a process (a scenario's vertical, local-only and centralized models;
an erasure's replay; a test's many runs) would otherwise wrap fresh closures in
``jax.jit`` and recompile identical programs. The functions here are pure: they take a
party's parameters and optimizer state as arguments and close over nothing private, so
sharing the compiled code across party objects shares no data between parties.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from vfl.core.optim import make_optimizer
from vfl.core.tasks import Task


class BottomFunctions(NamedTuple):
    forward: object  # (params, x) -> h
    backward: object  # (params, opt_state, x, dL/dh) -> (params, opt_state)
    jacobian: object  # (params, x) -> d vec(h) / d vec(params)
    step_with: object  # (params, opt_state, flat_grads) -> (params, opt_state)


class TopFunctions(NamedTuple):
    step: object  # (params, opt_state, x, y, mask, hs) -> (params, opt_state, loss, dL/dhs)
    predict: object  # (params, x, hs) -> predictions


def _apply(graphdef, params, *args):
    return nnx.merge(graphdef, params)(*args)


@functools.lru_cache(maxsize=256)
def bottom_functions(
    graphdef, optimizer, lr: float, wd: float, decay_biases: bool = True
) -> BottomFunctions:
    """``optimizer``: a name or an ``optax.GradientTransformation`` (hashable, so the
    compiled functions are shared per transformation object)."""
    tx = make_optimizer(optimizer, lr, wd, decay_biases=decay_biases)
    apply = functools.partial(_apply, graphdef)

    def backward(params, opt_state, x, g):
        _, vjp = jax.vjp(lambda p: apply(p, x), params)
        (grads,) = vjp(g)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def jacobian(params, x):
        flat, unravel = ravel_pytree(params)
        return jax.jacrev(lambda v: apply(unravel(v), x).reshape(-1))(flat)

    def step_with(params, opt_state, flat_grads):
        _, unravel = ravel_pytree(params)
        grads = unravel(flat_grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return BottomFunctions(jax.jit(apply), jax.jit(backward), jax.jit(jacobian), jax.jit(step_with))


@functools.lru_cache(maxsize=256)
def top_functions(
    bottom_graphdef,
    top_graphdef,
    task: Task,
    optimizer,
    lr: float,
    wd: float,
    decay_biases: bool = True,
) -> TopFunctions:
    tx = make_optimizer(optimizer, lr, wd, decay_biases=decay_biases)

    def logits_fn(params, x, hs):
        h0 = _apply(bottom_graphdef, params[0], x)
        return _apply(top_graphdef, params[1], [h0, *hs])

    def step(params, opt_state, x, y, mask, hs):
        def loss_fn(p, h):
            return task.loss(logits_fn(p, x, h), y, mask)

        loss, (g_params, g_hs) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, hs)
        updates, opt_state = tx.update(g_params, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, g_hs

    return TopFunctions(jax.jit(step), jax.jit(lambda p, x, hs: task.predict(logits_fn(p, x, hs))))
