"""Gradient-based methods on the RGB input with a black (zero) baseline.

``grad`` (signed gradient, captum's Saliency), ``ixg`` (input × gradient, captum's
InputXGradient), ``intgrad`` (captum's IntegratedGradients) and ``deeplift`` (captum's DeepLift,
rescale rule). The paper's settings: RGB inputs, zero baselines, 20 integration steps. ``grad``,
``ixg`` and ``deeplift`` on a model without modules for DeepLift's rule are plain gradients, taken
with :func:`attrib_bench.core.backward.target_gradients` (one forward per distinct input, so a
localisation grid explained for its n² cells runs the model once, not n² times: 2.9× faster on
xs-coda, ``benchmarks/README.md``) and tested against captum's results; captum computes the
rest, and is imported when a method is built, not when the registry is listed. On a CoDA-Net,
which has no ReLU (no non-linearity that DeepLift's rules replace), ``deeplift`` equals ``ixg``.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
from torch import nn

from attrib_bench.core.backward import run_starts, target_gradients
from attrib_bench.core.errors import MethodError, NotApplicableError
from attrib_bench.core.hparams import AtMost, Positive, check_settings
from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod

IGRule = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
                 "riemann_middle"]


def _leaf(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy that requires grad (captum warns when it has to set that itself)."""
    return inputs.detach().requires_grad_(True)


