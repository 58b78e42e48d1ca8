"""The communication graph of SecAgg+: who shares keys with whom, and the threshold ``t``.

Why a graph at all
------------------
In Bonawitz et al. (CCS 2017) every client masks with *every* other client and secret-shares
its two secrets with all of them: ``O(n)`` work and traffic per client, ``O(n^2)`` for the
server. Bell et al. (CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", §3) show that it is enough for each client to do all of this with its ``k``
*neighbours* in a sparse graph, ``k = O(log n)``, provided the graph stays "good" whatever
the adversary does within its budget. The threat model is the paper's semi-honest one: the
server follows the protocol but is curious and may collude with up to a ``γ`` fraction of the
clients (per client: up to ``t - 1`` of its share holders); independently of the graph, up to
a ``δ`` fraction of clients drops out at any point.

A graph is good (the three conditions of Bell et al.'s sparse-graph analysis, §3) when

1. **secrecy** -- no honest client has ``t`` or more corrupt share holders, so the coalition
   cannot rebuild its self-mask seed or its mask key from shares alone;
2. **correctness** -- every client whose secret must be rebuilt keeps at least ``t`` live
   share holders after the dropouts;
3. **no partial sums** -- honest survivors stay connected once corrupt and dropped clients
   are removed; otherwise the server learns the sum of each component separately.

The graph used here
-------------------
A Harary graph ``H(k, n)`` (networkx's ``hkn_harary_graph``: a ring where each client is
joined to the ``k/2`` nearest on each side; for odd ``k`` diameters are added) whose ring
positions are given to the clients in a fixed order: sorted names, or -- recommended with a
sparse graph -- sorted by ``SHA-256(seed || name)`` for a seed drawn fresh per aggregation.
Share holders of client ``u`` are its closed neighbourhood ``{u} ∪ N(u)`` (``k + 1`` shares,
as in Bonawitz et al. and Flower, where a client keeps one share of its own secrets).

Choosing ``k`` and ``t`` (:func:`choose_parameters`)
----------------------------------------------------
Let ``c = ceil(γ n)`` corrupt and ``d = ceil(δ n)`` dropped clients (rounded up: asking for
5% of 12 clients means tolerating one). When the ring order
is a uniformly random relabelling chosen independently of which clients are corrupt or
drop (the paper's assumption: the graph is sampled after a static corruption), the
neighbourhood of a fixed client is a uniform ``k``-subset of the other ``n - 1`` clients, so
its corrupt and dropped neighbour counts are hypergeometric:
``X ~ HG(n-1, c, k)`` and ``Y ~ HG(n-1, d, k)``. With a statistical security parameter ``σ``
and a correctness parameter ``η`` (union bounds over the ``n`` clients, the paper's way of
turning per-client tails into whole-graph guarantees), for even ``k < n - 1``:

* ``t_sec`` = the least ``t`` with ``n · P[X >= t] <= 2^-σ``                    (secrecy)
* ``t = max(t_sec, floor((k + 1) / 2) + 1)``, a strict majority of the ``k + 1`` holders:
  even a server that raced a late masked input against a dropout verdict and asked half of
  the holders for one secret and half for the other could not reach ``t`` on both;
* ``n · P[Y > k - t] <= 2^-η``  (correctness; ``k - t`` because the owner may be gone too);
* ``n^2 / 2 · ((c + d) / n)^k <= 2^-σ`` (connectivity: the ring part of ``H(k, n)`` can only
  split at two disjoint runs of ``k/2`` consecutive removed clients, and ``k`` given
  positions are all removed with probability at most ``((c + d)/n)^k``).

The smallest even ``k`` meeting all three is used. The tails are exact (integer
arithmetic over binomial coefficients), not the Chernoff bounds of the paper, so ``k`` is no
larger than needed for this graph family. When no ``k < n - 1`` qualifies -- always the case
for small ``n`` at ``σ = 40`` (a few hundred clients are needed before a sparse graph pays) --
the graph is the complete graph, i.e. Bonawitz et al.'s protocol, as the paper itself does
for small ``n``; its guarantees are then deterministic, for every corruption and dropout
pattern within budget: ``t = max(c + 1, floor(n / 2) + 1)`` and ``n - d >= t``.

A fixed order (sorted names, no seed) gives the same graph, but the hypergeometric argument
then only holds if corruption and dropouts are independent of the names; a coalition that
can choose *which* clients to corrupt after seeing the order could surround a client. With a
complete graph the order does not matter.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx

from horizontal.secagg.errors import InfeasibleParametersError

#: Statistical security parameter: a whole-graph secrecy or connectivity failure has
#: probability at most 2^-DEFAULT_SIGMA over the random relabelling.
DEFAULT_SIGMA = 40
#: Correctness parameter: the round fails for lack of shares with probability <= 2^-DEFAULT_ETA.
DEFAULT_ETA = 30
#: The largest sparse degree searched; beyond it the complete graph is used.
MAX_SPARSE_DEGREE = 1024
#: Secure aggregation of two clients protects nothing: each learns the other from the sum.
MIN_CLIENTS = 3


@dataclass(frozen=True)
class GraphParameters:
    """The degree ``k`` and threshold ``t`` chosen for ``n`` clients, and why.

    ``log2_secrecy_failure`` and ``log2_correctness_failure`` are the union bounds of the
    module docstring (``-inf`` for the complete graph, whose guarantees are deterministic).
    """

    n: int
    k: int
    t: int
    complete: bool
    dropout: float
    corruption: float
    sigma: int
    eta: int
    log2_secrecy_failure: float
    log2_correctness_failure: float

    @property
    def max_corrupt(self) -> int:
        return math.ceil(self.corruption * self.n)

    @property
    def max_dropped(self) -> int:
        return math.ceil(self.dropout * self.n)


def _upper_tails(population: int, marked: int, draws: int) -> list[int]:
    """``tails[j]`` = numerator of ``P[X >= j]`` for ``X ~ HG(population, marked, draws)``,
    ``j = 0 .. draws + 1``; the common denominator is ``comb(population, draws)``."""
    pmf = [
        math.comb(marked, j) * math.comb(population - marked, draws - j)
        for j in range(draws + 1)
    ]
    tails = [0] * (draws + 2)
    for j in range(draws, -1, -1):
        tails[j] = tails[j + 1] + pmf[j]
    return tails


def _log2_ratio(num: int, den: int) -> float:
    return -math.inf if num == 0 else math.log2(num) - math.log2(den)


def _validate_fractions(n: int, dropout: float, corruption: float, sigma: int, eta: int):
    if not isinstance(n, int) or isinstance(n, bool) or n < MIN_CLIENTS:
        raise InfeasibleParametersError(
            f"secure aggregation needs at least {MIN_CLIENTS} clients, got n={n!r}: with two, "
            "each client learns the other's update from the sum"
        )
    for what, v in (("dropout", dropout), ("corruption", corruption)):
        if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v < 1):
            raise InfeasibleParametersError(f"{what} fraction must be in [0, 1), got {v!r}")
    if dropout + corruption >= 1:
        raise InfeasibleParametersError(
            f"dropout ({dropout}) + corruption ({corruption}) must stay below 1: some honest "
            "client has to survive for a sum to exist"
        )
    for what, v in (("sigma", sigma), ("eta", eta)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InfeasibleParametersError(f"{what} must be a positive integer, got {v!r}")


def _sparse_candidate(n: int, k: int, c: int, d: int, sigma: int, eta: int):
    """``(t, log2 secrecy failure, log2 correctness failure)`` for even ``k``, or None."""
    pop = n - 1
    den = math.comb(pop, k)
    corrupt, dropped = _upper_tails(pop, c, k), _upper_tails(pop, d, k)
    # secrecy: n * P[X >= t] <= 2^-sigma, in integers
    t_sec = next((t for t in range(1, k + 1) if n * corrupt[t] * 2**sigma <= den), k + 1)
    t = max(t_sec, (k + 1) // 2 + 1)
    if t > k:
        return None
    cor_num = n * dropped[k - t + 1]  # n * P[Y > k - t]
    if cor_num * 2**eta > den:
        return None
    removed = c + d
    # connectivity: n^2/2 * (removed/n)^k <= 2^-sigma
    con_num, con_den = n * n * removed**k, 2 * n**k
    if con_num * 2**sigma > con_den:
        return None
    log_sec = max(_log2_ratio(n * corrupt[t], den), _log2_ratio(con_num, con_den))
    return t, log_sec, _log2_ratio(cor_num, den)


def choose_parameters(
    n: int,
    *,
    dropout: float = 0.1,
    corruption: float = 0.1,
    sigma: int = DEFAULT_SIGMA,
    eta: int = DEFAULT_ETA,
) -> GraphParameters:
    """The degree ``k`` and threshold ``t`` for ``n`` clients (formula in the module docstring).

    Raises :class:`InfeasibleParametersError` when even the complete graph cannot tolerate the
    asked fractions (``n - ceil(δ n) < max(ceil(γ n) + 1, floor(n/2) + 1)``).
    """
    _validate_fractions(n, dropout, corruption, sigma, eta)
    c, d = math.ceil(corruption * n), math.ceil(dropout * n)
    for k in range(2, min(n - 2, MAX_SPARSE_DEGREE) + 1, 2):
        found = _sparse_candidate(n, k, c, d, sigma, eta)
        if found is not None:
            t, log_sec, log_cor = found
            return GraphParameters(n, k, t, False, dropout, corruption, sigma, eta,
                                   log_sec, log_cor)
    t = max(c + 1, n // 2 + 1)
    if n - d < t:
        raise InfeasibleParametersError(
            f"{n} clients cannot tolerate {d} dropouts (δ={dropout}) with {c} colluding "
            f"clients (γ={corruption}): the threshold must be at least {t} (more than the "
            f"colluders and a majority) but only {n - d} clients would be left; lower δ or γ, "
            "or add clients"
        )
    return GraphParameters(n, n - 1, t, True, dropout, corruption, sigma, eta,
                           -math.inf, -math.inf)


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def ring_order(names: Iterable[str], seed: bytes | None = None) -> tuple[str, ...]:
    """Ring positions: sorted names, or names sorted by ``SHA-256(seed || name)``."""
    names = sorted(names)
    if seed is None:
        return tuple(names)
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise InfeasibleParametersError("a relabelling seed must be at least 16 random bytes")

    def key(name: str) -> tuple[bytes, str]:
        return hashlib.sha256(_length_prefixed(b"vfl/secagg/v1/order", seed,
                                               name.encode("utf-8"))).digest(), name

    return tuple(sorted(names, key=key))


@dataclass(frozen=True)
class SecAggGraph:
    """Who masks with and holds shares for whom, and the reconstruction threshold ``t``.

    ``names`` is sorted; ``order`` is the ring; ``neighbours[u]`` is sorted and excludes
    ``u``; :meth:`holders` is the closed neighbourhood, the clients that hold a share of
    ``u``'s secrets (share index = position in that tuple + 1).
    """

    names: tuple[str, ...]
    order: tuple[str, ...]
    k: int
    t: int
    complete: bool
    seed: bytes | None = None
    neighbours: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    parameters: GraphParameters | None = field(default=None, compare=False)

    @property
    def n(self) -> int:
        return len(self.names)

    def holders(self, name: str) -> tuple[str, ...]:
        return tuple(sorted((name, *self.neighbours[name])))

    def are_neighbours(self, u: str, v: str) -> bool:
        return v in self.neighbours.get(u, ())

    def to_networkx(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(self.names)
        g.add_edges_from((u, v) for u in self.names for v in self.neighbours[u] if u < v)
        return g

    def to_payload(self) -> dict:
        """What the server announces; :meth:`from_payload` rebuilds the same graph."""
        return {"names": list(self.names), "k": self.k, "t": self.t,
                "seed": b"" if self.seed is None else self.seed}

    @classmethod
    def from_payload(cls, payload: Mapping) -> SecAggGraph:
        try:
            names, k, t, seed = payload["names"], payload["k"], payload["t"], payload["seed"]
        except (KeyError, TypeError):
            raise InfeasibleParametersError(
                "a graph payload needs 'names', 'k', 't' and 'seed'") from None
        if not isinstance(seed, bytes):
            raise InfeasibleParametersError("graph payload: 'seed' must be bytes")
        return build_graph(names, k, t, seed=seed or None)


def build_graph(names: Iterable[str], k: int, t: int, *, seed: bytes | None = None,
                parameters: GraphParameters | None = None) -> SecAggGraph:
    """The Harary graph ``H(k, n)`` on ``names`` (complete graph when ``k = n - 1``).

    ``t`` must satisfy ``2 <= t <= minimum degree``: at least two shares (one share *is* the
    secret), and a client whose shares are all needed must not depend on itself.
    """
    names = list(names)
    if not all(isinstance(x, str) and x for x in names):
        raise InfeasibleParametersError("client names must be non-empty strings")
    if len(set(names)) != len(names):
        raise InfeasibleParametersError("client names must be distinct")
    n = len(names)
    if n < MIN_CLIENTS:
        raise InfeasibleParametersError(
            f"secure aggregation needs at least {MIN_CLIENTS} clients, got {n}")
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= n - 1:
        raise InfeasibleParametersError(f"degree k must be an integer in [2, {n - 1}], got {k!r}")
    order = ring_order(names, seed)
    complete = k == n - 1
    base = nx.complete_graph(n) if complete else nx.hkn_harary_graph(k, n)
    label = dict(enumerate(order))
    neighbours = {label[i]: tuple(sorted(label[j] for j in base.neighbors(i))) for i in base}
    min_degree = min(len(v) for v in neighbours.values())
    if not isinstance(t, int) or isinstance(t, bool) or not 2 <= t <= min_degree:
        raise InfeasibleParametersError(
            f"threshold t must be an integer in [2, {min_degree}] for k={k}, n={n}; got {t!r}")
    if not nx.is_connected(base):  # Harary graphs are k-connected; a guard, not a branch
        raise InfeasibleParametersError(f"H({k}, {n}) is not connected")
    return SecAggGraph(
        names=tuple(sorted(names)), order=order, k=k, t=t, complete=complete, seed=seed,
        neighbours=MappingProxyType(neighbours), parameters=parameters,
    )


def plan_graph(
    names: Iterable[str],
    *,
    dropout: float = 0.1,
    corruption: float = 0.1,
    sigma: int = DEFAULT_SIGMA,
    eta: int = DEFAULT_ETA,
    seed: bytes | None = None,
) -> SecAggGraph:
    """:func:`choose_parameters` for ``len(names)`` clients, then :func:`build_graph`."""
    names = list(names)
    params = choose_parameters(len(names), dropout=dropout, corruption=corruption,
                               sigma=sigma, eta=eta)
    return build_graph(names, params.k, params.t, seed=seed, parameters=params)
