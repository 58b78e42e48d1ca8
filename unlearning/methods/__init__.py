"""Unlearning methods: exact replay (:mod:`~unlearning.methods.exact`) and SISA
(:mod:`~unlearning.methods.sisa`: exact replay of one shard from a slice). Approximate
removal of a whole client (FedEraser-style calibrated replay) lives with the horizontal
trainer, in :mod:`horizontal.federaser`; the erasure service reaches it only through the
run's adapter (:class:`vfl.core.rounds.ClientRemovalAdapter`)."""
