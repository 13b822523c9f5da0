"""``lime``: LIME (Ribeiro et al. 2016) through the ``lime`` package, on quickshift superpixels.

The package explains one image at a time (its ``LimeImageExplainer``); each image's perturbed
copies reach the model in batches of ``max_batch`` (one forward per batch of the package).

Segmentation (scikit-image quickshift, measured on the first 40 CIFAR-10 test images and on four
3×3 grids of them): the authors' setting, kernel_size=1, max_dist=200, ratio=0.2 (our default),
gives 7–18 segments (median 14) per 32 px image and 106–115 per 96 px grid (about 12 per cell).
The ``lime`` package's default (kernel_size=4) gives 1–3 segments at 32 px, which is what makes
LIME's defaults unusable on CIFAR-10. Other settings that work: at 32 px, kernel_size=1 with
max_dist=5 (12–33 segments); at 96 px, kernel_size=2 (34–48 segments, about 4 per cell) or
kernel_size=3, max_dist=10 (24–32). max_dist barely matters at kernel_size=1. On a grid the
default therefore gives about a dozen segments per 32 px cell, as on a single image.

Larger images (measured on five photographs shipped with scikit-image, astronaut, chelsea,
coffee, rocket and cat, centre-cropped and resized; segments per image at ratio 0.2,
max_dist 200): at 64 px kernel_size 1 gives 36–50, 2 gives 7–16; at 224 px 1 gives 512–646,
2 gives 115–157, 4 (the ``lime`` package's default) 23–41 (0.5 s per image on one core), 7
gives 5–16 (1.4 s). Segment count stays about the same when kernel_size grows with the image
side, so the runner scales it by side / 32 up to the package's own default, 4
(:meth:`LIME.image_size_defaults`): 1 at 32 px, 2 at 64 px, 4 at 224 px (lime's ImageNet
setting; scaling on to 7 would triple the segmentation time for coarser segments).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from torch import nn

from attrib_bench.core.errors import MethodError
from attrib_bench.core.hparams import AtLeast, Between, check_settings
from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, REFERENCE_SIDE, SharedImages
from attrib_bench.methods.perturbation import BlackBoxMethod
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Score


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Silence the progress bar ``lime_image`` draws for every image (restored on exit)."""
    import lime.lime_image as lime_image

    saved = lime_image.tqdm
    lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        lime_image.tqdm = saved


#: Quickshift's ``kernel_size``: skimage smooths with a Gaussian kernel of width >= 1.
KernelSize = Annotated[float, AtLeast(1, "quickshift's smoothing width in pixels")]
#: LIME's ``kernel_width``: squared in the kernel, so bounded against underflow and overflow.
KernelWidth = Annotated[float, Between(1e-100, 1e100, means="the width of LIME's exponential "
                                       "kernel on cosine distances, default 0.25")]


