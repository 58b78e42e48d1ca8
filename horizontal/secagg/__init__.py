"""Secure aggregation for the horizontal engine: SecAgg+ building blocks, transport-free.

The server of a federation learns the *sum* of the clients' updates and nothing else about
any one of them, even when some clients drop out mid-round, following Bonawitz et al.
("Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017) with the
sparse communication graph of Bell et al. ("Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020), the protocol Flower calls SecAgg+.

Threat model: a semi-honest server (it runs the protocol faithfully but is curious) that may
collude with up to ``t - 1`` of any client's share holders; any client may drop out at any
point. Not covered: a server that lies about who dropped out to different clients (the
malicious setting, which needs signatures and a consistency round), or inference from the
sum itself (differential privacy is a separate layer).

One concept per module:

* :mod:`~horizontal.secagg.graph` -- Harary communication graph, degree ``k`` and threshold
  ``t`` from ``n`` and the tolerated dropout and corruption fractions;
* :mod:`~horizontal.secagg.shamir` -- t-of-m sharing of 32-byte secrets over GF(2^128)
  (pycryptodome's field, batched);
* :mod:`~horizontal.secagg.keys` -- the two X25519 key pairs, HKDF, encrypted shares;
* :mod:`~horizontal.secagg.masks` -- ChaCha20 expansion of seeds into Z_{2^k} masks;
* :mod:`~horizontal.secagg.quantize` -- fixed point into the ring, overflow bound;
* :mod:`~horizontal.secagg.protocol` -- the four rounds, client and server side;
* :mod:`~horizontal.secagg.errors` -- the exceptions.
"""

from horizontal.secagg.errors import (
    InfeasibleParametersError,
    KeyAgreementError,
    MaskReconstructionError,
    NotEnoughSharesError,
    QuantizationError,
    RingOverflowError,
    SecAggError,
    SecAggProtocolError,
    SecretSharingError,
    ShareDecryptionError,
    TooManyDropoutsError,
)
from horizontal.secagg.graph import (
    GraphParameters,
    SecAggGraph,
    build_graph,
    choose_parameters,
    plan_graph,
)
from horizontal.secagg.protocol import (
    AggregateResult,
    ClientState,
    SecAggSetup,
    ServerState,
    check_unmask_plan,
    client_advertise,
    client_masked_input,
    client_share_keys,
    client_unmask,
    server_collect_keys,
    server_collect_masked,
    server_collect_shares,
    server_start,
    server_unmask,
    simulate,
)
from horizontal.secagg.quantize import Quantizer

__all__ = [
    "AggregateResult",
    "ClientState",
    "GraphParameters",
    "InfeasibleParametersError",
    "KeyAgreementError",
    "MaskReconstructionError",
    "NotEnoughSharesError",
    "QuantizationError",
    "Quantizer",
    "RingOverflowError",
    "SecAggError",
    "SecAggGraph",
    "SecAggProtocolError",
    "SecAggSetup",
    "SecretSharingError",
    "ServerState",
    "ShareDecryptionError",
    "TooManyDropoutsError",
    "build_graph",
    "check_unmask_plan",
    "choose_parameters",
    "client_advertise",
    "client_masked_input",
    "client_share_keys",
    "client_unmask",
    "plan_graph",
    "server_collect_keys",
    "server_collect_masked",
    "server_collect_shares",
    "server_start",
    "server_unmask",
    "simulate",
]
