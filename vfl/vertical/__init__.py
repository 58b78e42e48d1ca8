"""vfl/vertical."""
