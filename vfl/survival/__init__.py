"""Survival analysis: Cox proportional hazards, centralized and vertical."""
