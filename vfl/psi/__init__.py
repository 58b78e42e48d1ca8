"""vfl/psi."""
