"""vfl: vertical federated learning for healthcare on JAX.

Parties hold different columns about the same patients, align them with private set
intersection, and train a split model through serialized, labelled messages.
"""

__version__ = "0.1.0"
