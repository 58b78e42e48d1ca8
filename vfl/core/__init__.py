"""vfl/core."""
