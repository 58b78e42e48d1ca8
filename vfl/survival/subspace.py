"""The hospital's optimizer for a vertical Cox model: Newton's method in the span of the
directions it has explored, exact after at most ``max_k d_k + 1`` protocol rounds.

Why not gradient descent. The risk sets make the Cox gradient full-batch, and every
protocol round costs Paillier work at each passive, so the number of rounds is what matters.
Newton on the full coefficient vector needs the cross-party blocks of the Hessian
``X_a^T W X_b``, which no party can form without seeing another's features.

What the hospital can do alone. A passive's coefficients are held as dual coefficients
(:mod:`vfl.vertical.source_layer`): ``beta_k = beta0_k + X_k^T P_k``. When the hospital
changes ``P_k`` by ``e``, the passive's embedding changes by ``X_k X_k^T e``, which the
hospital decrypts in the next forward pass. So each dual vector sent buys an exact pair
(``e``, image ``v = X_k X_k^T e``), and the hospital can evaluate the partial likelihood at
*any* point ``beta = beta_now + sum_j theta_j X_k^T e_j`` without further messages: its linear
predictor is ``eta_now + sum_j theta_j v_j``. Newton over ``theta`` (a few dozen unknowns)
runs at the hospital, on its own labels.

Which directions. After Newton in the current span, the gradient ``X^T g`` is orthogonal
to every explored direction, so probing passive ``k`` with the dual ``g`` (the per-patient
loss gradient: its coefficient direction is ``X_k^T g``) adds a new dimension unless that
block of the gradient is zero. A probe that adds nothing is replaced by a random dual next
round, so every passive's directions reach the rank of its features (a public count) and
the span becomes the whole coefficient space: Newton there is Newton on the full problem
(the maximum partial likelihood, to the solver's tolerance), and its inverse Hessian gives
the standard errors. The hospital's own coefficients are plain coordinates.

What the hospital learns. The images are differences of the embeddings it decrypts anyway
(``h_k = X_k beta_k``: with a linear source layer they reveal ``X_k X_k^T`` over training
rows to the hospital, as in every split model; README, "Threat model"). It never learns a
passive's coefficient directions ``X_k^T e``.

Collinearity. Each party checks its own columns at setup. Columns that are dependent *across*
parties make the images of different parties linearly dependent while every party's own
images are independent: the hospital detects it from the images it holds and refuses the
fit (:class:`~vfl.survival.errors.CollinearFeaturesError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vfl.survival.cox import (
    RiskSets,
    eta_gradient,
    neg_log_partial_likelihood,
    subspace_hessian,
)
from vfl.survival.errors import CollinearFeaturesError, CoxConvergenceError

#: A new image whose component outside the span of a party's earlier images is below this
#: fraction of its norm adds no direction (exact duplicates land near 1e-15).
RANK_TOL = 1e-8
#: Across parties: the smallest singular value of the column-normalized images, relative to
#: the largest, below which columns of different parties are called collinear. Every party's
#: features are rounded to 2^-20 after standardizing, so exactly dependent columns of two
#: parties stay dependent only to ~1e-6; legitimately correlated columns (0.997 for ACTG's
#: integer txgrp against tx) are far above.
COLLINEAR_TOL = 1e-5
#: Probes are scaled so that the dual change is at most this per patient (the fixed-point
#: dual coefficients are bounded by ``COEF_BOUND``; a modest probe keeps the linear
#: predictor near the optimum, where the partial likelihood is evaluated).
PROBE_SCALE = 1.0


@dataclass
class Directions:
    """One passive's explored directions: dual vectors and their images (columns)."""

    n_features: int
    columns: tuple[str, ...]
    duals: np.ndarray  # (n, r)
    images: np.ndarray  # (n, r)
    last: str = "none"  # outcome of the last probe: "added", "dependent", "zero", "none"

    @classmethod
    def empty(cls, n: int, n_features: int, columns) -> Directions:
        return cls(int(n_features), tuple(columns), np.zeros((n, 0)), np.zeros((n, 0)))

    @property
    def rank(self) -> int:
        return self.duals.shape[1]

    @property
    def full(self) -> bool:
        return self.rank >= self.n_features

    def offer(self, dual: np.ndarray, image: np.ndarray) -> str:
        """Keep the pair if its image adds a dimension to this party's images."""
        norm = float(np.linalg.norm(image))
        scale = max(1.0, float(np.abs(self.images).max(initial=0.0))) * np.sqrt(len(image))
        if not np.isfinite(norm) or norm <= 1e-12 * scale:
            self.last = "zero"
            return self.last
        if self.rank:
            q, _ = np.linalg.qr(self.images)
            residual = image - q @ (q.T @ image)
            if np.linalg.norm(residual) <= RANK_TOL * norm:
                self.last = "dependent"
                return self.last
        self.duals = np.column_stack([self.duals, dual])
        self.images = np.column_stack([self.images, image])
        self.last = "added"
        return self.last


