"""Unlearning methods: exact replay, SISA (exact replay of one shard from a slice) and
approximate removal of a whole party/client (FedEraser-style calibrated replay)."""
