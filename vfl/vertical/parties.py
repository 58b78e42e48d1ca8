"""The two roles of vertical training: the active party (labels, top model) and passive
parties (features only).

Each party keeps its rows, scaler, parameters and optimizer state to itself. What it tells
anyone else leaves through a returned :class:`~vfl.core.messages.Message`, labelled:

* passive -> active ``train.embedding``: the cut-layer embedding of the batch
  (``plaintext-by-design``, the documented leak of every split model);
* active -> passive ``train.cut_gradient`` in the ``plain`` protocol: dL/dh for the batch
  (``plaintext-by-design`` and label-dependent: the norm/direction of these gradients reveal
  labels, Li et al. 2021);
* under ``paillier`` (the default, :mod:`vfl.vertical.source_layer`): passive -> active
  ``train.enc_embedding`` (packed ciphertexts the active decrypts: the embedding, as in every
  split model) and active -> passive ``train.enc_update`` (``[[dP]]``, ciphertext under the
  active party's key). A passive receives nothing else but public control;
* under ``paillier-masked-gradient`` (opt-in, :mod:`vfl.vertical.masked_gradient`):
  ``train.enc_cut_gradient`` / ``train.masked_gradient`` / ``train.masked_gradient_plain``;
  the passive learns its own batch-aggregate gradient (refused where that is invertible);
* everything to and from the coordinator: public control, counts and the losses/metrics the
  active party chooses to report (the coordinator runs on the active party's side).

Threat model (README "Threat model"): semi-honest parties by default. Every handler checks
who sent the message (:meth:`TrainingParty._expect`): setup and every request come from the
coordinator only, gradients/updates from the active party only, embeddings from this run's
passives only; security settings are checked against the party's own
:class:`~vfl.vertical.config.SecurityPolicy`, never taken from the wire.

The checkpoint methods (:meth:`snapshot`, :meth:`restore`) are party-local: in a
deployment each party writes its own checkpoint to its own disk.
"""

from vfl.vertical.active import ActiveParty
from vfl.vertical.passive import PassiveParty
from vfl.vertical.training_party import MASKED, TrainingParty, pad_rows, party_key

__all__ = ["MASKED", "ActiveParty", "PassiveParty", "TrainingParty", "pad_rows", "party_key"]
