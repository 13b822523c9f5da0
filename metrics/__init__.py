"""Metrics; each module registers its metrics on import."""
