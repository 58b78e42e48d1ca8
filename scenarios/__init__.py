"""Runnable end-to-end scenarios: ``python -m scenarios.NAME`` or ``vfl run NAME``."""
