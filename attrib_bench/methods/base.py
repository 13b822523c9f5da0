"""The attribution-method contract and what every method shares.

``Method(model, **hparams).attribute(inputs, target) -> (B, H, W)``: ``inputs`` float RGB in
[0, 1], shape (B, 3, H, W), in the dtype of the model's parameters; ``target`` class indices,
an integer tensor or array (B,) or one integer scalar of any kind for every image
(:func:`attrib_bench.core.checks.check_target`); the result is one signed value per pixel (channels
summed), on the inputs' device, in their dtype. :class:`AttributionMethod` validates inputs
(:mod:`attrib_bench.core.checks`: shape, finite, range; then the dtype), targets, the model's
output (:func:`attrib_bench.models.protocols.check_logits`: logits (B, K), not a tuple, not
probabilities) and the produced map (one-line :class:`AttribBenchError`
subclasses), returns an empty (0, H, W) map for an empty batch without running the model, runs
the model in eval mode, chunks the batch by ``max_batch`` and sums channels; a method implements
only :meth:`AttributionMethod._attribute` (or :meth:`AttributionMethod._attribute_chunk`), and
:meth:`AttributionMethod.preflight` if it cannot handle every model.

On a CUDA device the maps are computed in IEEE float32 (no TF32,
:func:`attrib_bench.core.evaluation.ieee_float32`), so they equal the CPU's up to float32 rounding
(1e-4 of the map's largest value where a method does not amplify it; ``tests/test_cuda.py`` has
the tolerance per method family and why); the stochastic methods draw their randomness on the
CPU (RISE's masks, LIME's samples and superpixels), so a seed gives the same perturbations on
every device.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, ClassVar, NamedTuple, final

import torch
from torch import nn

from attrib_bench.core.checks import (
    check_finite,
    check_images,
    check_range,
    check_target,
    current_model_name,
    model_label,
)
from attrib_bench.core.errors import (
    InputShapeError,
    MethodError,
    MethodSettingError,
    NotApplicableError,
)
from attrib_bench.core.evaluation import eval_mode, ieee_float32
from attrib_bench.core.hparams import Between, PositiveInt, check_settings
from attrib_bench.core.registry import LISTING_HINT, METHODS
from attrib_bench.models import protocols

#: Images per forward (or forward + backward) unless a method is told otherwise.
DEFAULT_MAX_BATCH = 64
#: The image side (px) the built-in defaults are set for: CIFAR-10's 32 px, the paper's. Methods
#: whose defaults depend on the image size scale them from here
#: (:meth:`AttributionMethod.image_size_defaults`).
REFERENCE_SIDE = 32

#: The largest ``seed`` a method takes: skimage's quickshift (LIME's superpixels) takes a C
#: int, NumPy below 2**32, torch below 2**64.
MAX_SEED = 2**31 - 1
#: A method's ``seed``: an int in [0, :data:`MAX_SEED`].
Seed = Annotated[int, Between(0, MAX_SEED, means="the seeds every library here takes")]


_DTYPE_CASTS = {torch.float32: "float()", torch.float64: "double()", torch.float16: "half()",
                torch.bfloat16: "bfloat16()"}


def _cast(dtype: torch.dtype) -> str:
    """How a tensor or module is cast to ``dtype``: ``float()``, ``double()``, ``to(...)``."""
    return _DTYPE_CASTS.get(dtype, f"to({dtype})")


def model_dtype(model: object) -> torch.dtype | None:
    """The dtype of ``model``'s floating parameters if they share one, else None."""
    if not isinstance(model, nn.Module):
        return None
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


#: Whether :meth:`AttributionMethod.attribute` returns non-finite maps instead of raising
#: (set for a block by :func:`keep_nonfinite_maps`; per thread and task, as contextvars are).
_KEEP_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("keep_nonfinite",
                                                                        default=False)


@contextlib.contextmanager
def keep_nonfinite_maps() -> Iterator[None]:
    """In this block, a NaN/inf map is returned (the caller flags it) instead of raising
    :class:`MethodError`. The benchmark runner evaluates every chunk in it, so that one image's
    NaN map becomes flagged rows, not a stopped run; the methods themselves are not modified."""
    token = _KEEP_NONFINITE.set(True)
    try:
        yield
    finally:
        _KEEP_NONFINITE.reset(token)


