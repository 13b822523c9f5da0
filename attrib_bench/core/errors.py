"""User-facing errors: one class per kind of mistake, each message one line that names the fix.

The CLI prints any :class:`AttribBenchError` as ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class AttribBenchError(Exception):
    """Base of every error a user can cause; the message is one line and names the fix."""


class UnknownNameError(AttribBenchError, KeyError):
    """A model, method or metric name that is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataNotFoundError(AttribBenchError):
    """The dataset is not where we looked for it."""


class CheckpointError(AttribBenchError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the one recorded for it."""


class InputShapeError(AttribBenchError, ValueError):
    """A tensor does not have the shape or range an image batch must have."""


class PluginError(AttribBenchError):
    """A user plugin module could not be imported."""


class TargetError(AttribBenchError, ValueError):
    """Target class indices of the wrong type, shape or range for the batch and the model."""


class MethodError(AttribBenchError):
    """An attribution method was misconfigured, or produced a map that is not finite."""


class NotApplicableError(MethodError):
    """The method needs something the model does not offer (e.g. CoDA-Net contribution maps)."""


class SettingError(AttribBenchError, ValueError):
    """A hyper-parameter that does not exist, has the wrong type, or names no selected part."""


class ModelOutputError(AttribBenchError, ValueError):
    """A model whose output is not (B, K) logits (a tuple, probabilities, the wrong shape)."""


class RunError(AttribBenchError):
    """A benchmark run that cannot start or continue as asked (e.g. an output folder clash)."""


class MetricError(AttribBenchError):
    """A metric cannot run as configured: too few samples, a model it cannot wrap, bad settings."""


class MethodSettingError(MethodError, SettingError):
    """A method's setting of the wrong type or outside its declared range (both kinds)."""


class MetricSettingError(MetricError, SettingError):
    """A metric's setting of the wrong type or outside its declared range (both kinds)."""


class TrainError(AttribBenchError):
    """A training run that cannot start as configured (e.g. a time budget too small to plan)."""


class PlotError(AttribBenchError):
    """Results that cannot be plotted or reported: missing, from an older version, or empty."""
