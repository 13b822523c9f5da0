"""Attribution methods; each module registers its methods on import.

``create_method(name, model, **hparams).attribute(inputs, target) -> (B, H, W)``; see
:mod:`attrib_bench.methods.base` for the contract. captum, lime and scikit-image are imported
when a method is built, so listing the registry stays fast.
"""

from attrib_bench.core.registry import applicable_methods  # re-exported: it lives with the registry
from attrib_bench.methods import (
    controls,
    gradcam,
    gradients,
    inherent,
    lime,
    occlusion,
    perturbation,
    rise,
)
from attrib_bench.methods.base import (
    AttributionMethod,
    FunctionMethod,
    eval_mode,
    function_method,
)
from attrib_bench.methods.controls import CentreControl, EdgesControl, RandomControl
from attrib_bench.methods.gradcam import GradCAM
from attrib_bench.methods.gradients import DeepLift, Grad, InputXGradient, IntegratedGradients
from attrib_bench.methods.inherent import Inherent
from attrib_bench.methods.lime import LIME
from attrib_bench.methods.occlusion import Occlusion
from attrib_bench.methods.perturbation import (
    BlackBoxMethod,
    PerturbationMethod,
    Perturbations,
    PerturbedScores,
)
from attrib_bench.methods.rise import RISE, rise_masks

__all__ = [
    "LIME",
    "RISE",
    "AttributionMethod",
    "BlackBoxMethod",
    "CentreControl",
    "DeepLift",
    "EdgesControl",
    "FunctionMethod",
    "Grad",
    "GradCAM",
    "Inherent",
    "InputXGradient",
    "IntegratedGradients",
    "Occlusion",
    "PerturbationMethod",
    "PerturbedScores",
    "Perturbations",
    "RandomControl",
    "applicable_methods",
    "controls",
    "eval_mode",
    "function_method",
    "gradcam",
    "gradients",
    "inherent",
    "lime",
    "occlusion",
    "perturbation",
    "rise",
    "rise_masks",
]