class SharedImages(NamedTuple):
    """A batch's distinct images and, per distinct image, the classes asked for it.

    ``images`` (U, C, H, W): the distinct images; ``classes`` (U, R): the classes wanted for
    each, R the most requests for one image (short rows repeat their first class); row i of the
    batch is image ``image_of[i]`` (B,) with class ``classes[image_of[i], slot_of[i]]``.
    """

    images: torch.Tensor
    classes: torch.Tensor
    image_of: torch.Tensor
    slot_of: torch.Tensor


def shared_images(inputs: torch.Tensor, target: torch.Tensor) -> SharedImages:
    """Group identical images of a batch (B, C, H, W) with their targets (B,).

    Why: the localisation metric explains each grid once per cell class, so a perturbation
    method would otherwise send the same perturbed copies through the model n² times; one
    forward gives every class's score. Perturbation methods perturb ``images`` only and read
    ``classes`` from each output, which is exact and n² times cheaper on grids.
    """
    images, image_of = torch.unique(inputs.flatten(1), dim=0, return_inverse=True)
    counts = torch.bincount(image_of, minlength=len(images))
    order = torch.argsort(image_of, stable=True)
    first = torch.cumsum(counts, 0) - counts  # where each image's run starts in ``order``
    slot_of = torch.empty_like(image_of)
    slot_of[order] = torch.arange(len(order), device=inputs.device) - first[image_of[order]]
    classes = target[order[first]][:, None].repeat(1, int(counts.max()) if len(counts) else 1)
    classes[image_of, slot_of] = target
    return SharedImages(images.view(-1, *inputs.shape[1:]), classes, image_of, slot_of)


