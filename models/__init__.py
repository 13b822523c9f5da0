"""Models: CoDA-Nets, the CIFAR ResNet-56, the named pretrained entries of the zoo, and the
``torchvision:`` / ``timm:`` prefixes (models by the library's own name)."""

from attrib_bench.models import library, zoo  # noqa: F401  (registers every model name and prefix)
