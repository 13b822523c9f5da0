"""Runners: benchmark sweeps and training."""
