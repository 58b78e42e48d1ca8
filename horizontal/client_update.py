"""A client's local training as one pure function (FedJAX-style ``client_update``).

``train(w_start, anchor, corr, mu, x, y, pos, bmask, active) -> (w_end, mean_loss)`` runs
``S`` local steps with ``jax.lax.scan``: step ``s`` takes the rows ``x[pos[s]]`` (padding
slots have ``bmask`` 0) and, if ``active[s]``, moves the parameters along

    grad L(w) + mu * (w - anchor) + corr

``mu`` is FedProx's proximal weight (with ``mu = 0`` the term is exactly zero, so FedProx
reduces to FedAvg bit for bit), ``corr`` is SCAFFOLD's control correction ``c - c_i``
(zeros otherwise). ``active`` lets one compiled program serve clients with different step
counts (small clients, stragglers that stop at the deadline, padding clients in a vmapped
chunk): an inactive step leaves the parameters and optimizer state untouched.

The function is pure, so :mod:`horizontal.simulation` can ``jit`` it for one client or
``jit(vmap(...))`` it over a chunk of clients and get the same numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from horizontal.flat_model import FlatModel
from vfl.core.optim import make_optimizer
from vfl.core.tasks import Task


def client_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """The clients' local optimizer: SGD, or SGD with momentum 0.9 (``momentum``)."""
    return make_optimizer("momentum" if name == "momentum" else "sgd", lr)


def batch_loss(model: FlatModel, task: Task):
    """``loss_fn(w, xb, yb, mb)``: the mean loss of the batch's rows with ``mb`` 1."""
    def loss_fn(w, xb, yb, mb):
        return task.loss(model.apply(w, xb), yb, mb)

    return loss_fn


def local_steps(tx: optax.GradientTransformation, grad_step, w_start, anchor, corr, mu, x, y,
                pos, bmask, active):
    """The local steps' ``lax.scan`` shared by :func:`make_local_train` and
    :func:`horizontal.dp.dpsgd.make_dp_local_train`: ``(w_end, mean_loss)``.

    ``grad_step(w, xb, yb, mb, i) -> (loss, g)`` is step ``i``'s loss and gradient on the
    rows ``xb, yb`` with mask ``mb``; the step adds ``mu * (w - anchor) + corr`` and applies
    ``tx``, and an inactive step leaves the parameters and optimizer state untouched.
    """
    def step(carry, inp):
        w, s = carry
        p, m, a, i = inp
        loss, g = grad_step(w, x[p], y[p], m, i)
        g = g + mu * (w - anchor) + corr
        upd, s_new = tx.update(g, s, w)
        w_new = optax.apply_updates(w, upd)
        w = jnp.where(a, w_new, w)
        s = jax.tree.map(lambda n, o: jnp.where(a, n, o), s_new, s)
        return (w, s), jnp.where(a, loss, 0.0)

    steps = jnp.arange(pos.shape[0])
    (w, _), losses = jax.lax.scan(step, (w_start, tx.init(w_start)),
                                  (pos, bmask, active, steps))
    return w, jnp.sum(losses) / jnp.maximum(jnp.sum(active), 1)


def make_local_train(model: FlatModel, task: Task, optimizer: str, lr: float):
    tx = client_optimizer(optimizer, lr)
    grad_fn = jax.value_and_grad(batch_loss(model, task))

    def grad_step(w, xb, yb, mb, i):
        return grad_fn(w, xb, yb, mb)

    def train(w_start, anchor, corr, mu, x, y, pos, bmask, active):
        return local_steps(tx, grad_step, w_start, anchor, corr, mu, x, y, pos, bmask, active)

    return train


@functools.lru_cache(maxsize=64)
def compiled(spec: tuple):
    """``(jit(train), jit(vmap(train)))`` for a spec, compiled lazily per shape and cached
    for the process, so repeated runs of one architecture never recompile.

    ``spec = (d_in, hidden, n_outputs, task_kind, n_classes, optimizer, lr)``, plus
    ``(("dp-sgd", clip_norm, noise_multiplier),)`` for record-level DP: then ``train`` is
    :func:`horizontal.dp.dpsgd.make_dp_local_train`'s, with two more arguments, the round's
    noise key as raw ``uint32[2]`` key data and the expected batch size.
    """
    d_in, hidden, n_out, kind, n_classes, optimizer, lr, *dp = spec
    model = FlatModel(d_in, hidden, n_out, seed=0)  # graph and layout only; values unused
    if not dp:
        train = make_local_train(model, Task(kind, n_classes), optimizer, lr)
        return jax.jit(train), jax.jit(jax.vmap(train))
    from horizontal.dp.dpsgd import make_dp_local_train

    (_, clip_norm, noise_multiplier), = dp
    dp_train = make_dp_local_train(model, Task(kind, n_classes), optimizer, lr,
                                   clip_norm=clip_norm, noise_multiplier=noise_multiplier)

    def train(w_start, anchor, corr, mu, x, y, pos, bmask, active, key_data, expected):
        return dp_train(w_start, anchor, corr, mu, x, y, pos, bmask, active,
                        jax.random.wrap_key_data(key_data), expected)

    return jax.jit(train), jax.jit(jax.vmap(train))


@functools.lru_cache(maxsize=16)
def compiled_predict(model_key: tuple, kind: str, n_classes):
    model = FlatModel(*model_key, seed=0)
    task = Task(kind, n_classes)
    return jax.jit(lambda w, x: task.predict(model.apply(w, x)))
