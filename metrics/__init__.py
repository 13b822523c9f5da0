"""Metrics; each module registers its metrics on import (see :mod:`attrib_bench.metrics.base`)."""

from attrib_bench.metrics import localisation, pixel_removal, randomisation
from attrib_bench.metrics.base import EvalContext, Metric, SampleSet, SelectContext, make_rows
from attrib_bench.metrics.emprt import EfficientMPRT  # noqa: F401 (registers it)
from attrib_bench.metrics.infidelity import Infidelity  # noqa: F401 (registers it)
from attrib_bench.metrics.insertion_deletion import InsertionDeletion  # noqa: F401
from attrib_bench.metrics.irof import IROF  # noqa: F401 (registers it)
from attrib_bench.metrics.localisation import Localisation, LocalisationDiFull
from attrib_bench.metrics.pixel_removal import PixelRemoval
from attrib_bench.metrics.random_logit import RandomLogit  # noqa: F401 (registers it)
from attrib_bench.metrics.randomisation import Randomisation
from attrib_bench.metrics.sensitivity import MaxSensitivity  # noqa: F401 (registers it)
from attrib_bench.metrics.smprt import SmoothMPRT  # noqa: F401 (registers it)

__all__ = [
    "EvalContext",
    "Localisation",
    "LocalisationDiFull",
    "Metric",
    "PixelRemoval",
    "Randomisation",
    "SampleSet",
    "SelectContext",
    "localisation",
    "make_rows",
    "pixel_removal",
    "randomisation",
]
