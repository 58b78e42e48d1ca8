"""Private set intersection (PSI) for entity alignment: multi-party Diffie-Hellman over a
well-known group (party side :mod:`vfl.psi.participant`, coordinator side
:mod:`vfl.psi.coordinator`, group and hashing :mod:`vfl.psi.group`).

Protocol
--------
Group: the RFC 3526 2048-bit MODP group (group 14). ``p`` is a safe prime, ``p = 2q + 1``;
all values live in the subgroup of quadratic residues, which has prime order ``q``.

``H(x)`` hashes an identifier into that subgroup: SHA-256 in counter mode over a
domain-separated, length-prefixed encoding of (per-run public session salt, identifier),
expanded to 2048 + 128 bits, reduced mod ``p`` (statistical distance ~2^-128 from uniform)
and squared mod ``p`` (a quadratic residue). Because of the session salt, ``H`` values and
everything derived from them are useless in any other run.

With parties ``P_0 .. P_{n-1}`` arranged in a ring (the order given to :func:`run_psi`):

1. ``psi.start`` (coordinator -> each party, public: session salt, ring). ``P_i`` draws a
   secret exponent ``a_i`` from :mod:`secrets`, computes ``H(x)^{a_i}`` for each of its ids,
   and shuffles the list with a secret permutation ``pi_i`` (also from :mod:`secrets`). It
   answers ``psi.ready`` with its set size.
2. ``psi.round`` (coordinator -> each party): ``P_i`` sends its list to ``P_{i+1}``
   (``psi.blind``, masked). Every party that receives a list raises each element to its own
   exponent, keeps the order, and passes it on to its successor; the party that completes
   the ring (the list is then ``H(x)^{a_0 a_1 ... a_{n-1}}``) sends it to the coordinator
   (``psi.blinded``, masked). Exponentiation commutes, so an identifier held by several
   parties gives the same fully blinded value in each of their lists.
3. The coordinator, which holds no ids and no keys, intersects the fully blinded lists and
   tells each party which positions of *its own* list are in the intersection
   (``psi.positions``, plaintext-by-design: the intersection is the intended output).
4. Each party maps positions back through ``pi_i`` to its ids, sorts them by identifier
   string (so all parties get the same row order) and sends a digest of the sorted list
   (``psi.digest``, public). The coordinator checks that all digests agree
   (:class:`~vfl.core.errors.AlignmentMismatchError` otherwise) and sends ``psi.commit``. A party
   sets its aligned ids (:meth:`PSIParticipant.on_aligned`) only on commit. On any failure the
   coordinator sends ``psi.abort`` to every party it can reach: each drops its secrets and,
   if it had already committed in this run (a drop-out during the commit phase), revokes
   the alignment (:meth:`PSIParticipant.on_alignment_revoked`). So an aborted run (drop-out,
   empty intersection, mismatch) leaves no party with an alignment from that run.

The digest is keyed: next to its id list each party sends a "key share" ``G^{a_i}``
(``G`` = hash of the session salt under its own domain) around the same ring; it is
exponentiated by each relay, and the party that completes it keeps ``K = G^{a_0...a_{n-1}}``
instead of forwarding it (group Diffie-Hellman key agreement, as in Steiner-Tsudik-Waidner).
Every party ends up with the same ``K``; the coordinator only sees partial products. The
digest is ``HMAC-SHA256(SHA-256(domain, salt, K), sorted ids)``, so the coordinator cannot
confirm a guess of the intersection by hashing candidate ids (a plain hash of a small
intersection would be open to a dictionary attack). Digests are therefore different in every
run, even for the same result.

Exponents are short: 256-bit exponents drawn uniformly by :mod:`secrets`, in the prime-order
subgroup. Security rests on DDH in that subgroup with short exponents (the short-exponent
discrete-log assumption, Koshiba-Kurosawa 2004; with ``q`` prime there is no Pohlig-Hellman
shortcut, and the best known attack on a 256-bit exponent, Pollard's lambda, costs ~2^128,
above the ~112-bit strength of the 2048-bit group itself). Full-size exponents would be ~7x
slower for no gain in the overall security level.

Threat model
------------
Semi-honest (honest-but-curious) parties and coordinator, and no collusion between the
coordinator and any party. Hashing is modelled as a random oracle; blinded values are
pseudorandom under the decisional Diffie-Hellman assumption in the QR subgroup.

* **Each party learns**: which of its own ids are in the intersection (the output, so also
  the intersection size), and the set sizes of the other parties (the lengths of the lists
  it relays). It learns nothing about ids outside the intersection: the lists it relays are
  shuffled and blinded under keys it does not hold, so they are pseudorandom.
* **The coordinator learns**: every party's set size and, because it sees all fully blinded
  lists, the cardinality of the intersection of every subset of parties (how many elements
  exactly parties {A, B} share, and so on: the "Venn diagram" counts). It never learns an
  identifier or a hash of one that it could test guesses against: all values it sees
  (including the partially blinded lists it routes between parties in a deployment) are
  under at least one key it does not hold, and no two partially blinded lists of different
  origin share the same key set, so routing adds nothing to the above. The digests are keyed
  with ``K``, which it does not know.
* **A relaying party** sees other parties' lists only shuffled and blinded: it learns their
  sizes only.
* **Collusion (not covered)**: if the coordinator colludes with party ``P_j``, together they
  learn, for each of ``P_j``'s own ids, exactly which other parties hold it (element-level
  pairwise and subset intersections, not only the full intersection), and they can check
  guesses of the intersection against the digests (``P_j`` knows ``K``). Ids held by no one
  in the coalition stay hidden (testing a guess needs every party's exponent). Malicious
  behaviour (a party inputting a huge set of guessed ids, or a coordinator lying about
  positions) is out of scope; the digest check catches inconsistent outputs, not a lying
  coordinator that tells every party the same wrong thing.

Identifiers are compared as ``str(id)`` (UTF-8). Each party must use the same identifier
scheme (for example the same salted hash of a national id); otherwise the intersection is
empty, which :func:`run_psi` reports with :class:`~vfl.core.errors.EmptyIntersectionError`.

Performance: exponentiation runs in chunks with ``gmpy2``; ``workers`` > 1 spreads large
lists over a local :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn`` processes, so
scripts that use it need the usual ``if __name__ == "__main__":`` guard). A transient
``rich`` progress bar is shown for lists above :data:`PROGRESS_THRESHOLD` when
``progress=True`` (and stderr is a terminal).
"""

from vfl.psi.coordinator import run_psi
from vfl.psi.group import EXPONENT_BITS, GROUP, P, PSIInputError, PSIResult, Q, hash_to_group
from vfl.psi.participant import PSIParticipant

__all__ = [
    "EXPONENT_BITS",
    "GROUP",
    "P",
    "PSIInputError",
    "PSIParticipant",
    "PSIResult",
    "Q",
    "hash_to_group",
    "run_psi",
]
