"""Models: CoDA-Nets, the CIFAR ResNet-56, and the named pretrained entries of the zoo."""

from attrib_bench.models import zoo  # noqa: F401  (registers every model name)