class AttributionMethod:
    """Base of every attribution method: holds the model, the ``max_batch`` chunk knob and ``seed``.

    ``max_batch``: the most images in one forward (or forward + backward) pass; results do not
    depend on it. ``seed`` drives the stochastic methods (RISE, LIME); deterministic methods
    accept and ignore it, so that one setting can be passed to every method.
    Subclasses set ``name`` (for messages), ``requires`` (model attributes they need, by duck
    typing), ``needs_grad`` (False: the method runs under ``torch.inference_mode``).
    """

    name: ClassVar[str] = "method"
    requires: ClassVar[tuple[str, ...]] = ()
    needs_grad: ClassVar[bool] = True
    #: False: a NaN/inf map raises :class:`MethodError` (unless inside :func:`keep_nonfinite_maps`,
    #: as the benchmark runner's chunks are); True on an instance keeps it.
    allow_nonfinite: bool = False
    #: The registered name of a method whose maps this instance computes exactly, given the same
    #: configuration (DeepLIFT on a model with nothing for its rule: ``"ixg"``); the benchmark
    #: runner's attribution cache then serves one method's maps to the other. None: no such one.
    same_maps_as: str | None = None
    #: What a refused setting raises (:func:`attrib_bench.core.hparams.setting_error`).
    setting_error: ClassVar[type[MethodSettingError]] = MethodSettingError

    @classmethod
    def image_size_defaults(cls, defaults: Mapping[str, Any], image_size: tuple[int, int]
                            ) -> dict[str, Any]:
        """Defaults that depend on the image size: {} here (most methods have none).

        ``defaults``: the factory's defaults (a preset's bound values included), set for
        :data:`REFERENCE_SIDE`-px images; ``image_size`` (H, W) of one dataset image in pixels (a
        grid's cell, not the grid). The runner applies the returned values where the run does not
        set them and records them in the manifest (``defaults_from_data``).
        """
        return {}

    def __init__(self, model: nn.Module, *, max_batch: PositiveInt = DEFAULT_MAX_BATCH,
                 seed: Seed = 0) -> None:
        if not callable(model):
            raise MethodError(f"method {self.name!r} needs a model (an nn.Module), "
                              f"got {type(model).__name__}")
        settings = check_settings(f"method {self.name!r}", AttributionMethod,
                                  {"max_batch": max_batch, "seed": seed})
        # nn.DataParallel only splits batches: explain (and ask capabilities of) its module
        self.model = protocols.unwrap(model)
        #: The model's registered name or the name given to ``run`` when known (set by
        #: :func:`attrib_bench.core.checks.naming` around the method's construction), else None;
        #: messages name the model by ``model_label``: "model 'NAME'", else its Python class.
        self.model_name: str | None = current_model_name()
        self.model_label = model_label(self.model, self.model_name)
        self.max_batch, self.seed = settings["max_batch"], settings["seed"]
        self._num_classes: int | None = None
        self._graph_checked = False  # check_input_graph passed once (needs_grad methods)
        self._check_applicable()

    def _check_applicable(self) -> None:
        """Raise :class:`NotApplicableError` unless the model has every ``requires`` attribute."""
        for attr in self.requires:
            self._require(attr)

    def _require(self, attr: str, fix: str = "") -> None:
        """Raise :class:`NotApplicableError` unless the model has ``attr``.

        The line names :data:`~attrib_bench.core.registry.LISTING_HINT`, which
        :meth:`attrib_bench.core.registry.MethodRegistry.create` replaces with the methods that do
        apply when the method is built by name.
        """
        if hasattr(self.model, attr):
            return
        fix = fix or LISTING_HINT
        raise NotApplicableError(f"method {self.name!r} does not apply to "
                                 f"{self.model_label}: it needs model.{attr}; {fix}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_batch={self.max_batch}, seed={self.seed})"

    def preflight(self, inputs: torch.Tensor, target: torch.Tensor) -> None:
        """Checks that need a real input, run by the benchmark runner on one sample before any
        work; raises :class:`NotApplicableError` if the method cannot handle this model.

        ``inputs`` (B, 3, H, W) and ``target`` (B,) as for :meth:`attribute` (one sample is
        enough). The default checks, for a method that needs gradients, that the model's
        logits reach the input through autograd (:meth:`check_input_graph`); a method that
        fails only on some models (DeepLift on a reused non-linearity module) extends it
        (calling this one), and runs it from :meth:`attribute` too.
        """
        if self.needs_grad and len(inputs):
            self.check_input_graph(inputs)

    def check_input_graph(self, inputs: torch.Tensor) -> None:
        """One forward of one image with gradients: the logits must depend on the input
        through autograd. A forward that cuts the graph (``torch.no_grad()``, ``.detach()``
        on the way from the input, a frozen backbone computed without gradients) would make
        every gradient method fail deep in autograd, or give zero maps: one
        :class:`NotApplicableError` line instead, which a run records as a skipped part
        (gradient-free methods still apply). Runs once per method object."""
        if self._graph_checked or not isinstance(self.model, nn.Module):
            return
        leaf = inputs[:1].detach().requires_grad_(True)
        with torch.enable_grad(), eval_mode(self.model):
            output = self.model(leaf)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            cut = not output.requires_grad or torch.autograd.grad(
                output.sum(), leaf, allow_unused=True)[0] is None
            if cut:
                raise NotApplicableError(
                    f"method {self.name!r} does not apply to {self.model_label}: its logits do "
                    "not depend on the input through autograd (torch.no_grad() or .detach() "
                    "in its forward?), so there are no gradients to explain with; use a "
                    "gradient-free method (occlusion, rise, lime) or keep the graph")
        self._graph_checked = True

    @final
    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Attribution maps (B, H, W) of ``inputs`` (B, 3, H, W) for the classes ``target`` (B,).

        ``inputs``: RGB in [0, 1] (a 0..255 or normalised batch is refused), finite, in the
        model's parameters' dtype. ``target``: class indices in [0, K), an integer tensor or
        NumPy array (B,), or one integer scalar of any kind (``3``, ``np.int64(3)``,
        ``torch.tensor(3)``) for every image; bools and floats are refused
        (:func:`attrib_bench.core.checks.check_target`). An empty batch (B = 0) gives an empty
        (0, H, W) map once the target's form is checked; the model is not run.
        """
        inputs = check_finite(check_images(inputs).detach())
        check_range(inputs)
        self._check_dtype(inputs)
        if self.needs_grad and torch.is_inference_mode_enabled():
            raise MethodError(f"method {self.name!r} needs gradients: call it outside "
                              "torch.inference_mode()")
        if len(inputs) == 0:
            check_target(target, 0)
            return inputs.new_zeros((0, *inputs.shape[2:]))
        if self.needs_grad:
            self.check_input_graph(inputs)
        with eval_mode(self.model), ieee_float32(inputs.device):
            target = self._check_target(target, inputs)
            grad_mode = torch.enable_grad() if self.needs_grad else torch.inference_mode()
            with grad_mode:
                maps = self._attribute(inputs, target)
        return self._check_map(maps, inputs)

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Maps for a validated batch: (B, C, H, W) or (B, H, W). Default: chunks of max_batch."""
        return torch.cat([self._attribute_chunk(inputs[i:i + self.max_batch],
                                                target[i:i + self.max_batch])
                          for i in range(0, len(inputs), self.max_batch)])

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Maps for at most ``max_batch`` images; override this or :meth:`_attribute`."""
        raise NotImplementedError

    def num_classes(self, inputs: torch.Tensor) -> int:
        """K, the model's number of logits, from one forward of one image (then cached).

        The output must be logits (B, K) (:func:`attrib_bench.models.protocols.check_logits`):
        a tuple, probabilities (a final softmax) or another shape is one
        :class:`ModelOutputError` line.
        """
        if self._num_classes is None:
            with torch.inference_mode():
                logits = self.model(inputs[:1])
            self._num_classes = protocols.check_logits(logits, len(inputs[:1]),
                                                       self.model).shape[1]
        return self._num_classes

    def _check_dtype(self, inputs: torch.Tensor) -> None:
        """One line if the inputs' dtype is not the model's parameters' (when they share one)."""
        expected = model_dtype(self.model)
        if expected is not None and inputs.dtype != expected:
            raise InputShapeError(
                f"inputs are {inputs.dtype} but the parameters of {self.model_label} are "
                f"{expected}: use inputs.{_cast(expected)} or model.{_cast(inputs.dtype)}")

    def _check_target(self, target: object, inputs: torch.Tensor) -> torch.Tensor:
        """``target`` as a LongTensor (B,) on the inputs' device, each value a class of the
        model (:func:`attrib_bench.core.checks.check_target`: any integer scalar or an integer
        tensor/array (B,); never a bool or a float)."""
        check_target(target, len(inputs))  # the form first: before the model runs
        return check_target(target, len(inputs), self.num_classes(inputs), inputs.device)

    def _check_map(self, maps: object, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(maps, torch.Tensor):
            raise MethodError(f"method {self.name!r} returned {type(maps).__name__}, "
                              "expected a tensor (B, H, W) or (B, C, H, W)")
        if maps.dim() == 4:
            maps = maps.sum(dim=1)
        b, _, h, w = inputs.shape
        if tuple(maps.shape) != (b, h, w):
            raise MethodError(f"method {self.name!r} returned shape {tuple(maps.shape)}, "
                              f"expected ({b}, {h}, {w}) or ({b}, C, {h}, {w})")
        maps = maps.detach().to(device=inputs.device, dtype=inputs.dtype)
        if maps.is_inference():
            maps = maps.clone()  # a normal tensor: callers may modify it in place
        keep = self.allow_nonfinite or _KEEP_NONFINITE.get()
        if not keep and not torch.isfinite(maps).all():
            bad = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten().tolist()
            raise MethodError(f"method {self.name!r} produced NaN or inf for images {bad[:5]}: "
                              "check that the model's logits are finite on these inputs")
        return maps


class FunctionMethod(AttributionMethod):
    """A registered plain function ``f(model, inputs, target, **hparams)`` as a method class.

    The function gets validated chunks of at most ``max_batch`` images with gradients enabled,
    and ``seed`` too if it has a ``seed`` parameter; it may return (B, H, W) or (B, C, H, W).
    """

    function: ClassVar[Callable[..., Any]]

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0,
                 **hparams: Any) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        signature = inspect.signature(self.function)
        if "seed" in signature.parameters:
            hparams["seed"] = self.seed
        try:
            signature.bind(model, None, None, **hparams)
        except TypeError as exc:
            raise MethodError(f"method {self.name!r}: {exc}") from None
        self.hparams = hparams

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self).function(self.model, inputs, target, **self.hparams)


def function_method(function: Callable[..., Any], name: str) -> type[FunctionMethod]:
    """Wrap ``function(model, inputs, target, **hparams)`` into a :class:`FunctionMethod` class.

    The class keeps the function's name and docstring (the registry's description).
    """
    return type(function.__name__, (FunctionMethod,), {
        "function": staticmethod(function),
        "name": name,
        "requires": tuple(getattr(function, "requires", ())),
        "__doc__": function.__doc__,
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,
    })


METHODS.set_function_adapter(function_method)