@register_method("grad", family="gradient", label="Grad", colour="#7f7f7f")
class Grad(AttributionMethod):
    """Gradient of the target logit w.r.t. the RGB input, signed by default (captum's Saliency;
    ``abs=True``: its absolute value, as Saliency's default)."""

    name = "grad"

    def __init__(self, model: nn.Module, *, abs: bool = False,
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        self.abs = bool(abs)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grads = target_gradients(self.model, inputs, target)
        return grads.abs() if self.abs else grads


@register_method("ixg", family="gradient", label="IxG", colour="#1f77b4")
class InputXGradient(AttributionMethod):
    """Input × gradient of the target logit on the RGB input (captum's InputXGradient)."""

    name = "ixg"

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return inputs * target_gradients(self.model, inputs, target)


#: The most steps ``intgrad`` takes: captum builds the Gauss-Legendre nodes with an n × n
#: eigenproblem (4096: 0.1 GiB and seconds; 2**31 steps would fail with a MemoryError).
MAX_STEPS = 4096
#: ``intgrad``'s ``n_steps``: an int in [1, :data:`MAX_STEPS`].
Steps = Annotated[int, Positive(), AtMost(MAX_STEPS, "Gauss-Legendre nodes cost n² memory; the "
                                                     "paper's is 20")]


@register_method("intgrad", family="gradient", label="IntGrad", colour="#17becf")
class IntegratedGradients(AttributionMethod):
    """Integrated gradients from a black image, 20 steps (captum's IntegratedGradients).

    x ⊙ Σ_k w_k ∇f(α_k x) with captum's nodes α_k and weights w_k for ``rule`` (its default,
    Gauss-Legendre; ``approximation_parameters``), so the result is captum's. The gradients come
    from :func:`~attrib_bench.core.backward.target_gradients`, a block of steps at a time, with at
    most ``max_batch`` distinct images per forward; a localisation grid explained for its n²
    cells then runs the model once per step, not n² times.
    """

    name = "intgrad"

    def __init__(self, model: nn.Module, *, n_steps: Steps = 20, rule: IGRule = "gausslegendre",
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr._utils.approximation_methods import (
            SUPPORTED_METHODS,
            approximation_parameters,
        )

        n_steps = check_settings(f"method {self.name!r}", IntegratedGradients,
                                 {"n_steps": n_steps})["n_steps"]
        if rule not in SUPPORTED_METHODS:
            raise MethodError(f"method 'intgrad': rule must be one of "
                              f"{', '.join(SUPPORTED_METHODS)}, got {rule!r}")
        self.n_steps, self.rule = n_steps, rule
        step_sizes, alphas = approximation_parameters(rule)
        self._weights, self._alphas = step_sizes(n_steps), alphas(n_steps)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        distinct = int(run_starts(inputs).sum())  # forwards per step
        block = max(1, self.max_batch // max(distinct, 1))  # steps per forward
        total = torch.zeros_like(inputs)
        for start in range(0, self.n_steps, block):
            alphas = torch.tensor(self._alphas[start:start + block], dtype=inputs.dtype,
                                  device=inputs.device)
            weights = torch.tensor(self._weights[start:start + block], dtype=inputs.dtype,
                                   device=inputs.device)
            scaled = (alphas.view(-1, *[1] * inputs.dim()) * inputs).flatten(0, 1)
            grads = target_gradients(self.model, scaled, target.repeat(len(alphas)))
            per_step = grads.view(len(alphas), *inputs.shape)
            total += (weights.view(-1, *[1] * inputs.dim()) * per_step).sum(0)
        return inputs * total


@register_method("deeplift", family="gradient", label="DeepLIFT", colour="#9467bd")
class DeepLift(AttributionMethod):
    """DeepLIFT (rescale rule) against a black image (captum DeepLift); IxG on a CoDA-Net.

    captum replaces the gradients of the model's ``nn.ReLU`` (and other supported non-linearity)
    modules; a model whose non-linearities are not such modules (a CoDA-Net's DAU layers) gets
    plain gradients, so the result is input × gradient. captum keeps one input/output per
    module, so a module called twice in one forward (one ``nn.ReLU`` reused, as in torchvision's
    ResNet blocks) cannot be explained: :meth:`preflight` finds it from one forward and raises
    :class:`NotApplicableError`; :meth:`attribute` runs that check on its first batch of each
    image shape.

    ``rescaled`` says whether the model has any module of a type captum's rule replaces. Where it
    has none (a CoDA-Net, a B-cos network), captum's DeepLift against the black image is exactly
    x ⊙ ∇f(x); it is computed so (as ``ixg``), at less than half the cost: captum's DeepLift
    runs input and baseline through the model together; ``same_maps_as`` is then ``"ixg"``, so
    that a benchmark run of both computes the maps once (its attribution cache).
    """

    name = "deeplift"

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import DeepLift as CaptumDeepLift
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        modules = model.modules() if isinstance(model, nn.Module) else ()
        self.rescaled = any(type(m) in SUPPORTED_NON_LINEAR for m in modules)
        self._captum = CaptumDeepLift(model) if self.rescaled else None
        self.same_maps_as = None if self.rescaled else "ixg"
        self._checked: set[tuple[int, ...]] = set()  # image shapes preflight has passed

    def preflight(self, inputs: torch.Tensor, target: torch.Tensor) -> None:
        """One forward of one image, counting the calls of each module captum's DeepLift
        replaces; a module called more than once is one :class:`NotApplicableError` line."""
        if not isinstance(self.model, nn.Module) or len(inputs) == 0:
            return
        super().preflight(inputs, target)
        counts = reused_nonlinearities(self.model, inputs[:1])
        if counts:
            path, (module, calls) = next(iter(counts.items()))
            kind = type(module).__name__
            more = f" (and {len(counts) - 1} more)" if len(counts) > 1 else ""
            raise NotApplicableError(
                f"method 'deeplift' does not apply to {self.model_label}: its {kind} "
                f"module {path[:80]!r}{more} is called {calls} times in one forward, and "
                f"captum's DeepLift needs one module per use: give each use its own nn.{kind} "
                "module (or use ixg / intgrad)")
        self._checked.add(tuple(inputs.shape[1:]))

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if tuple(inputs.shape[1:]) not in self._checked:
            self.preflight(inputs[:1], target[:1])
        return super()._attribute(inputs, target)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._captum is None:  # nothing for the rule to replace: x ⊙ ∇f(x), exactly
            return inputs * target_gradients(self.model, inputs, target)
        with warnings.catch_warnings():  # captum warns on every call that it sets hooks
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            try:
                return self._captum.attribute(_leaf(inputs), baselines=torch.zeros_like(inputs),
                                              target=target)
            except RuntimeError as exc:
                if isinstance(exc, torch.cuda.OutOfMemoryError) or not _raised_in_captum(exc):
                    raise
                text = " ".join(str(exc).split())
                text = text if len(text) <= 200 else text[:197] + "..."
                raise MethodError(f"method 'deeplift' failed in captum on "
                                  f"{self.model_label}: {text} (try ixg or intgrad "
                                  "for this model)") from exc


def _raised_in_captum(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in the captum package."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = tb.tb_frame.f_code.co_filename.replace("\\", "/").split("/")
    return "captum" in parts


def reused_nonlinearities(model: nn.Module, inputs: torch.Tensor
                          ) -> dict[str, tuple[nn.Module, int]]:
    """Modules that captum's DeepLift replaces and that one forward of ``inputs`` calls twice+.

    The modules are those captum hooks: of a type in its ``SUPPORTED_NON_LINEAR`` (ReLU, ELU,
    LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool1d/2d/3d, Softmax; the exact type, as captum
    checks). Returns {module path: (module, calls)} in module order; empty if none is reused.
    The forward runs in eval mode without gradients.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    from attrib_bench.core.evaluation import forward_with_hooks

    calls: dict[nn.Module, int] = {}
    names: dict[nn.Module, str] = {}

    def count(module: nn.Module, args: object, output: object) -> None:
        calls[module] = calls.get(module, 0) + 1

    for path, module in model.named_modules():
        if type(module) in SUPPORTED_NON_LINEAR and module not in names:
            names[module] = path or "(the model itself)"
    if not names:
        return {}
    forward_with_hooks(model, inputs, [(module, count) for module in names])
    return {path: (m, calls[m]) for m, path in names.items() if calls.get(m, 0) > 1}