@register_method("lime", family="perturbation", stochastic=True, label="LIME", colour="#393b79")
class LIME(BlackBoxMethod):
    """LIME on quickshift superpixels, 256 samples (lime package); signed superpixel weights.

    Each image is cut into superpixels by quickshift (``kernel_size``, ``max_dist``, ``ratio``;
    the authors' 1, 200, 0.2 by default, see the module docstring for other sizes); the package
    samples ``num_samples`` on/off patterns (an off superpixel takes ``hide_color``, by default
    the package's: its mean colour), fits a weighted ridge model to the target's ``score``
    ("sigmoid" or "softmax" probability, or the raw "logit"; ``None``, the default: the model's
    own probability, :func:`attrib_bench.models.protocols.probability`, i.e. sigmoid for the
    CoDA-Nets as the authors used, softmax for a model that declares nothing; the resolved value
    is ``self.score``) and each pixel gets its superpixel's weight. ``top3_mask=True``: the
    authors' binary mask of the three superpixels with the largest positive weights instead.
    ``seed`` seeds the package's sampling (``random_state``) and the segmentation; every image is
    explained from the same seed, whatever its place in the batch.

    Shared with the other perturbation methods (:class:`BlackBoxMethod`): identical images are
    explained once for all their classes, and the model's copies are scored and read for the
    asked classes only (the package's ``classifier_fn`` gets those columns, in forwards of
    ``max_batch``). LIME's own, not :class:`~attrib_bench.methods.perturbation.PerturbationMethod`'s
    loop: the perturbations are the package's, drawn per image (its superpixels, its on/off
    samples, its ridge fit weighted by its kernel), so they are not one set for every image of a
    size; writing them here would copy the package's internals.
    """

    name = "lime"
    #: The ``lime`` package's own quickshift kernel_size (its ImageNet-scale default).
    PACKAGE_KERNEL_SIZE: ClassVar[float] = 4.0

    @classmethod
    def image_size_defaults(cls, defaults: Mapping[str, Any], image_size: tuple[int, int]
                            ) -> dict[str, Any]:
        """Quickshift ``kernel_size`` × side / 32 (side = min(H, W)), at most the package's 4.

        Keeps about a dozen superpixels per image up to 128 px (see the module docstring for
        the measurement); 32 px and smaller images keep the given default.
        """
        scale = max(min(image_size) / REFERENCE_SIDE, 1.0)
        kernel = float(defaults["kernel_size"])
        return {"kernel_size": max(kernel, min(kernel * scale, cls.PACKAGE_KERNEL_SIZE))}

    def __init__(self, model: nn.Module, *, num_samples: Annotated[int, AtLeast(2)] = 256,
                 kernel_size: KernelSize = 1, max_dist: float = 200,
                 ratio: Annotated[float, Between(0, 1)] = 0.2, score: Score | None = None,
                 top3_mask: bool = False, hide_color: float | None = None,
                 kernel_width: KernelWidth = 0.25, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        import lime.lime_image  # noqa: F401  (here, not at registry listing: it loads sklearn)

        num_samples, kernel_size, ratio, kernel_width = check_settings(
            f"method {self.name!r}", LIME, {"num_samples": num_samples, "kernel_size": kernel_size,
                                            "ratio": ratio, "kernel_width": kernel_width}).values()
        self.num_samples = num_samples
        self.segmentation = {"kernel_size": kernel_size, "max_dist": max_dist, "ratio": ratio}
        self.score = protocols.resolve_score(score, model, f"method {self.name!r}", MethodError)
        self.top3_mask = bool(top3_mask)
        self.hide_color = hide_color
        self.kernel_width = float(kernel_width)

    def explain_distinct(self, shared: SharedImages) -> torch.Tensor:
        # The package explains one image per call, for all the classes asked for it (a
        # localisation grid comes once per cell class: its samples and segmentation are shared).
        maps = torch.stack([self._explain(image, classes.tolist())
                            for image, classes in zip(shared.images, shared.classes,
                                                      strict=True)])  # (U, R, H, W)
        return maps[shared.image_of, shared.slot_of]

    def _explain(self, image: torch.Tensor, labels: list[int]) -> torch.Tensor:
        """Maps (len(labels), H, W) of one image (C, H, W), one per class in ``labels``."""
        from lime.lime_image import LimeImageExplainer
        from lime.wrappers.scikit_image import SegmentationAlgorithm

        classes = list(dict.fromkeys(labels))  # the package's label i is classes[i]
        # skimage's quickshift takes its tie-breaking seed as ``rng`` (older: ``random_seed``);
        # the wrapper keeps whichever of the two quickshift accepts.
        segmenter = SegmentationAlgorithm("quickshift", **self.segmentation, rng=self.seed,
                                          random_seed=self.seed)
        explainer = LimeImageExplainer(kernel_width=self.kernel_width, random_state=self.seed)
        pixels = image.permute(1, 2, 0).double().cpu().numpy()
        with _no_progress_bar():
            explanation = explainer.explain_instance(
                pixels, self._classifier(image, classes), labels=tuple(range(len(classes))),
                top_labels=None, hide_color=self.hide_color,
                num_samples=self.num_samples, batch_size=self.max_batch,
                segmentation_fn=segmenter, random_seed=self.seed)
        return torch.stack([self._paint(explanation, classes.index(label))
                            for label in labels]).to(device=image.device, dtype=image.dtype)

    def _classifier(self, image: torch.Tensor,
                    classes: list[int]) -> Callable[[np.ndarray], np.ndarray]:
        """The package's ``classifier_fn``: copies (n, H, W, C) of ``image`` (the package's
        batches of ``max_batch``) → float64 scores (n, len(classes)) of ``classes``."""
        device, dtype = image.device, image.dtype
        columns = torch.tensor(classes, device=device)[None]  # (1, R)

        def classifier(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch).to(device=device, dtype=dtype).permute(0, 3, 1, 2)
            scores = self.model_scores(x)  # (n, K)
            # Any class, asked or not: the package's ridge fit would fail on a NaN, and a
            # model with non-finite logits is refused whatever class it is asked for.
            if not torch.isfinite(scores).all():
                raise MethodError(f"method {self.name!r} got NaN or inf scores from the model: "
                                  "check that the model's logits are finite on these inputs")
            return scores.gather(1, columns.expand(len(x), -1)).double().cpu().numpy()

        return classifier

    def _paint(self, explanation: Any, label: int) -> torch.Tensor:
        """The map (H, W) of the package's ``label`` (a column of :meth:`_classifier`) from its
        explanation: superpixel weights, or the top-3 mask."""
        if self.top3_mask:
            _, mask = explanation.get_image_and_mask(label, positive_only=True, num_features=3,
                                                     hide_rest=False)
            painted: Any = mask.astype(np.float64)
        else:
            weights = np.zeros(int(explanation.segments.max()) + 1)
            for segment, weight in explanation.local_exp[label]:
                weights[segment] = weight
            painted = weights[explanation.segments]
        return torch.from_numpy(painted)
