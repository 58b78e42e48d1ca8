"""vfl/attacks."""