@dataclass
class SentUpdate:
    """What the hospital sent a passive last round: the dual change actually applied (the
    fixed-point value) and the part of it that was a combination of known directions."""

    dual: np.ndarray  # (n,)
    correction: np.ndarray  # (r,) coefficients over the party's directions at send time
    probe: bool = True  # whether it explored a new direction (else only a correction)


@dataclass
class SubspaceNewton:
    """The hospital's optimizer state (party-local: built from labels, never sent)."""

    risk: RiskSets
    x_own: np.ndarray  # (n, d0) the hospital's own standardized, quantized features
    own_columns: tuple[str, ...]
    passives: dict[str, Directions]
    seed: int
    tol: float = 1e-12
    beta_own: np.ndarray = None  # (d0,)
    h: dict[str, np.ndarray] = field(default_factory=dict)  # current embeddings
    sent: dict[str, SentUpdate] = field(default_factory=dict)
    rounds: int = 0
    converged: bool = False
    loss: float = float("nan")
    newton_iterations: int = 0

    def __post_init__(self):
        if self.beta_own is None:
            self.beta_own = np.zeros(self.x_own.shape[1])
        self._rng = np.random.default_rng([int(self.seed), 0x636F78])  # "cox": public probes

    # -- the linear predictor -------------------------------------------------------------
    def eta(self) -> np.ndarray:
        out = self.x_own @ self.beta_own
        for name in self.passives:
            out = out + self.h[name]
        return out

    def basis(self) -> tuple[np.ndarray, list[tuple[str, slice]]]:
        """``[X_own | images of each passive]`` and where each party's block sits."""
        blocks, where = [self.x_own], [("", slice(0, self.x_own.shape[1]))]
        start = self.x_own.shape[1]
        for name, d in self.passives.items():
            blocks.append(d.images)
            where.append((name, slice(start, start + d.rank)))
            start += d.rank
        return np.column_stack(blocks), where

    # -- one protocol round ---------------------------------------------------------------
    def step(self, embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Take this round's decrypted embeddings; return each passive's next dual change
        (float64, before fixed-point rounding: call :meth:`record_sent` with what was
        actually sent). Sets :attr:`converged` when the last changes are the final
        correction to the maximum partial likelihood."""
        if self.converged:
            raise CoxConvergenceError("the fit has already converged; nothing to step")
        undo = {}
        for name, d in self.passives.items():
            h = np.asarray(embeddings[name], dtype=np.float64)
            if name in self.sent and self.sent[name].probe:
                s = self.sent[name]
                r = len(s.correction)
                dual = s.dual - d.duals[:, :r] @ s.correction
                image = (h - self.h[name]) - d.images[:, :r] @ s.correction
                if d.offer(dual, image) == "added":
                    undo[name] = d.rank - 1  # start Newton where the probe started
            self.h[name] = h
        self._check_collinear()
        a, where = self.basis()
        eta0 = self.eta()
        theta = np.zeros(a.shape[1])
        for name, sl in where:
            if name in undo:
                theta[sl.start + undo[name]] = -1.0
        theta = self._newton(eta0, a, theta)
        eta = eta0 + a @ theta
        self.loss = neg_log_partial_likelihood(eta, self.risk)
        self.beta_own = self.beta_own + theta[where[0][1]]
        self.rounds += 1
        done = all(d.full for d in self.passives.values())
        g = None if done else eta_gradient(eta, self.risk)
        out = {}
        for name, sl in where[1:]:
            d = self.passives[name]
            corr = theta[sl]
            change = d.duals @ corr
            explores = not d.full
            if explores:
                # the gradient, unless it added nothing last time: then a random direction
                # (public randomness; it carries no label)
                probe = g if d.last in ("none", "added") else self._rng.standard_normal(len(g))
                peak = float(np.abs(probe).max(initial=0.0))
                if peak > 0:
                    change = change + (PROBE_SCALE / peak) * probe
            out[name] = change
            self.sent[name] = SentUpdate(change, corr, explores)
        self.converged = done
        return out

    def record_sent(self, name: str, dual: np.ndarray) -> None:
        """The dual change the passive applies is the fixed-point value: keep that one (the
        pair must be exact)."""
        self.sent[name].dual = np.asarray(dual, dtype=np.float64)

    def finish(self, embeddings: dict[str, np.ndarray]) -> float:
        """The embeddings after the final correction: the fitted linear predictor."""
        for name in self.passives:
            self.h[name] = np.asarray(embeddings[name], dtype=np.float64)
        self.sent = {}
        self.loss = neg_log_partial_likelihood(self.eta(), self.risk)
        return self.loss

    # -- Newton over the span ---------------------------------------------------------------
    def _newton(self, eta0: np.ndarray, a: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Minimize ``L(eta0 + a @ theta)`` from ``theta`` (columns scaled to unit RMS for
        conditioning); Newton with backtracking. Stops when the Newton decrement is below
        ``tol**2`` relative to the loss (quadratic convergence makes the next step's error
        negligible) or at the float64 floor."""
        n = len(eta0)
        scale = np.linalg.norm(a, axis=0) / np.sqrt(n)
        scale[scale == 0] = 1.0
        an = a / scale
        phi = theta * scale
        f = neg_log_partial_likelihood(eta0 + an @ phi, self.risk)
        for _ in range(200):
            eta = eta0 + an @ phi
            grad = an.T @ eta_gradient(eta, self.risk)
            hess = subspace_hessian(eta, self.risk, an)
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                step = np.linalg.lstsq(hess, grad, rcond=None)[0]
            dec = float(grad @ step)
            self.newton_iterations += 1
            if not np.isfinite(dec):
                break
            if dec / 2 <= self.tol**2 * max(1.0, abs(f)):
                return (phi - step) / scale
            if dec <= 1e-8 * max(1.0, abs(f)):
                # The quadratic regime: a full step squares the error, and a line search
                # could not tell the decrease from float64 rounding of the loss.
                phi = phi - step
                f = neg_log_partial_likelihood(eta0 + an @ phi, self.risk)
                if np.abs(step).max(initial=0.0) <= 1e-13:
                    return phi / scale
                continue
            t = 1.0
            while True:
                cand = phi - t * step
                fc = neg_log_partial_likelihood(eta0 + an @ cand, self.risk)
                if np.isfinite(fc) and fc <= f - 0.25 * t * dec:
                    break
                t *= 0.5
                if t < 1e-12:
                    if dec <= 1e-16 * max(1.0, abs(f)):  # at float64's floor: converged
                        return phi / scale
                    raise CoxConvergenceError(
                        "Newton's line search failed at the hospital (the partial likelihood "
                        "does not decrease along the Newton direction): the data may be "
                        "separable (a covariate predicts the event order perfectly), which "
                        "drives a coefficient to infinity. Drop or merge that covariate")
            phi, f = cand, fc
        raise CoxConvergenceError(
            "Newton did not converge in 200 iterations at the hospital; the coefficients "
            "appear to diverge (separation or extreme covariates). Check the covariates")

    # -- collinearity across parties ----------------------------------------------------------
    def _check_collinear(self) -> None:
        a, where = self.basis()
        if a.shape[1] < 2:
            return
        norms = np.linalg.norm(a, axis=0)
        norms[norms == 0] = 1.0
        _, s, vt = np.linalg.svd(a / norms, full_matrices=False)
        if s[-1] > COLLINEAR_TOL * s[0]:
            return
        null = np.abs(vt[-1])
        involved = []
        for name, sl in where:
            w = null[sl]
            if not len(w) or w.max(initial=0.0) <= 0.05 * null.max():
                continue
            if name == "":
                cols = [c for c, wi in zip(self.own_columns, w) if wi > 0.05 * null.max()]
                involved.append(f"the hospital's {cols}")
            else:
                involved.append(f"{name!r} (one of {list(self.passives[name].columns)})")
        raise CollinearFeaturesError(
            "covariates held by different parties are linearly dependent: "
            + " and ".join(involved) + ". The partial likelihood has no unique maximum (the "
            "full design is singular); drop one of the dependent columns at its party and "
            "fit again")

    # -- standard errors ------------------------------------------------------------------------
    def covariance(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The inverse observed information over the explored coordinates, split into the
        hospital's own block (its coefficients' covariance) and each passive's block over
        its directions (``Cov_beta_k = B_k C_kk B_k^T`` with ``B_k`` the directions'
        coefficient changes, which only the passive can apply: :meth:`release_factor`)."""
        a, where = self.basis()
        hess = subspace_hessian(self.eta(), self.risk, a)
        cov = np.linalg.inv(hess)
        blocks = {name: cov[sl, sl] for name, sl in where[1:]}
        return cov[where[0][1], where[0][1]], blocks

    def release_factor(self, name: str, block: np.ndarray) -> np.ndarray:
        """``C = E L Q`` (patients x features): ``E`` the passive's dual directions, ``L``
        the Cholesky factor of its covariance block, ``Q`` a random orthogonal matrix (Haar).
        The passive computes ``Z = X_k^T C``; ``Z Z^T`` is its coefficients' covariance, and
        the random rotation leaves ``Z`` nothing else to tell."""
        d = self.passives[name]
        try:
            low = np.linalg.cholesky(0.5 * (block + block.T))
        except np.linalg.LinAlgError:
            raise CollinearFeaturesError(
                f"the observed information over {name!r}'s coefficients is singular: its "
                "columns are (nearly) dependent on other parties' columns; drop one of them"
            ) from None
        g = self._rng.standard_normal((d.rank, d.rank))
        q, r = np.linalg.qr(g)
        q = q * np.sign(np.diag(r))  # Haar-distributed (Mezzadri 2007)
        return d.duals @ low @ q
