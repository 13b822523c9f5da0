"""Metrics; each module registers its metrics on import (see :mod:`attrib_bench.metrics.base`)."""

from attrib_bench.metrics.base import EvalContext, Metric, SampleSet, make_rows

__all__ = ["EvalContext", "Metric", "SampleSet", "make_rows"]
